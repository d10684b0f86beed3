"""The study from config: its sampler and pruner (`hydra.sweeper.sampler`/`pruner`), its storage
(through `mnist_lab.job.optuna_study`, which the jobs use too; an SQLite file's folder made only
where the sweep writes) and the study itself, created or loaded to resume.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig

from mnist_lab.job import (
    OptunaConfigError,
    display_url,
    from_config,
    hide_password,
    keep_in_memory,
    one_line,
    open_storage,
    recipe_of,
    sqlite_path,
)
from mnist_lab.job import build_pruner as pruner_from_config

from ._errors import SweeperError
from .config import REMOVED_SAMPLERS

log = logging.getLogger(__name__)
RECIPE_ATTR = "recipe"  # the study's user attribute: what its trials train, searched keys aside


def setting(cfg: Any, key: str) -> Any:
    """`cfg[key]` of a sampler/pruner node (None if absent or the node is not a mapping)."""
    return cfg.get(key) if isinstance(cfg, (Mapping, DictConfig)) else None


def is_grid(cfg: Any) -> bool:
    return setting(cfg, "_target_") == "optuna.samplers.GridSampler"


def build_sampler(
    cfg: Any, grid: dict[str, list[Any]] | None = None, parallel: bool = False
) -> optuna.samplers.BaseSampler:
    """The sampler; with `parallel` (trials in several worker processes) a sampler that has a
    constant liar (TPE) uses it unless the config set it: a running trial counts as a bad one,
    so workers do not propose the same point while each other's trials run."""
    target = setting(cfg, "_target_")
    if target in REMOVED_SAMPLERS:
        raise SweeperError(f"hydra.sweeper.sampler: {REMOVED_SAMPLERS[target]}")
    extra: dict[str, Any] = {"search_space": grid} if grid is not None else {}
    if parallel and isinstance(cfg, (Mapping, DictConfig)) and "constant_liar" in cfg:
        if setting(cfg, "constant_liar") is None:
            extra["constant_liar"] = True
    try:
        return from_config(cfg, **extra)
    except OptunaConfigError as e:
        raise SweeperError(f"hydra.sweeper.sampler: {e}") from None


def build_pruner(cfg: Any) -> optuna.pruners.BasePruner:
    try:
        return pruner_from_config(cfg)
    except OptunaConfigError as e:
        raise SweeperError(f"hydra.sweeper.pruner: {e}") from None


def absolute_storage_url(url: str | None) -> str | None:
    """SQLite paths made absolute, so jobs that change directory still find the database."""
    path = sqlite_path(url)
    return url if path is None else "sqlite:///" + str(path.expanduser().resolve())


def storage_folder(url: str | None, sweep_dir: Path) -> None:
    """An SQLite database's folder must exist, except one the sweep's outputs go under, which
    Hydra makes anyway (the default `results/optuna.db` beside `results/multiruns/`): a
    mistyped path is refused in one line, never created."""
    path = sqlite_path(url)
    if path is None or path.parent.is_dir():
        return
    folder = path.parent.resolve()
    if folder in sweep_dir.resolve().parents:
        folder.mkdir(parents=True, exist_ok=True)
        return
    raise SweeperError(
        f"hydra.sweeper.storage={display_url(url)!r}: folder {folder} does not exist (make it "
        "first; only a folder the sweep's outputs go under is made)"
    )


def open_study(
    url: str | None,
    study_name: str | None,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
    directions: list[str],
    metric_names: list[str] | None,
    seeded: bool,
) -> tuple[optuna.Study, optuna.storages.BaseStorage]:
    """Create the study or load it to resume; refuse one stored with other directions."""
    try:
        storage = open_storage(url)
        study = optuna.create_study(
            storage=storage,
            sampler=sampler,
            pruner=pruner,
            study_name=study_name,
            directions=directions,
            load_if_exists=True,
        )
    except Exception as e:
        why = hide_password(one_line(e), url)
        raise SweeperError(f"hydra.sweeper.storage={display_url(url)!r}: {why}") from None
    stored = [d.name.lower() for d in study.directions]
    if stored != directions:
        raise SweeperError(
            f"study {study.study_name!r} was created with direction {stored}, not {directions}"
        )
    if metric_names is not None:
        with warnings.catch_warnings():  # experimental since Optuna 3.2, stable in use
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(metric_names))
    if url is None:
        keep_in_memory(study.study_name, storage)
    if seeded and study.get_trials(deepcopy=False):
        # A seeded sampler restarted on a resumed study would propose its first trials again.
        sampler.reseed_rng()
        log.info("study has trials already: the seeded sampler is reseeded (no repeats)")
    return study, storage


def _spelled(value: Any) -> str:
    """A value as a Hydra override spells it (`true`, `null`, `0.05`, `mnist`)."""
    return value if isinstance(value, str) else json.dumps(value)


def keep_recipe(study: optuna.Study, config: DictConfig, searched: set[str]) -> None:
    """A study's trials answer one question: a resumed study must train what it trained before.

    A new study stores the sweep's recipe (every config key that changes what is trained, as
    written, the searched keys aside; mnist_lab.config.recipe); a resumed one is refused in one line when
    a key both know differs, say `epochs=5` then `epochs=15`, or a preset changed between versions.
    A key only one side has (searched in one sweep and fixed in the other, or new in this
    version) is not compared. A study from a version that stored no recipe is only warned about.
    """
    recipe = recipe_of(config, leave_out=searched)
    stored = study.user_attrs.get(RECIPE_ATTR)
    if stored is None:
        if study.get_trials(deepcopy=False):
            log.warning(
                "study %r was started by a version that stored no recipe: whether its trials "
                "trained what this sweep trains is not checked",
                study.study_name,
            )
        else:
            study.set_user_attr(RECIPE_ATTR, recipe)
        return
    changed = sorted(k for k in recipe.keys() & stored.keys() if recipe[k] != stored[k])
    if changed:
        shown = changed[:3] + (["..."] if len(changed) > 3 else [])
        was = ", ".join(k if k == "..." else f"{k}={_spelled(stored[k])}" for k in shown)
        now = ", ".join(k if k == "..." else f"{k}={_spelled(recipe[k])}" for k in shown)
        raise SweeperError(
            f"study {study.study_name!r} was run with {was}; this sweep has {now}: its trials "
            "would not be comparable. Resume it with the same settings, or start another study "
            "(hydra.sweeper.study_name=NAME)"
        )
