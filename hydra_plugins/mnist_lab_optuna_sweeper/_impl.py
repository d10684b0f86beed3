"""Optuna study as a Hydra multirun: ask trials, launch them as jobs, tell the results.

This class only orchestrates; each step has its own module (docs/ARCHITECTURE.md has the
contracts they serve):

- `_settings`: the `hydra.sweeper` keys, checked before any trial (defaults: config.py only);
- `_search_space`: Hydra's sweep syntax (`params`, then the command line) -> Optuna distributions;
- `_study_setup`: sampler, pruner, storage and the study, created or loaded to resume;
- `_launchers`: whether the launcher can start, asked before any trial;
- `_batches`: ask a batch of trials, launch the ones that compose (`_composing`), tell each
  outcome (`_telling`); every count-and-ask is one claim on the storage (`_claim`);
- `_worker_pool`: `hydra.sweeper.workers=N`, the command's N worker processes of itself (each
  runs the batches loop with its own batch), their signals, and the command's one report;
- `_workers`: worker identity, heartbeats, trials left RUNNING by dead sweepers;
- `_study_report`: the best trial or Pareto front, `optimization_results.yaml`, retrain commands.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf

from mnist_lab.job import (
    ConfigError,
    StorageUnavailable,
    SweepFailed,
    check_devices,
    display_url,
    raise_pending,
    reaching,
)

from ._batches import Batches, counts
from ._claim import Claim
from ._errors import SweeperError
from ._launchers import check_launcher, check_sweep_folder
from ._search_space import Param, fixed_names, grid_of, parse_search_space
from ._settings import Settings
from ._study_report import report
from ._study_setup import (
    absolute_storage_url,
    build_pruner,
    build_sampler,
    is_grid,
    keep_recipe,
    open_study,
    setting,
    storage_folder,
)
from ._worker_pool import (
    Pool,
    Role,
    bind_to_parent,
    check_shareable,
    describe,
    own_role,
    pool_message,
    role_from_env,
    worker_command,
    worker_overrides,
)
from ._workers import fail_stale, failed_by, this_worker

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """What a sweep will run, from its settings and command line, before any storage is opened."""

    directions: list[str]
    metric_names: list[str] | None
    space: list[Param]
    fixed: list[str]
    target: int  # finished trials the study should have (n_trials, clamped to a grid's size)
    queued: list[dict[str, Any]]
    extend: Callable[[DictConfig, optuna.Trial], None] | None
    sampler: optuna.samplers.BaseSampler
    pruner: optuna.pruners.BasePruner
    url: str | None
    seeded: bool


def plan_study(s: Settings, arguments: list[str]) -> Plan:
    """Everything that can be wrong with the sweeper config, found before any trial: one line."""
    directions = s.directions()
    metric_names = s.objective_names(len(directions))
    s.check()
    space, fixed = parse_search_space(s.params, arguments, s.search_space)
    grid = grid_of(space) if is_grid(s.sampler) else None
    target = s.n_trials
    if grid is not None:
        if s.custom_search_space:
            raise SweeperError("grid sampler: custom_search_space cannot be used with a grid")
        space = [p.for_grid() for p in space]
        size = math.prod(len(v) for v in grid.values())
        if target > size:
            log.info("n_trials %d clamped to the grid size %d", target, size)
        target = min(target, size)
    queued = s.trials_to_enqueue({p.name for p in space}, fixed_names(fixed))
    url = absolute_storage_url(s.storage)
    check_shareable(s.workers, s.sampler, url)
    if queued and grid is not None:
        raise SweeperError(
            "grid sampler: enqueue_trials cannot be used with a grid "
            "(hydra.sweeper.enqueue_trials=null)"
        )
    return Plan(
        directions=directions,
        metric_names=metric_names,
        space=list(space),
        fixed=fixed,
        target=target,
        queued=queued,
        extend=get_method(s.custom_search_space) if s.custom_search_space else None,
        sampler=build_sampler(s.sampler, grid, parallel=s.workers > 1),
        pruner=build_pruner(s.pruner),
        url=url,
        seeded=setting(s.sampler, "seed") is not None,
    )


@contextmanager
def resumable(url: str | None) -> Iterator[None]:
    """A storage that stops answering mid-sweep ends it with one line saying how to resume."""
    try:
        with reaching(url):
            yield
    except StorageUnavailable as e:
        raise StorageUnavailable(
            f"{e}: the sweep stopped. Once the storage answers again, rerun the same command to "
            "resume; the trials that were running are then marked failed"
        ) from None


class OptunaSweeperImpl(Sweeper):
    def __init__(self, **settings: Any) -> None:
        self.settings = Settings(**settings)
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def sweep(self, arguments: list[str]) -> None:
        assert self.config is not None
        s = self.settings
        p = plan_study(s, arguments)
        launcher = self.config.hydra.runtime.choices.get("hydra/launcher")
        check_launcher(self.config.hydra.launcher, f"hydra/launcher={launcher}")
        check_sweep_folder(Path(str(self.config.hydra.sweep.dir)))
        try:
            check_devices(OmegaConf.select(self.config, "trainer.device"), s.devices)
        except ConfigError as e:
            raise SweeperError(str(e)) from None
        role = role_from_env() if s.workers > 1 else None
        with resumable(p.url):
            if role is not None:  # one of the command's workers
                bind_to_parent(role)
                self.run(p, role)
                # The command reports the study and ends the multirun (its callbacks), once.
                raise SystemExit(0)
            role = own_role(s.devices)
            if s.workers > 1:
                self.run_workers(p, role, arguments)
            else:
                self.run(p, role)
        # Like Hydra's official Optuna sweeper: nothing returned, so nothing per trial is held
        # (a job's return keeps its whole composed config).
        return None

    def open(self, p: Plan) -> tuple[optuna.Study, optuna.storages.BaseStorage]:
        """Create the study or load it to resume, check its recipe, enqueue `enqueue_trials`."""
        assert self.config is not None
        s = self.settings
        storage_folder(p.url, Path(str(self.config.hydra.sweep.dir)))
        study, storage = open_study(
            p.url, s.study_name, p.sampler, p.pruner, p.directions, p.metric_names, p.seeded
        )
        keep_recipe(study, self.config, {param.name for param in p.space})
        for params in p.queued:  # run first; skipped when the study already has such a trial
            study.enqueue_trial(params, skip_if_exists=True)
        return study, storage

    def run_workers(self, p: Plan, role: Role, arguments: list[str]) -> None:
        """Open the study, run it in `workers` processes of this command, report it once."""
        assert self.config is not None
        s = self.settings
        given = [*arguments, *self.config.hydra.overrides.hydra]
        command = worker_command([o for o in given if o != "hydra.mode=MULTIRUN"])  # -m adds it
        study, storage = self.open(p)
        fail_stale(study, storage, s.grace_period, this_worker(), set())
        finished, running = counts(study)
        planned = max(0, p.target - finished - running)
        self.announce(study, p, finished, running, planned, f" in {s.workers} workers")
        if planned:
            command += worker_overrides(str(self.config.hydra.sweep.dir), study.study_name)
            pool = Pool.start(command, s.workers, role, planned)
            pool.wait()
            # A worker killed alone (kill -9, out of memory) leaves its trial RUNNING.
            fail_stale(study, storage, s.grace_period, this_worker(), set())
            failures = pool.failures()
        else:
            failures = []
        message = report(study, p.url, p.directions, s.n_trials, self.config)
        if failures:
            raise SweepFailed(pool_message(failures, counts(study)[0], p.target))
        if message is not None:
            raise SweepFailed(message)

    def announce(
        self, study: optuna.Study, p: Plan, finished: int, running: int, planned: int, how: str
    ) -> None:
        log.info(
            "Optuna study %r (%s): %d finished, %d running; running %d more (n_trials=%d)%s, "
            "sampler %s, pruner %s",
            study.study_name,
            display_url(p.url),
            finished,
            running,
            planned,
            p.target,
            how,
            type(p.sampler).__name__,
            type(p.pruner).__name__,
        )

    def run(self, p: Plan, role: Role) -> None:
        """Run batches until the study has its trials: the command's own loop (then it reports
        the study), or a worker's (the command reports)."""
        assert self.config is not None and self.launcher is not None
        assert self.hydra_context is not None
        s = self.settings
        if role.is_worker:  # the command opened the study, its recipe and queue
            optuna.logging.set_verbosity(optuna.logging.WARNING)  # "Using an existing study"
            study, storage = open_study(
                p.url, s.study_name, p.sampler, p.pruner, p.directions, p.metric_names, p.seeded
            )
            if p.seeded and role.index:  # the same seed in two workers repeats their trials
                p.sampler.reseed_rng()
        else:
            study, storage = self.open(p)
        worker = {**this_worker(), **describe(role, s.workers)}
        batches = Batches(
            study=study,
            launcher=self.launcher,
            hydra_context=self.hydra_context,
            config=self.config,
            space=p.space,
            fixed=p.fixed,
            extend=p.extend,
            url=p.url,
            worker=worker,
            heartbeat_interval=s.heartbeat_interval,
            size=s.batch_size(self.config.hydra.launcher),
            n_objectives=len(p.directions),
            claim=Claim(p.url, study.study_name),
        )
        try:
            self.loop(study, storage, p, role, batches)
        finally:
            batches.claim.close()

    def loop(
        self,
        study: optuna.Study,
        storage: optuna.storages.BaseStorage,
        p: Plan,
        role: Role,
        batches: Batches,
    ) -> None:
        assert self.config is not None
        s, sampler, worker = self.settings, p.sampler, batches.worker
        fail_stale(study, storage, s.grace_period, worker, batches.in_flight)
        finished, running = counts(study)
        if role.is_worker:
            planned = role.planned or 0
            log.info(
                "worker %d of %d (pid %d) on study %r: %d finished, %d running",
                role.index,
                s.workers,
                worker["pid"],
                study.study_name,
                finished,
                running,
            )
        else:
            planned = max(0, p.target - finished - running)
            self.announce(study, p, finished, running, planned, "")
        while not (
            isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(study)
        ):
            raise_pending()  # a signal Python dropped between batches ends the sweep here
            fail_stale(study, storage, s.grace_period, worker, batches.in_flight)
            batch = batches.ask(p.target)
            if not batch:
                break
            batches.run(batch)
            # Over the trials the command set out to run, whichever worker ran them (docs/SWEEPS.md,
            # compatibility), not per batch.
            failed = failed_by(study, role.command)
            if len(failed) > s.max_failure_rate * planned:
                if not role.is_worker:
                    report(study, p.url, p.directions, s.n_trials, self.config)
                last = failed[-1]
                raise SweepFailed(
                    f"stopping the sweep: {len(failed)} of the trials it ran failed, more than "
                    f"max_failure_rate={s.max_failure_rate} of {planned}; last, trial "
                    f"{last.number}: {last.user_attrs.get('reason')} (every trial's reason: "
                    "user attribute `reason`, or the job logs)"
                )
        if role.is_worker:
            log.info("worker %d: the study has its trials", role.index)
            return
        message = report(study, p.url, p.directions, s.n_trials, self.config)
        if message is not None:
            raise SweepFailed(message)
