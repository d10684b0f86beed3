"""The from-scratch model's config schema, apart from `mnist_lab.models.scratch`, whose code is
tensor operations only (no torch.nn, optim or autograd: tests/test_scratch.py checks it)."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from mnist_lab.config.checks import check_layer_sizes, check_positive
from mnist_lab.errors import ConfigError
from mnist_lab.models.layers import Activation, Init


@dataclass
class ScratchMLPConfig:
    """conf/model/scratch.yaml: `mnist_lab.models.scratch.ScratchMLP`, trained by plain SGD only."""

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
