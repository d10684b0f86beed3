"""The job layer's public face: everything the Hydra plugins (the Optuna sweeper, the batched
launcher) use of mnist_lab, and nothing else. The plugins import these names from `mnist_lab.job`
only (tests/test_architecture.py checks it), so the rooms behind them can change freely."""

from mnist_lab.config.recipe import recipe_of
from mnist_lab.errors import ConfigError, StorageUnavailable, SweepFailed
from mnist_lab.job.group import capacity, group_key
from mnist_lab.job.optuna_study import (
    TRIAL_ENV,
    OptunaConfigError,
    build_pruner,
    display_url,
    from_config,
    hide_password,
    is_unavailable,
    keep_in_memory,
    one_line,
    open_storage,
    reaching,
    sqlite_path,
)
from mnist_lab.job.task import Job, evaluate_command, is_project_task, run_jobs
from mnist_lab.job.worker_share import WORKER_ENV, check_devices
from mnist_lab.records.files import atomic_write_text
from mnist_lab.records.objective import Objective
from mnist_lab.records.reading import read_record
from mnist_lab.signals import raise_pending, stop_status

__all__ = [
    "TRIAL_ENV",
    "WORKER_ENV",
    "ConfigError",
    "Job",
    "Objective",
    "OptunaConfigError",
    "StorageUnavailable",
    "SweepFailed",
    "atomic_write_text",
    "build_pruner",
    "capacity",
    "check_devices",
    "display_url",
    "evaluate_command",
    "from_config",
    "group_key",
    "hide_password",
    "is_project_task",
    "is_unavailable",
    "keep_in_memory",
    "one_line",
    "open_storage",
    "raise_pending",
    "reaching",
    "read_record",
    "recipe_of",
    "run_jobs",
    "sqlite_path",
    "stop_status",
]
