"""Checks of values that types alone cannot refuse, run before any data is loaded or step taken."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

from mnist_lab.data import TRAIN_SIZE
from mnist_lab.errors import ConfigError

SWITCH = {"auto": "auto", "on": True, "true": True, "off": False, "false": False}


def parse_switch(key: str, value) -> str | bool:
    """`auto`, or True/False from on/off/true/false (Hydra may hand a bool)."""
    word = str(value).lower()
    if word not in SWITCH:
        raise ConfigError(key, value, "one of auto, on, off")
    return SWITCH[word]


def resolve_device(spec: str) -> torch.device:
    """`auto` picks cuda, then mps, then cpu; an explicit device must exist on this machine."""
    allowed = "auto, cpu, cuda, cuda:N, mps"
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as e:
        raise ConfigError("trainer.device", spec, f"one of {allowed}") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                "trainer.device", spec, "no CUDA device on this machine; use auto or cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                "trainer.device",
                spec,
                f"this machine has {torch.cuda.device_count()} CUDA device(s)",
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.device", spec, "MPS is not available here; use auto or cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError("trainer.device", spec, f"one of {allowed}")
    return device


def check_positive(key: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):  # untyped groups
        raise ConfigError(key, value, "must be a number > 0")
    if value <= 0:
        raise ConfigError(key, value, "must be > 0")


def check_fraction(key: str, value) -> None:
    """A probability such as a dropout rate: in [0, 1)."""
    if not 0.0 <= value < 1.0:
        raise ConfigError(key, value, "must be in [0, 1)")


def check_layer_sizes(key: str, sizes) -> None:
    if not sizes:
        raise ConfigError(key, list(sizes), "at least one layer")
    for i, size in enumerate(sizes):
        check_positive(f"{key}[{i}]", size)


def check_config(cfg) -> None:
    """Refuse out-of-range values with the key named; types were already checked by the schema.

    The model's own rules live with its schema (`check(cfg)` of the dataclass its YAML names).
    """
    data, trainer = cfg.data, cfg.trainer
    model_check = getattr(OmegaConf.get_type(cfg.model), "check", None)
    if model_check is not None:
        model_check(cfg)
    lr = cfg.optimizer.get("lr") if hasattr(cfg.optimizer, "get") else None
    check_positive("optimizer.lr", lr)
    check_positive("trainer.epochs", trainer.epochs)
    if trainer.log_interval < 0:
        raise ConfigError("trainer.log_interval", trainer.log_interval, "must be >= 0")
    for key in ("progress", "cuda_graph", "save_figures"):
        parse_switch(f"trainer.{key}", trainer[key])
    _check_regularisation(trainer, data)
    if not 0 <= data.val_size < TRAIN_SIZE:
        raise ConfigError("data.val_size", data.val_size, f"must be in [0, {TRAIN_SIZE})")
    available = TRAIN_SIZE - data.val_size
    if data.train_subset is not None and not 0 < data.train_subset <= available:
        raise ConfigError("data.train_subset", data.train_subset, f"must be in [1, {available}]")
    n_train = data.train_subset or available
    if not 0 < data.batch_size <= n_train:
        raise ConfigError(
            "batch_size", data.batch_size, f"must be in [1, {n_train}] (the training split's size)"
        )
    check_positive("data.eval_batch_size", data.eval_batch_size)


def _check_regularisation(trainer, data) -> None:
    """Label smoothing, max-norm and early stopping: ranges, and what early stopping needs."""
    check_fraction("trainer.label_smoothing", trainer.label_smoothing)
    if trainer.max_norm is not None:
        check_positive("trainer.max_norm", trainer.max_norm)
    stopping = trainer.early_stopping
    if stopping.min_delta < 0:
        raise ConfigError("trainer.early_stopping.min_delta", stopping.min_delta, "must be >= 0")
    if stopping.patience is None:
        return
    check_positive("trainer.early_stopping.patience", stopping.patience)
    if data.val_size == 0:
        raise ConfigError(
            "trainer.early_stopping.patience", stopping.patience, "needs data.val_size > 0"
        )
    if not trainer.eval_every_epoch:
        raise ConfigError(
            "trainer.early_stopping.patience",
            stopping.patience,
            "needs trainer.eval_every_epoch=true",
        )
