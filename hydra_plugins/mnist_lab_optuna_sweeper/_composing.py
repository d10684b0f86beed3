"""Composing: a trial's sampled values become its job's overrides, and every job's config is
composed before launching, so a value that does not compose fails only its own trial."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from hydra.types import HydraContext
from omegaconf import DictConfig
from optuna.trial import TrialState

from mnist_lab.job import TRIAL_ENV, WORKER_ENV, one_line

from ._search_space import Param, quote, render_value
from ._telling import tell
from ._workers import now

log = logging.getLogger(__name__)


def job_overrides(
    trial: optuna.Trial,
    fixed: list[str],
    by_name: Mapping[str, Param],
    config: DictConfig,
    url: str | None,
    worker: Mapping[str, Any],
) -> list[str]:
    """The job's overrides: the fixed ones, the sampled values, and the trial's identity.

    Every job gets `hydra.sweep.subdir=trial_NNNN` (never reused: a sweep dir shared with another
    study gets a suffix), its trial number in `hydra.job.env_set`, the resolved study name and
    (when the sweeper made it absolute) the storage URL, which `mnist_lab.job.trial_reporting`
    reads to report to the same trial; a job of one of `hydra.sweeper.workers` also gets its
    worker's index there, from which `mnist_lab.job.worker_share` gives it its device and CPU
    threads. The trial's user attributes get the worker, a first heartbeat, the task overrides
    and the run folder.
    """
    task = list(fixed)
    for name, value in trial.params.items():
        param = by_name.get(name)
        task.append(param.override(value) if param else f"{name}={render_value(value)}")
    sweep_dir = Path(str(config.hydra.sweep.dir))
    subdir = f"trial_{trial.number:04d}"
    suffix = 1
    while (sweep_dir / subdir).exists():  # a sweep dir reused by another study
        suffix += 1
        subdir = f"trial_{trial.number:04d}_{suffix}"
    trial.set_user_attr("worker", dict(worker))
    trial.set_user_attr("heartbeat_at", now().isoformat())
    trial.set_user_attr("overrides", task)
    trial.set_user_attr("run_dir", os.path.abspath(sweep_dir / subdir))
    hydra = [
        f"hydra.sweep.subdir={subdir}",
        f"++hydra.job.env_set.{TRIAL_ENV}='{trial.number}'",
        f"hydra.sweeper.study_name={quote(trial.study.study_name)}",
    ]
    if worker.get("index") is not None:
        hydra.append(f"++hydra.job.env_set.{WORKER_ENV}='{worker['index']}'")
    if url is not None and url != config.hydra.sweeper.storage:
        # Only a URL the sweeper changed (a relative SQLite path made absolute): anything else
        # the job composes itself, so a password passed as `${oc.env:...}` stays out of its
        # .hydra/ files.
        hydra.append(f"hydra.sweeper.storage={quote(url)}")
    return task + hydra


def composable(
    study: optuna.Study,
    batch: list[tuple[optuna.Trial, list[str]]],
    hydra_context: HydraContext,
    config: DictConfig,
) -> tuple[list[tuple[optuna.Trial, list[str]]], list[optuna.Trial]]:
    """(the trials whose config composes, the others, told FAIL with reason `config: ...`)."""
    ok, failed = [], []
    for trial, overrides in batch:
        try:
            hydra_context.config_loader.load_sweep_config(config, list(overrides))
        except Exception as e:
            reason = f"config: {one_line(e)}"
            trial.set_user_attr("reason", reason)
            trial.set_user_attr("status", "failed")
            tell(study, trial, TrialState.FAIL)
            log.warning("trial %d failed: %s", trial.number, reason)
            failed.append(trial)
        else:
            ok.append((trial, overrides))
    return ok, failed
