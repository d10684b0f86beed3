"""Batches: ask up to a batch of trials while the study is short of its target, launch the ones
that compose through Hydra's launcher (with heartbeats), and tell every outcome.

Finished + running trials are counted in the storage before every ask, so reruns top the study up
and concurrent workers count each other's running trials; the count, the ask and the sampler's
proposal are one claim (`_claim`), so no number of workers makes the study overshoot. Whatever
stops a batch (Ctrl-C, SIGTERM, a launcher error) tells its unfinished trials FAIL and is
re-raised: no trial is left RUNNING.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext
from omegaconf import DictConfig
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from mnist_lab.job import one_line

from ._claim import Claim
from ._composing import composable, job_overrides
from ._errors import SweeperError
from ._search_space import Param
from ._telling import tell_job, tell_stopped
from ._workers import Heartbeat

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
Batch = list[tuple[optuna.Trial, list[str]]]


def suggest(trial: optuna.Trial, name: str, distribution: BaseDistribution) -> Any:
    """`trial.suggest_*` for a distribution of the search space."""
    d = distribution
    if isinstance(d, FloatDistribution):
        return trial.suggest_float(name, d.low, d.high, step=d.step, log=d.log)
    if isinstance(d, IntDistribution):
        return trial.suggest_int(name, d.low, d.high, step=d.step, log=d.log)
    assert isinstance(d, CategoricalDistribution), d
    return trial.suggest_categorical(name, d.choices)


def counts(study: optuna.Study) -> tuple[int, int]:
    """(finished, running) trials of the study, read from its storage now."""
    trials = study.get_trials(deepcopy=False)
    finished = sum(t.state in FINISHED for t in trials)
    running = sum(t.state == TrialState.RUNNING for t in trials)
    return finished, running


@dataclass
class Batches:
    study: optuna.Study
    launcher: Launcher
    hydra_context: HydraContext
    config: DictConfig
    space: Sequence[Param]
    fixed: list[str]
    extend: Callable[[DictConfig, optuna.Trial], None] | None
    url: str | None
    worker: Mapping[str, Any]
    heartbeat_interval: float
    size: int
    n_objectives: int
    claim: Claim
    job_idx: int = 0
    in_flight: set[int] = field(default_factory=set)

    def ask(self, target: int) -> Batch:
        """Up to `size` new trials with their job overrides, while the study is short of target.

        A trial is in flight from the moment it exists, before the sampler proposes its values:
        a sampler that fails (a missing module, a model that does not fit) fails that trial too.
        """
        by_name = {p.name: p for p in self.space}
        batch: Batch = []
        try:
            while len(batch) < self.size:
                with self.claim.held():
                    finished, running = counts(self.study)
                    if finished + running >= target:
                        break
                    trial = self.study.ask()
                    self.in_flight.add(trial.number)
                    batch.append((trial, []))
                    self._propose(trial)
                    if self.extend is not None:
                        self.extend(self.config, trial)
                overrides = job_overrides(
                    trial, self.fixed, by_name, self.config, self.url, self.worker
                )
                batch[-1] = (trial, overrides)
        except BaseException as e:
            self._stopped([t for t, _ in batch], e)
            raise
        return batch

    def run(self, batch: Batch) -> list[optuna.Trial]:
        """Launch the trials that compose, tell every outcome; returns the failed trials.

        The job returns (each holding its job's whole composed config) are dropped once told:
        a sweep keeps nothing per finished trial but what the study stores.
        """
        try:
            jobs, not_composed = composable(self.study, batch, self.hydra_context, self.config)
            self.in_flight.difference_update(t.number for t in not_composed)
            failed = list(not_composed)
            if jobs:
                with Heartbeat([t for t, _ in jobs], self.heartbeat_interval):
                    results = self.launcher.launch(
                        [o for _, o in jobs], initial_job_idx=self.job_idx
                    )
                self.job_idx += len(results)
                for (trial, _), ret in zip(jobs, results, strict=True):
                    if tell_job(self.study, trial, ret, self.n_objectives):
                        failed.append(trial)
                    self.in_flight.discard(trial.number)
            return failed
        except BaseException as e:
            self._stopped([t for t, _ in batch], e)
            raise
        finally:
            self.in_flight.clear()

    def _propose(self, trial: optuna.Trial) -> None:
        """The sampler's values for the searched keys (what `study.ask(fixed_distributions)`
        does), its failure one line naming the sampler."""
        try:
            for param in self.space:
                suggest(trial, param.name, param.distribution)
        except Exception as e:
            sampler = type(self.study.sampler).__name__
            raise SweeperError(
                f"hydra.sweeper.sampler: {sampler} could not propose trial {trial.number}: "
                f"{type(e).__name__}: {one_line(e)}"
            ) from e

    def _stopped(self, trials: Sequence[optuna.Trial], error: BaseException) -> None:
        tell_stopped(self.study, [t for t in trials if t.number in self.in_flight], error)
