"""A pre-norm residual MLP (`model=resmlp`): one YAML, this module and its test add a model.

    x -> [Dropout] -> Linear(in, width) -> depth x [x + Linear(Dropout(act(Linear(LayerNorm(x)))))]
      -> LayerNorm -> Linear(width, out)

Pre-norm blocks keep the residual stream an identity path, so deeper stacks train with plain SGD
or Adam without warm-up. It is an nn.Module trained by autograd, so CUDA graphs, `torch.compile`
and every optimizer apply to it as to the MLP.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING
from torch import nn

from mnist_lab.config.checks import check_fraction, check_positive
from mnist_lab.models.layers import ACTIVATIONS, Activation


class ResidualBlock(nn.Module):
    def __init__(self, width: int, inner: int, activation: str, dropout: float):
        super().__init__()
        self.body = nn.Sequential(
            nn.LayerNorm(width),
            nn.Linear(width, inner),
            ACTIVATIONS[activation](),
            nn.Dropout(dropout),
            nn.Linear(inner, width),
        )

    def forward(self, x):
        return x + self.body(x)


class ResMLP(nn.Module):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        width: int,
        depth: int,
        expansion: int,
        activation: str,
        dropout: float,
        input_dropout: float,
    ):
        super().__init__()
        self.input_dropout = nn.Dropout(input_dropout) if input_dropout > 0 else nn.Identity()
        self.stem = nn.Linear(in_features, width)
        blocks = [
            ResidualBlock(width, width * expansion, activation, dropout) for _ in range(depth)
        ]
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, out_features)

    def forward(self, x):
        return self.head(self.norm(self.blocks(self.stem(self.input_dropout(x)))))


@dataclass
class ResMLPConfig:
    """conf/model/resmlp.yaml."""

    _target_: str = MISSING
    width: int = MISSING
    depth: int = MISSING
    expansion: int = MISSING
    activation: Activation = MISSING
    dropout: float = MISSING
    input_dropout: float = MISSING

    @staticmethod
    def check(cfg) -> None:
        for key in ("width", "depth", "expansion"):
            check_positive(f"model.{key}", cfg.model[key])
        check_fraction("model.dropout", cfg.model.dropout)
        check_fraction("model.input_dropout", cfg.model.input_dropout)
