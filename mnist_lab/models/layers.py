"""The models' shared vocabulary: activations, initialisations and heads, as config choices and as
torch.nn layers."""

from __future__ import annotations

from enum import Enum

from torch import nn


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
