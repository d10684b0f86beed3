"""Structured-config schema: types and allowed values, registered in Hydra's ConfigStore.

The values themselves live in `conf/` (one source of truth); the dataclasses here only say what
type each key has and which choices exist, so a typo or a wrong type is refused by Hydra before any
training starts. Enums name the allowed values, which OmegaConf lists in its error message.

A config file whose keys depend on its choice (each model has its own) names its schema, a
dataclass beside the code it configures, as the first entry of its defaults list:
`- /schema/mnist_lab.models.resmlp.ResMLPConfig@_here_`. `register_schemas` finds those entries in
`conf/` and stores each dataclass under that name, so adding a model touches no file here.

Nothing is registered on import: every entry point (and the tests' conftest, the benchmarks)
calls `register()` before Hydra composes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.utils import get_class
from omegaconf import MISSING, OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = REPO_ROOT / "conf"


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
    # What the files are: the loader and its description, whose schema the data YAML names
    # (`/schema/<module.Class>@dataset`, like a model's).
    dataset: Any = MISSING
    root: str = MISSING
    cache_dir: str = MISSING
    download: bool = MISSING
    normalize: str = MISSING  # an entry of the dataset's normalization table (job.checks)
    deskew: bool = MISSING
    val_size: int = MISSING
    split_seed: int = MISSING
    shuffle: bool = MISSING
    drop_last: bool = MISSING
    train_subset: int | None = MISSING
    batch_size: int = MISSING
    eval_batch_size: int = MISSING


@dataclass
class SchedulerConfig:
    """Each schedule file sets only its own keys (values live in conf/scheduler/)."""

    name: SchedulerName = MISSING
    eta_min: float | None = None
    max_lr_factor: float | None = None
    pct_start: float | None = None
    step_epochs: int | None = None
    gamma: float | None = None


class Backward(str, Enum):
    auto = "auto"
    autograd = "autograd"
    manual = "manual"


class SaveWeights(str, Enum):
    auto = "auto"
    best = "best"
    final = "final"
    both = "both"
    none = "none"


class Direction(str, Enum):
    maximize = "maximize"
    minimize = "minimize"


@dataclass
class ObjectiveConfig:
    """What a run is judged by (`conf/objective/`): metrics and their directions, one each; the
    first, a validation metric, chooses the best epoch (mnist_lab.records.objective)."""

    metrics: list[str] = MISSING
    directions: list[Direction] = MISSING


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
    backward: Backward = MISSING
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
    # Each model file names its own schema (see `register_schemas`).
    model: Any = MISSING
    # Each optimizer file has its own keys (torch.optim's signature checks them at instantiate).
    optimizer: Any = MISSING
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
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


SCHEMA_GROUP = "schema"


def named_schemas(conf_dir: Path) -> list[str]:
    """Import paths of the schemas that conf/<group>/*.yaml name in their defaults lists."""
    prefix = f"/{SCHEMA_GROUP}/"
    names = set()
    for path in conf_dir.glob("*/*.yaml"):
        for entry in OmegaConf.load(path).get("defaults") or []:
            if isinstance(entry, str) and entry.startswith(prefix):
                names.add(entry[len(prefix) :].split("@")[0])
    return sorted(names)


def register_schemas(conf_dir: Path = CONF_DIR) -> None:
    cs = ConfigStore.instance()
    for name in named_schemas(conf_dir):
        cs.store(group=SCHEMA_GROUP, name=name, node=get_class(name))


def register() -> None:
    """Register the schemas and the resolvers the YAML files use (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="lab_schema", node=LabConfig)
    register_schemas()
    # use_cache: one value per config object, like Hydra's own `now`, so every place that reads
    # the output directory (and joblib workers that receive a pickled config) agree on it.
    if not OmegaConf.has_resolver("unique"):
        OmegaConf.register_new_resolver("unique", _unique_suffix, use_cache=True)
    if not OmegaConf.has_resolver("repo_path"):
        OmegaConf.register_new_resolver("repo_path", _repo_path)
    if not OmegaConf.has_resolver("lab_groups"):  # `run.py --help`: conf/hydra/help/lab.yaml
        from mnist_lab.config.help import groups_help, knobs_help

        OmegaConf.register_new_resolver("lab_groups", groups_help)
        OmegaConf.register_new_resolver("lab_knobs", knobs_help)
