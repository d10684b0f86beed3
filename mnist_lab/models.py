"""The autograd MLP (torch.nn) and the factory that also builds the from-scratch one."""

from __future__ import annotations

import torch
from torch import nn

IN_FEATURES = 28 * 28
N_CLASSES = 10

ACTIVATIONS = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
}


def _init_linear(layer: nn.Linear, init: str, std: float, activation: str) -> None:
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


def build_mlp(
    hidden_sizes: list[int],
    activation: str = "relu",
    dropout: float = 0.0,
    input_dropout: float = 0.0,
    batch_norm: bool = False,
    init: str = "default",
    init_std: float = 0.01,
    head: str = "logits",
) -> nn.Sequential:
    """784 -> hidden_sizes... -> 10, each hidden block Linear [-> BatchNorm] -> act [-> Dropout].

    `input_dropout` > 0 puts a Dropout on the pixels first (Srivastava et al. 2014 use 0.2).

    With `head="log_softmax"` the last module is LogSoftmax and the loss is NLL (as in the second
    write-up); otherwise the model returns logits for cross-entropy.
    """
    layers: list[nn.Module] = [nn.Dropout(input_dropout)] if input_dropout > 0 else []
    width = IN_FEATURES
    for size in hidden_sizes:
        linear = nn.Linear(width, size)
        _init_linear(linear, init, init_std, activation)
        layers.append(linear)
        if batch_norm:
            layers.append(nn.BatchNorm1d(size))
        layers.append(ACTIVATIONS[activation]())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = size
    out = nn.Linear(width, N_CLASSES)
    _init_linear(out, init, init_std, activation)
    layers.append(out)
    if head == "log_softmax":
        layers.append(nn.LogSoftmax(dim=1))
    return nn.Sequential(*layers)


def build_model(model_cfg, device: torch.device):
    """The configured model on `device`: an nn.Module, or a ScratchMLP for `model=scratch`."""
    kwargs = dict(
        hidden_sizes=list(model_cfg.hidden_sizes),
        activation=model_cfg.activation.value,
        init=model_cfg.init.value,
        init_std=model_cfg.init_std,
    )
    if model_cfg.name.value == "scratch":
        from mnist_lab.scratch import ScratchMLP

        return ScratchMLP(
            IN_FEATURES,
            out_features=N_CLASSES,
            prob_floor=model_cfg.prob_floor,
            device=device,
            **kwargs,
        )
    return build_mlp(
        dropout=model_cfg.dropout,
        input_dropout=model_cfg.input_dropout,
        batch_norm=model_cfg.batch_norm,
        head=model_cfg.head.value,
        **kwargs,
    ).to(device)


def linear_weights(model) -> list[torch.Tensor]:
    """The weight matrix of every linear layer (rows: a unit's incoming weights), for max-norm."""
    if isinstance(model, nn.Module):
        return [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    return [linear.weight for linear in model.linears]  # the scratch model


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
