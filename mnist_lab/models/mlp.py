"""The torch.nn MLP (`model=mlp`) and its config schema.

A model is whatever `conf/model/<name>.yaml`'s `_target_` builds (`hydra.utils.instantiate`), given
its own keys plus `in_features` and `out_features`. Each model has its own structured-config schema
(a dataclass the YAML names in its defaults, so Hydra refuses a bad value in one line) whose
`check(cfg)` refuses what types alone cannot.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING
from torch import nn

from mnist_lab.config.checks import check_fraction, check_layer_sizes, check_positive
from mnist_lab.models.layers import ACTIVATIONS, Activation, Head, Init, init_linear


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
