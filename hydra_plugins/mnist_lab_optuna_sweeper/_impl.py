"""Optuna study as a Hydra multirun: ask trials, launch them as jobs, tell the results.

Design (docs/ARCHITECTURE.md has the contracts it serves):

- Search space: Hydra's sweep syntax (`choice`, `range`, `interval`, `int(interval)`,
  `tag(log, ...)`) from `hydra.sweeper.params`, then the command line (same key: the command line
  wins). Each override becomes an Optuna distribution; plain values are passed to every job.
- Ask/tell with public Optuna APIs: `study.ask(fixed_distributions=...)` per trial, the launcher
  runs a batch of `n_jobs` trials, `study.tell(...)` with the job's value or its failure.
- `n_trials` is the number of finished trials the study should have, counted in the storage
  before every ask: reruns top the study up, concurrent workers share the count.
- Every job gets `hydra.sweep.subdir=trial_NNNN` (directories named by trial number, never reused)
  and `hydra.job.env_set.MNIST_LAB_OPTUNA_TRIAL=<number>` plus the resolved study name and storage,
  which `mnist_lab.pruning` reads to report per-epoch values to the same trial.
- A job that raises, returns something other than a finite number, or leaves a record with status
  failed/diverged is told FAIL with a `reason` user attribute; a value that does not compose fails
  only its trial (composed here before launching, so the launcher never sees it).
- Stale trials (their sweeper was killed): see `stale_reason`.

The pieces live beside this module: `_search_space` (sweep syntax -> distributions, overrides),
`_study_setup` (sampler, pruner, storage), `_workers` (worker identity, heartbeats, stale trials)
and `_job_results` (a job's outcome -> the trial's state and attributes).
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_method
from omegaconf import DictConfig, ListConfig, OmegaConf
from optuna.trial import FrozenTrial, TrialState

from ._job_results import job_record, objective_values, record_attrs, tell
from ._search_space import (
    Param,
    SweeperError,
    _one_line,
    grid_of,
    parse_search_space,
    quote,
    render_value,
    shell_quote,
)
from ._study_setup import (
    LOCAL_STORAGES,
    _get,
    absolute_storage_url,
    build_pruner,
    build_sampler,
    is_grid,
    make_storage,
)
from ._workers import _Heartbeat, _now, stale_reason, this_worker
from .config import TRIAL_ENV

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


class OptunaSweeperImpl(Sweeper):
    def __init__(
        self,
        sampler: Any,
        direction: Any = "minimize",
        storage: str | None = None,
        study_name: str | None = None,
        n_trials: int = 20,
        n_jobs: int | None = None,
        max_failure_rate: float = 0.5,
        pruner: Any = None,
        params: Mapping[str, Any] | None = None,
        search_space: Mapping[str, Any] | None = None,
        custom_search_space: str | None = None,
        heartbeat_interval: float = 30.0,
        grace_period: float = 300.0,
    ) -> None:
        self.sampler_cfg, self.pruner_cfg = sampler, pruner
        self.direction = direction
        self.storage_url = storage
        self.study_name = study_name
        self.n_trials, self.n_jobs = n_trials, n_jobs
        self.max_failure_rate = max_failure_rate
        self.params, self.search_space = params, search_space
        self.custom_search_space = custom_search_space
        self.heartbeat_interval, self.grace_period = heartbeat_interval, grace_period
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher = None
        self.job_idx = 0
        self.worker = this_worker()
        self.in_flight: set[int] = set()

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config, self.hydra_context, self.job_idx = config, hydra_context, 0
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    # ------------------------------------------------------------ validation

    def _directions(self) -> list[str]:
        raw = self.direction
        if isinstance(raw, (ListConfig, list, tuple)):
            items = list(raw)
        else:
            items = [raw]
        names = [getattr(d, "name", d) for d in items]
        if not names or any(n not in ("minimize", "maximize") for n in names):
            raise SweeperError(
                f"hydra.sweeper.direction={self.direction!r}: use minimize, maximize or a list"
            )
        return [str(n) for n in names]

    def _check_numbers(self) -> None:
        def bad(key: str, value: Any, allowed: str) -> SweeperError:
            return SweeperError(f"hydra.sweeper.{key}={value!r} is not allowed: {allowed}")

        if (
            not isinstance(self.n_trials, int)
            or isinstance(self.n_trials, bool)
            or self.n_trials < 0
        ):
            raise bad("n_trials", self.n_trials, "an integer >= 0")
        if self.n_jobs is not None and (not isinstance(self.n_jobs, int) or self.n_jobs < 1):
            raise bad("n_jobs", self.n_jobs, "null or an integer >= 1")
        rate = self.max_failure_rate
        if not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
            raise bad("max_failure_rate", rate, "a number in [0, 1]")
        for key in ("heartbeat_interval", "grace_period"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or value <= 0:
                raise bad(key, value, "a number of seconds > 0")
        if self.grace_period <= self.heartbeat_interval:
            raise bad("grace_period", self.grace_period, "longer than heartbeat_interval")

    def _batch_size(self) -> int:
        if self.n_jobs is not None:
            return self.n_jobs
        assert self.config is not None
        launcher_jobs = self.config.hydra.launcher.get("n_jobs")
        if isinstance(launcher_jobs, int) and launcher_jobs > 0:
            return launcher_jobs
        if isinstance(launcher_jobs, int) and launcher_jobs < 0:  # joblib: -1 is every core
            return max(1, (os.cpu_count() or 1) + 1 + launcher_jobs)
        return 1

    # ------------------------------------------------------------ the sweep

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        assert self.config is not None and self.launcher is not None
        # Everything that can be wrong with the sweeper config is found here, before any trial.
        directions = self._directions()
        self._check_numbers()
        if self.params is not None and self.search_space:
            log.warning("hydra.sweeper.params and search_space both set: using params only")
            self.search_space = None
        space, fixed = parse_search_space(self.params, arguments, self.search_space)
        grid = grid_of(space) if is_grid(self.sampler_cfg) else None
        if grid is not None and self.custom_search_space:
            raise SweeperError("grid sampler: custom_search_space cannot be used with a grid")
        extend = get_method(self.custom_search_space) if self.custom_search_space else None
        sampler = build_sampler(self.sampler_cfg, grid)
        pruner = build_pruner(self.pruner_cfg)
        target = self.n_trials
        if grid is not None:
            size = math.prod(len(v) for v in grid.values())
            if target > size:
                log.info("n_trials %d clamped to the grid size %d", target, size)
            target = min(target, size)
        url = absolute_storage_url(self.storage_url)
        study, storage = self._open_study(url, sampler, pruner, directions)

        self._fail_stale(study, storage)
        finished, running = self._counts(study)
        planned = max(0, target - finished - running)
        log.info(
            "Optuna study %r (%s): %d finished, %d running; running %d more (n_trials=%d), "
            "sampler %s, pruner %s",
            study.study_name,
            url or "in memory",
            finished,
            running,
            planned,
            target,
            type(sampler).__name__,
            type(pruner).__name__,
        )
        failed = 0
        returns: list[Sequence[JobReturn]] = []
        while not (
            isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(study)
        ):
            self._fail_stale(study, storage)
            batch = self._ask_batch(study, target, space, fixed, extend, url)
            if not batch:
                break
            batch_returns, batch_failed = self._run_batch(study, batch, len(directions))
            returns.append(batch_returns)
            failed += batch_failed
            if failed > self.max_failure_rate * planned:
                self._report(study, url, directions)
                raise SweeperError(
                    f"stopping the sweep: {failed} of the trials it ran failed, more than "
                    f"max_failure_rate={self.max_failure_rate} of {planned} (reasons: user "
                    f"attribute `reason`, or the job logs)"
                )
        message = self._report(study, url, directions)
        if message is not None:
            raise SweeperError(message)
        return returns

    def _open_study(
        self, url: str | None, sampler: Any, pruner: Any, directions: list[str]
    ) -> tuple[optuna.Study, optuna.storages.BaseStorage]:
        """Create the study or load it to resume; refuse one stored with other directions."""
        try:
            storage = make_storage(url)
            study = optuna.create_study(
                storage=storage,
                sampler=sampler,
                pruner=pruner,
                study_name=self.study_name,
                directions=directions,
                load_if_exists=True,
            )
        except Exception as e:
            raise SweeperError(
                f"hydra.sweeper.storage={self.storage_url!r}: {_one_line(e)}"
            ) from None
        stored = [d.name.lower() for d in study.directions]
        if stored != directions:
            raise SweeperError(
                f"study {study.study_name!r} was created with direction {stored}, not {directions}"
            )
        if url is None:
            LOCAL_STORAGES[study.study_name] = storage
        if _get(self.sampler_cfg, "seed") is not None and study.get_trials(deepcopy=False):
            # A seeded sampler restarted on a resumed study would propose its first trials again.
            sampler.reseed_rng()
            log.info("study has trials already: the seeded sampler is reseeded (no repeats)")
        return study, storage

    def _ask_batch(
        self,
        study: optuna.Study,
        target: int,
        space: Sequence[Param],
        fixed: list[str],
        extend: Any,
        url: str | None,
    ) -> list[tuple[optuna.Trial, list[str]]]:
        """Up to n_jobs new trials with their job overrides, while the study is short of target.

        Finished + running trials are counted again before every ask, so concurrent workers
        (which count each other's running trials) overshoot by at most a racing ask.
        """
        distributions = {p.name: p.distribution for p in space}
        by_name = {p.name: p for p in space}
        batch: list[tuple[optuna.Trial, list[str]]] = []
        try:
            while len(batch) < self._batch_size():
                finished, running = self._counts(study)
                if finished + running >= target:
                    break
                trial = study.ask(fixed_distributions=distributions)
                self.in_flight.add(trial.number)
                batch.append((trial, []))
                if extend is not None:
                    extend(self.config, trial)
                batch[-1] = (trial, self._overrides(trial, fixed, by_name, study, url))
        except BaseException as e:
            self._fail_unfinished(study, [t for t, _ in batch], e)
            raise
        return batch

    def _run_batch(
        self, study: optuna.Study, batch: list[tuple[optuna.Trial, list[str]]], n_objectives: int
    ) -> tuple[Sequence[JobReturn], int]:
        """Launch the trials that compose, tell every outcome; (job returns, failed trials)."""
        assert self.launcher is not None
        try:
            jobs, failed = self._compose(study, batch)
            results: Sequence[JobReturn] = []
            if jobs:
                with _Heartbeat([t for t, _ in jobs], self.heartbeat_interval):
                    results = self.launcher.launch(
                        [o for _, o in jobs], initial_job_idx=self.job_idx
                    )
                self.job_idx += len(results)
                for (trial, _), ret in zip(jobs, results, strict=True):
                    failed += self._tell(study, trial, ret, n_objectives)
            return results, failed
        except BaseException as e:  # Ctrl-C, a launcher error: never leave trials RUNNING
            self._fail_unfinished(study, [t for t, _ in batch], e)
            raise
        finally:
            self.in_flight.clear()

    def _counts(self, study: optuna.Study) -> tuple[int, int]:
        trials = study.get_trials(deepcopy=False)
        finished = sum(t.state in FINISHED for t in trials)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        return finished, running

    def _fail_stale(self, study: optuna.Study, storage: optuna.storages.BaseStorage) -> None:
        now = _now()
        study_id = None
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            reason = stale_reason(trial, now, self.grace_period, self.worker, self.in_flight)
            if reason is None:
                continue
            try:
                if study_id is None:
                    study_id = storage.get_study_id_from_name(study.study_name)
                trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
                storage.set_trial_user_attr(trial_id, "reason", f"stale: {reason}")
                storage.set_trial_user_attr(trial_id, "status", "stale")
                tell(study, trial.number, TrialState.FAIL)
            except Exception as e:  # another worker failed or finished it first
                log.debug("stale trial %d: %s", trial.number, e)
                continue
            log.warning("trial %d marked failed: %s", trial.number, reason)

    def _overrides(
        self,
        trial: optuna.Trial,
        fixed: list[str],
        by_name: Mapping[str, Param],
        study: optuna.Study,
        url: str | None,
    ) -> list[str]:
        assert self.config is not None
        task = list(fixed)
        for name, value in trial.params.items():
            param = by_name.get(name)
            task.append(param.override(value) if param else f"{name}={render_value(value)}")
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        subdir = f"trial_{trial.number:04d}"
        suffix = 1
        while (sweep_dir / subdir).exists():  # a sweep dir reused by another study
            suffix += 1
            subdir = f"trial_{trial.number:04d}_{suffix}"
        trial.set_user_attr("worker", self.worker)
        trial.set_user_attr("heartbeat_at", _now().isoformat())
        trial.set_user_attr("overrides", task)
        trial.set_user_attr("run_dir", os.path.abspath(sweep_dir / subdir))
        hydra = [
            f"hydra.sweep.subdir={subdir}",
            f"++hydra.job.env_set.{TRIAL_ENV}='{trial.number}'",
            f"hydra.sweeper.study_name={quote(study.study_name)}",
        ]
        if url is not None:
            hydra.append(f"hydra.sweeper.storage={quote(url)}")
        return task + hydra

    def _compose(
        self, study: optuna.Study, batch: list[tuple[optuna.Trial, list[str]]]
    ) -> tuple[list[tuple[optuna.Trial, list[str]]], int]:
        """Compose each trial's config now: one that fails is told FAIL and not launched."""
        assert self.hydra_context is not None and self.config is not None
        ok, failed = [], 0
        for trial, overrides in batch:
            try:
                self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            except Exception as e:
                reason = f"config: {_one_line(e)}"
                trial.set_user_attr("reason", reason)
                trial.set_user_attr("status", "failed")
                tell(study, trial, TrialState.FAIL)
                self.in_flight.discard(trial.number)
                log.warning("trial %d failed: %s", trial.number, reason)
                failed += 1
            else:
                ok.append((trial, overrides))
        return ok, failed

    def _tell(self, study: optuna.Study, trial: optuna.Trial, ret: JobReturn, n: int) -> int:
        """Tell the job's outcome; returns 1 if the trial failed."""
        run_dir = None
        if ret.hydra_cfg is not None:
            run_dir = Path(ret.hydra_cfg.hydra.runtime.output_dir)
        record = job_record(run_dir)
        attrs = record_attrs(record)
        status = (record or {}).get("status")
        reason = (record or {}).get("reason")
        values = None
        if ret.status == JobStatus.FAILED:
            # The exception the job raised (JobReturn.return_value would re-raise it and print
            # "Error executing job", which is wrong for a pruned trial).
            error = ret._return_value
            if isinstance(error, optuna.TrialPruned):
                state, reason = TrialState.PRUNED, reason or _one_line(error) or "pruned"
            else:
                state, reason = TrialState.FAIL, f"{type(error).__name__}: {_one_line(error)}"
        elif status in ("failed", "diverged"):
            state, reason = TrialState.FAIL, f"{status}: {reason}"
        elif status == "pruned":
            state = TrialState.PRUNED
        else:
            values, why = objective_values(ret.return_value, n)
            state = TrialState.COMPLETE if why is None else TrialState.FAIL
            reason = reason if why is None else f"objective {why}"
        attrs.setdefault(
            "status", {TrialState.COMPLETE: "completed"}.get(state, state.name.lower())
        )
        if reason:
            attrs["reason"] = str(reason)
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        tell(study, trial, state, values)
        self.in_flight.discard(trial.number)
        if state == TrialState.COMPLETE:
            assert values is not None
            shown = ", ".join(f"{v:.6g}" for v in values)
            log.info("trial %d complete: %s (%s)", trial.number, shown, _params_text(trial.params))
        else:
            log.warning("trial %d %s: %s", trial.number, state.name.lower(), reason)
        return int(state == TrialState.FAIL)

    def _fail_unfinished(
        self, study: optuna.Study, trials: Sequence[optuna.Trial], error: BaseException
    ) -> None:
        """Never leave a trial RUNNING when the sweep stops (Ctrl-C, a launcher error)."""
        for trial in trials:
            if trial.number not in self.in_flight:
                continue
            try:
                trial.set_user_attr("reason", f"interrupted: {type(error).__name__}")
                trial.set_user_attr("status", "interrupted")
                tell(study, trial, TrialState.FAIL)
            except Exception as e:
                log.debug("could not fail trial %d: %s", trial.number, e)

    # ------------------------------------------------------------ results

    def _retrain_command(self, trial: FrozenTrial) -> str | None:
        overrides = trial.user_attrs.get("overrides")
        if not isinstance(overrides, list):
            return None
        assert self.config is not None
        argv = ["python", sys.argv[0] or "experiments/run.py", *map(str, overrides)]
        # Hydra adds hydra.mode=MULTIRUN for -m; without it, the config itself asks for a
        # multirun (like lightning-hydra-template's hparams_search), which a retrain must undo.
        if "hydra.mode=MULTIRUN" not in self.config.hydra.overrides.hydra:
            argv.append("hydra.mode=RUN")
        return " ".join(map(shell_quote, argv))

    def _describe(self, trial: FrozenTrial) -> dict[str, Any]:
        out: dict[str, Any] = {"number": trial.number}
        if len(trial.values or []) > 1:
            out["values"] = list(trial.values)
        else:
            out["value"] = trial.value
        out["params"] = dict(trial.params)
        for key in (
            "run_dir",
            "test_acc",
            "best_val_acc",
            "best_test_acc",
            "epochs_run",
            "wall_seconds",
        ):
            if key in trial.user_attrs:
                out[key] = trial.user_attrs[key]
        command = self._retrain_command(trial)
        if command:
            out["retrain"] = command
        return out

    def _report(self, study: optuna.Study, url: str | None, directions: list[str]) -> str | None:
        """Print and write the best trial (or Pareto front); the error message if none completed."""
        assert self.config is not None
        trials = study.get_trials(deepcopy=False)
        counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
        result: dict[str, Any] = {
            "name": "optuna",
            "study_name": study.study_name,
            "storage": url,
            "directions": directions,
            "n_trials": self.n_trials,
            "trials": {k: v for k, v in counts.items() if v},
        }
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        message = None
        if not complete:
            message = (
                f"no trial of study {study.study_name!r} completed "
                f"({', '.join(f'{v} {k}' for k, v in result['trials'].items()) or 'no trials'}); "
                "see each trial's `reason` user attribute"
            )
            result["best_trial"] = None
        elif len(directions) == 1:
            best = self._describe(study.best_trial)
            result.update(best_value=best["value"], best_params=best["params"], best_trial=best)
            log.info(
                "Best trial %d of study %r: value %.6g (%s)\n  run dir: %s\n  retrain: %s",
                best["number"],
                study.study_name,
                best["value"],
                _params_text(best["params"]),
                best.get("run_dir"),
                best.get("retrain"),
            )
        else:
            pareto = [self._describe(t) for t in study.best_trials]
            result["pareto_front"] = pareto
            log.info("Pareto front of study %r (%d trials):", study.study_name, len(pareto))
            for best in pareto:
                log.info(
                    "  trial %d: values %s (%s)\n    run dir: %s\n    retrain: %s",
                    best["number"],
                    best["values"],
                    _params_text(best["params"]),
                    best.get("run_dir"),
                    best.get("retrain"),
                )
        path = Path(str(self.config.hydra.sweep.dir)) / "optimization_results.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(result), path)
        log.info("Study summary written to %s", path)
        return message


def _params_text(params: Mapping[str, Any]) -> str:
    return ", ".join(
        f"{k}={v!r}"
        if isinstance(v, str)
        else f"{k}={v:.6g}"
        if isinstance(v, float)
        else f"{k}={v}"
        for k, v in params.items()
    )
