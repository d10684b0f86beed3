"""The models' shared vocabulary, the torch.nn MLP, and the schemas of the MLP and the scratch MLP.

A model is whatever `conf/model/<name>.yaml`'s `_target_` builds (`hydra.utils.instantiate`), given
its own keys plus `in_features` and `out_features`. Each model has its own structured-config schema
(a dataclass the YAML names in its defaults, so Hydra refuses a bad value in one line) whose
`check(cfg)` refuses what types alone cannot. The from-scratch model's schema lives here because
`mnist_lab/scratch.py` is tensor code only, by design.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch
from hydra.utils import instantiate
from omegaconf import MISSING, OmegaConf
from torch import nn

from mnist_lab.errors import ConfigError
from mnist_lab.validate import check_fraction, check_layer_sizes, check_positive

IN_FEATURES = 28 * 28
N_CLASSES = 10


class Activation(str, Enum):
    relu = "relu"
    sigmoid = "sigmoid"
    tanh = "tanh"
    gelu = "gelu"
    leaky_relu = "leaky_relu"


class Init(str, Enum):
    default = "default"
    kaiming = "kaiming"
    xavier = "xavier"
    normal = "normal"


class Head(str, Enum):
    logits = "logits"
    log_softmax = "log_softmax"


ACTIVATIONS = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
}


def init_linear(layer: nn.Linear, init: str, std: float, activation: str) -> None:
    if init == "default":
        return  # torch's own: uniform(+-1/sqrt(fan_in)) for weights and biases
    if init == "normal":  # the lab report's N(0, std^2) for weights and biases alike
        nn.init.normal_(layer.weight, 0.0, std)
        nn.init.normal_(layer.bias, 0.0, std)
        return
    if init == "kaiming":
        nonlinearity = "leaky_relu" if activation == "leaky_relu" else "relu"
        nn.init.kaiming_normal_(layer.weight, nonlinearity=nonlinearity)
    elif init == "xavier":
        nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)


class MLP(nn.Sequential):
    """in -> hidden_sizes... -> out, each hidden block Linear [-> BatchNorm] -> act [-> Dropout].

    `input_dropout` > 0 puts a Dropout on the pixels first (Srivastava et al. 2014 use 0.2).

    With `head="log_softmax"` the last module is LogSoftmax and `log_probs` is true, so the
    trainer's loss is NLL (as in the second write-up); otherwise the model returns logits for
    cross-entropy.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_sizes: list[int],
        activation: str,
        dropout: float,
        input_dropout: float,
        batch_norm: bool,
        init: str,
        init_std: float,
        head: str,
    ):
        layers: list[nn.Module] = [nn.Dropout(input_dropout)] if input_dropout > 0 else []
        width = in_features
        for size in hidden_sizes:
            linear = nn.Linear(width, size)
            init_linear(linear, init, init_std, activation)
            layers.append(linear)
            if batch_norm:
                layers.append(nn.BatchNorm1d(size))
            layers.append(ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        out = nn.Linear(width, out_features)
        init_linear(out, init, init_std, activation)
        layers.append(out)
        if head == "log_softmax":
            layers.append(nn.LogSoftmax(dim=1))
        super().__init__(*layers)
        self.log_probs = head == "log_softmax"


@dataclass
class MLPConfig:
    """conf/model/mlp.yaml: the torch.nn MLP."""

    _target_: str = MISSING
    hidden_sizes: list[int] = MISSING
    activation: Activation = MISSING
    dropout: float = MISSING
    input_dropout: float = MISSING
    batch_norm: bool = MISSING
    init: Init = MISSING
    init_std: float = MISSING
    head: Head = MISSING

    @staticmethod
    def check(cfg) -> None:
        check_layer_sizes("model.hidden_sizes", cfg.model.hidden_sizes)
        check_fraction("model.dropout", cfg.model.dropout)
        check_fraction("model.input_dropout", cfg.model.input_dropout)
        check_positive("model.init_std", cfg.model.init_std)


@dataclass
class ScratchMLPConfig:
    """conf/model/scratch.yaml: `mnist_lab.scratch.ScratchMLP`, trained by plain SGD only."""

    _target_: str = MISSING
    hidden_sizes: list[int] = MISSING
    activation: Activation = MISSING
    init: Init = MISSING
    init_std: float = MISSING
    prob_floor: float = MISSING

    @staticmethod
    def check(cfg) -> None:
        model, optimizer = cfg.model, cfg.optimizer
        check_layer_sizes("model.hidden_sizes", model.hidden_sizes)
        check_positive("model.init_std", model.init_std)
        if not 0.0 <= model.prob_floor < 0.1:
            raise ConfigError("model.prob_floor", model.prob_floor, "must be in [0, 0.1)")
        if optimizer.get("_target_") != "torch.optim.SGD":
            raise ConfigError(
                "optimizer", optimizer.get("_target_"), "model=scratch updates with plain SGD only"
            )
        # Its update is w -= lr * g: nothing else may be asked of it.
        for key in ("momentum", "dampening", "weight_decay"):
            if optimizer.get(key, 0.0) != 0.0:
                raise ConfigError(
                    f"optimizer.{key}", optimizer[key], "must be 0 with model=scratch"
                )
        if optimizer.get("nesterov", False):
            raise ConfigError("optimizer.nesterov", True, "must be false with model=scratch")


def build_model(model_cfg, device: torch.device):
    """The configured model on `device`: whatever `model_cfg._target_` builds from its keys."""
    keys = OmegaConf.to_container(model_cfg, resolve=True, enum_to_str=True)
    try:
        model = instantiate(keys, in_features=IN_FEATURES, out_features=N_CLASSES)
    except Exception as e:  # an unknown class, or a key its signature does not take
        cause = e.__cause__ or e
        raise ConfigError("model", keys.get("_target_"), f"{cause}") from e
    return model.to(device)


def linear_weights(model) -> list[torch.Tensor]:
    """The weight matrix of every linear layer (rows: a unit's incoming weights), for max-norm."""
    if isinstance(model, nn.Module):
        return [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    return [linear.weight for linear in model.linears]  # the scratch model


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
