"""Structured-config schema: types and allowed values, registered in Hydra's ConfigStore.

The values themselves live in `conf/` (one source of truth); the dataclasses here only say what
type each key has and which choices exist, so a typo or a wrong type is refused by Hydra before any
training starts. Enums name the allowed values, which OmegaConf lists in its error message.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

REPO_ROOT = Path(__file__).resolve().parent.parent


class Normalize(str, Enum):
    mnist = "mnist"
    half = "half"
    none = "none"


class ModelName(str, Enum):
    mlp = "mlp"
    scratch = "scratch"


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


class MatmulPrecision(str, Enum):
    highest = "highest"
    high = "high"
    medium = "medium"


class SchedulerName(str, Enum):
    none = "none"
    cosine = "cosine"
    onecycle = "onecycle"
    step = "step"


@dataclass
class DataConfig:
    root: str = MISSING
    cache_dir: str = MISSING
    normalize: Normalize = MISSING
    val_size: int = MISSING
    split_seed: int = MISSING
    shuffle: bool = MISSING
    drop_last: bool = MISSING
    train_subset: int | None = MISSING
    batch_size: int = MISSING
    eval_batch_size: int = MISSING


@dataclass
class ModelConfig:
    name: ModelName = MISSING
    hidden_sizes: list[int] = MISSING
    activation: Activation = MISSING
    dropout: float = MISSING
    input_dropout: float = MISSING
    batch_norm: bool = MISSING
    init: Init = MISSING
    init_std: float = MISSING
    head: Head = MISSING
    prob_floor: float = MISSING


@dataclass
class SchedulerConfig:
    """Each schedule file sets only its own keys (values live in conf/scheduler/)."""

    name: SchedulerName = MISSING
    eta_min: float | None = None
    max_lr_factor: float | None = None
    pct_start: float | None = None
    step_epochs: int | None = None
    gamma: float | None = None


class SaveWeights(str, Enum):
    auto = "auto"
    best = "best"
    final = "final"
    both = "both"
    none = "none"


@dataclass
class EarlyStoppingConfig:
    patience: int | None = MISSING
    min_delta: float = MISSING


@dataclass
class TrainerConfig:
    device: str = MISSING
    epochs: int = MISSING
    seed: int = MISSING
    deterministic: bool = MISSING
    eval_every_epoch: bool = MISSING
    log_interval: int = MISSING
    progress: str = MISSING  # auto | on | off (checked in mnist_lab.validate)
    cuda_graph: str = MISSING
    matmul_precision: MatmulPrecision = MISSING
    compile: bool = MISSING
    save_figures: str = MISSING
    label_smoothing: float = MISSING
    max_norm: float | None = MISSING
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    save_weights: SaveWeights = MISSING


@dataclass
class LabConfig:
    """Top level: the config groups plus the short knobs they interpolate."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    # Each optimizer file has its own keys (torch.optim's signature checks them at instantiate).
    optimizer: Any = MISSING
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    hidden: int = MISSING
    lr: float = MISSING
    batch_size: int = MISSING
    epochs: int = MISSING
    seed: int = MISSING
    # Free-form note a preset can carry (its source and reported accuracy) into every record.
    preset: Any | None = None


def _unique_suffix() -> str:
    """Process id + microseconds: distinct for two runs started in the same second."""
    from datetime import datetime

    return f"{datetime.now():%f}-{os.getpid()}"


def _repo_path(relative: str) -> str:
    return str(REPO_ROOT / relative)


def register() -> None:
    """Register the schema and the resolvers the YAML files use (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="lab_schema", node=LabConfig)
    # use_cache: one value per config object, like Hydra's own `now`, so every place that reads
    # the output directory (and joblib workers that receive a pickled config) agree on it.
    if not OmegaConf.has_resolver("unique"):
        OmegaConf.register_new_resolver("unique", _unique_suffix, use_cache=True)
    if not OmegaConf.has_resolver("repo_path"):
        OmegaConf.register_new_resolver("repo_path", _repo_path)


register()
