"""Optuna objects from config: the sampler and pruner (`hydra.sweeper.sampler`/`pruner`) and the
study's storage (SQLite waits for locks instead of failing; in memory for `storage: null`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from ._search_space import SweeperError, _one_line

SQLITE_TIMEOUT_S = 30
# Storages of studies kept in memory (storage: null), by study name: jobs that run in this
# process (Hydra's basic launcher) can still report to their trial.
LOCAL_STORAGES: dict[str, optuna.storages.BaseStorage] = {}


def _kwargs(cfg: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    cfg = dict(cfg)
    target = cfg.pop("_target_", None)
    if not target:
        raise SweeperError("no _target_ given")
    return target, {k: v for k, v in cfg.items() if v is not None and not k.startswith("_")}


def _build(kind: str, cfg: Any, **extra: Any) -> Any:
    try:
        target, kwargs = _kwargs(cfg)
    except SweeperError as e:
        raise SweeperError(f"hydra.sweeper.{kind}: {e}") from None
    try:
        cls = get_class(target)
    except Exception:
        raise SweeperError(f"hydra.sweeper.{kind}: unknown class {target!r}") from None
    if target.endswith("CmaEsSampler") and not _has_module("cmaes"):
        raise SweeperError(f"hydra.sweeper.{kind}: {target} needs `pip install cmaes`")
    try:
        return cls(**kwargs, **extra)
    except Exception as e:
        raise SweeperError(f"hydra.sweeper.{kind}: {target}: {_one_line(e)}") from None


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def build_sampler(
    cfg: Any, grid: dict[str, list[Any]] | None = None
) -> optuna.samplers.BaseSampler:
    return _build("sampler", cfg, **({"search_space": grid} if grid is not None else {}))


def build_pruner(cfg: Any) -> optuna.pruners.BasePruner:
    """The study's pruner from `hydra.sweeper.pruner` (null: no pruning); the job uses it too."""
    return optuna.pruners.NopPruner() if cfg is None else _build("pruner", cfg)


def _get(cfg: Any, key: str) -> Any:
    return cfg.get(key) if isinstance(cfg, (Mapping, DictConfig)) else None


def is_grid(cfg: Any) -> bool:
    return _get(cfg, "_target_") == "optuna.samplers.GridSampler"


def absolute_storage_url(url: str | None) -> str | None:
    """SQLite paths made absolute, so jobs that change directory still find the database."""
    prefix = "sqlite:///"
    if url is None or not url.startswith(prefix):
        return url
    path = url[len(prefix) :]
    if not path or path.startswith(":memory:") or path.startswith("file:"):
        return url
    return prefix + str(Path(path).expanduser().resolve())


def make_storage(url: str | None) -> optuna.storages.BaseStorage:
    """RDB storage for a URL (SQLite waits for locks instead of failing); in memory for None."""
    if url is None:
        return optuna.storages.InMemoryStorage()
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
        if path and not path.startswith((":memory:", "file:")):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        return _rdb_storage(url, {"connect_args": {"timeout": SQLITE_TIMEOUT_S}})
    return _rdb_storage(url, {"pool_pre_ping": True})


def _rdb_storage(url: str, engine_kwargs: dict, attempts: int = 5) -> optuna.storages.RDBStorage:
    """RDBStorage, retried while another worker is creating the same database's schema.

    Two sweeps started together on a new database both try to create Optuna's tables and alembic
    version row; the loser gets an IntegrityError (or a lock error) and, on retry, finds them made.
    """
    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        except (IntegrityError, OperationalError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")
