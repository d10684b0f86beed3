"""The sweeper's settings, checked: every `hydra.sweeper` key Hydra passes (defaults live in
config.py only), validated before any trial so a mistake ends the command in one line."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from ._errors import SweeperError

log = logging.getLogger(__name__)


@dataclass
class Settings:
    """The keys of `OptunaSweeperConf`, as Hydra instantiates the sweeper with them."""

    sampler: Any
    pruner: Any
    direction: Any
    storage: str | None
    study_name: str | None
    n_trials: int
    workers: int
    devices: list[str] | None
    n_jobs: int | None
    max_failure_rate: float
    params: Mapping[str, Any] | None
    search_space: Mapping[str, Any] | None
    metric_names: list[str] | None
    enqueue_trials: list[Mapping[str, Any]] | None
    custom_search_space: str | None
    heartbeat_interval: float
    grace_period: float

    def directions(self) -> list[str]:
        raw = self.direction
        items = list(raw) if isinstance(raw, (ListConfig, list, tuple)) else [raw]
        names = [getattr(d, "name", d) for d in items]
        if not names or any(n not in ("minimize", "maximize") for n in names):
            raise SweeperError(
                f"hydra.sweeper.direction={self.direction!r}: use minimize, maximize or a list"
            )
        return [str(n) for n in names]

    def objective_names(self, n_objectives: int) -> list[str] | None:
        names = self.metric_names
        if names is None:
            return None
        if isinstance(names, (ListConfig, DictConfig)):
            names = OmegaConf.to_container(names)
        if isinstance(names, str):
            names = [names]
        if len(names) != n_objectives or not all(isinstance(n, str) and n for n in names):
            raise _bad("metric_names", names, f"{n_objectives} name(s), one per direction")
        return list(names)

    def check(self) -> None:
        """Everything that can be wrong with the numbers, found before any trial."""
        if (
            not isinstance(self.n_trials, int)
            or isinstance(self.n_trials, bool)
            or self.n_trials < 0
        ):
            raise _bad("n_trials", self.n_trials, "an integer >= 0")
        if self.n_jobs is not None and (not isinstance(self.n_jobs, int) or self.n_jobs < 1):
            raise _bad("n_jobs", self.n_jobs, "null or an integer >= 1")
        if not isinstance(self.workers, int) or isinstance(self.workers, bool) or self.workers < 1:
            raise _bad("workers", self.workers, "an integer >= 1")
        if self.devices is not None:
            if isinstance(self.devices, ListConfig):
                self.devices = OmegaConf.to_container(self.devices)
            listed = isinstance(self.devices, list) and self.devices
            if not listed or not all(isinstance(d, str) and d for d in self.devices):
                raise _bad("devices", self.devices, "null or a list of devices, e.g. [cuda:0, cpu]")
        rate = self.max_failure_rate
        if not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
            raise _bad("max_failure_rate", rate, "a number in [0, 1]")
        for key in ("heartbeat_interval", "grace_period"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or value <= 0:
                raise _bad(key, value, "a number of seconds > 0")
        if self.grace_period <= self.heartbeat_interval:
            raise _bad("grace_period", self.grace_period, "longer than heartbeat_interval")
        if self.params is not None and self.search_space:
            log.warning("hydra.sweeper.params and search_space both set: using params only")
            self.search_space = None

    def trials_to_enqueue(self, names: set[str], fixed: set[str]) -> list[dict[str, Any]]:
        """`enqueue_trials` as plain dicts naming parameters of the search space only; keys the
        command line fixed (no longer searched: every trial has that value) are left out."""
        trials = self.enqueue_trials
        if trials is None:
            return []
        if isinstance(trials, (ListConfig, DictConfig)):
            trials = OmegaConf.to_container(trials, resolve=True)
        if not isinstance(trials, list) or not all(isinstance(t, dict) and t for t in trials):
            raise _bad("enqueue_trials", trials, "a list of {param: value} mappings")
        trials = [{k: v for k, v in trial.items() if k not in fixed} for trial in trials]
        for trial in trials:
            unknown = sorted(set(trial) - names)
            if unknown:
                raise _bad(
                    "enqueue_trials",
                    trial,
                    f"parameters of the search space only ({', '.join(sorted(names))}); "
                    f"not {', '.join(unknown)}",
                )
        return trials

    def batch_size(self, launcher_cfg: DictConfig) -> int:
        """Trials asked and launched together: n_jobs, else the launcher's n_jobs, else 1."""
        if self.n_jobs is not None:
            return self.n_jobs
        launcher_jobs = launcher_cfg.get("n_jobs")
        if isinstance(launcher_jobs, int) and launcher_jobs > 0:
            return launcher_jobs
        if isinstance(launcher_jobs, int) and launcher_jobs < 0:  # joblib: -1 is every core
            return max(1, (os.cpu_count() or 1) + 1 + launcher_jobs)
        return 1


def _bad(key: str, value: Any, allowed: str) -> SweeperError:
    return SweeperError(f"hydra.sweeper.{key}={value!r} is not allowed: {allowed}")
