"""One job lifecycle, for a job run alone (the Hydra task `run_task`: a group of one) and for the
members of a stack the batched launcher trains (`run_jobs`).

Each job, in its own Hydra job context: its record is opened, its knobs and config checked, its
data, model and learner built (`mnist_lab.job.build`), its epoch hooks set (the record, the Optuna
reporter, the best-weights keeper); one epoch loop trains the group; each job's end becomes its
outcome under the failure policy (`RecordedRun.conclude`, docs/ARCHITECTURE.md): every run leaves
a record; in a single run a bad value ends the process with one line naming the key; in a
multirun the job is recorded `failed` (or `diverged`) and returns NaN, so the other jobs still run.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from mnist_lab.config.checks import parse_switch
from mnist_lab.config.knobs import check_knobs
from mnist_lab.errors import LabError, OutputError
from mnist_lab.job.build import Built, build, model_facts, trainer_for
from mnist_lab.job.trial_reporting import epoch_reporter, trial_identity
from mnist_lab.job.weights import WeightKeeper, resolve_mode
from mnist_lab.job.worker_share import identity as worker_identity
from mnist_lab.records.run_record import RunRecord
from mnist_lab.signals import install_in_worker, stop_status
from mnist_lab.train.loop import Diverged

log = logging.getLogger(__name__)


@dataclass
class Job:
    """A job as its launcher hands it over: its task config, and a context that makes it the
    current Hydra job (its HydraConfig, log file, environment) whenever its code runs."""

    cfg: DictConfig
    context: Callable[[], AbstractContextManager] = nullcontext


def _is_pruned(error: BaseException) -> bool:
    optuna = sys.modules.get("optuna")
    return optuna is not None and isinstance(error, optuna.TrialPruned)


def run_facts(cfg: DictConfig, hydra_cfg) -> dict:
    """What the record knows before training: where and how the job was launched, its config."""
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    return {
        "run_dir": str(Path(hydra_cfg.runtime.output_dir)),
        "job": {
            "name": hydra_cfg.job.name,
            "num": hydra_cfg.job.get("num") if multirun else None,
            "sweep_dir": str(Path(hydra_cfg.sweep.dir).resolve()) if multirun else None,
            "multirun": multirun,
        },
        "trial": trial_identity(),
        "worker": worker_identity(),  # {index, workers} in a sweep's worker process
        "overrides": list(hydra_cfg.overrides.task),
        # The option picked in each config group (model=resmlp, optimizer=adam, ...).
        "choices": {
            group: option
            for group, option in hydra_cfg.runtime.choices.items()
            if not group.startswith("hydra/")
        },
        "config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        "torch_version": torch.__version__,
        # Known once the model is built (model_facts); null in the record of a run that failed before.
        "param_count": None,
        "device": None,
        "device_name": None,
        "threads": None,
        "backward": None,  # autograd | manual (mnist_lab.train.stacked's step) | own (the model's)
        "cuda_graph": None,  # whether the step ran as a captured CUDA graph (null: not tried)
        "stopped_early": None,
        "weights": None,  # {"best", "final"}: the weight files a completed run wrote
        "batched": None,  # {"k", "group", "jobs"}: the stack the batched launcher trained it in
    }


class RecordedRun:
    """One job from its record to its outcome; each step runs in the job's context."""

    def __init__(self, job: Job, batched: dict | None):
        self.job = job
        with job.context():
            hydra_cfg = HydraConfig.get()
            self.multirun = hydra_cfg.mode == RunMode.MULTIRUN
            self.run_dir = Path(hydra_cfg.runtime.output_dir)
            facts = {**run_facts(job.cfg, hydra_cfg), "batched": batched}
            self.record = RunRecord(self.run_dir, facts)
        self.started = time.perf_counter()
        self.built: Built | None = None
        self.keeper: WeightKeeper | None = None

    def build(self) -> None:
        """Check the knobs and the config, build the job, give it its epoch hooks."""
        cfg, record = self.job.cfg, self.record
        with self.job.context():
            check_knobs(cfg, record.facts.get("overrides", []))
            self.built = built = build(cfg, self.multirun)
            model = built.member.learner.model
            record.facts.update(model_facts(model, built.data))
            mode = resolve_mode(cfg.trainer.save_weights.value, self.multirun)
            self.keeper = WeightKeeper(model, mode, built.objective)
            hooks = [record.add_epoch]
            reporter = epoch_reporter(cfg.trainer.epochs, built.objective.metric)
            if reporter is not None:
                hooks.append(reporter)
            built.member.hooks = [*hooks, self.keeper]
            built.member.context = self.job.context

    def _complete(self):
        """A completed job's last facts -- weights written before the record says `completed`,
        so a record never names a missing file -- and the objective's value(s) it returns."""
        record, built = self.record, self.built
        record.facts["stopped_early"] = built.member.stopped_early
        record.facts["weights"] = self.keeper.save(self.run_dir, record.summary()["epochs_run"])
        figures = parse_switch("trainer.save_figures", built.cfg.trainer.save_figures)
        if figures is True or (figures == "auto" and not self.multirun):
            from mnist_lab.job.figures import save_figures

            save_figures(built.member.learner.model, built.data, self.run_dir)
        values = built.objective.values({**record.facts, **record.summary()})
        return values[0] if len(values) == 1 else values

    def settle(self, error: BaseException | None):
        """The job's outcome: its return value, or the exception it raises (a pruned trial, a
        single run's exit). A KeyboardInterrupt propagates once the record says so."""
        with self.job.context():
            value = math.nan
            if error is None:
                try:
                    value = self._complete()
                except KeyboardInterrupt:
                    raise
                except BaseException as e:
                    error = e
            try:
                return self.conclude(error, value)
            except KeyboardInterrupt:
                raise
            except OutputError as e:
                return _unwritable(self.multirun, e)
            except BaseException as e:
                return e

    def conclude(self, error: BaseException | None = None, value=math.nan):
        """The failure policy: returns what the task returns, or raises what the job raises."""
        record, run_dir, multirun = self.record, self.run_dir, self.multirun
        wall = time.perf_counter() - self.started
        if error is None:
            record.finish("completed", wall_seconds=wall)
            if not multirun:
                built = self.built
                metric, setting = built.objective.metric, built.cfg.trainer.save_weights.value
                print(where_it_is(run_dir, record.facts["weights"], metric, setting), flush=True)
            return value
        if isinstance(error, Diverged):
            record.finish("diverged", str(error), wall_seconds=wall)
            log.error("run diverged: %s (record in %s)", error, run_dir)
            if not multirun:  # docs/ARCHITECTURE.md: a single run that diverges exits non-zero
                raise SystemExit(3) from None
            return math.nan
        e = error
        reason = str(e) if isinstance(e, LabError) else f"{type(e).__name__}: {e}"
        status = "pruned" if _is_pruned(e) else "failed"
        if isinstance(e, KeyboardInterrupt):
            status, _ = stop_status(e)
            reason = f"stopped by {e}" if str(e) else status
        # Bad input found before epoch 0: `refused`, never a result; the results tables skip it.
        refused = isinstance(e, LabError) and not record.rows
        try:
            record.finish(status, reason, wall_seconds=wall, refused=refused)
        except OutputError:
            if not isinstance(e, KeyboardInterrupt):
                raise
        if status == "pruned" or isinstance(e, KeyboardInterrupt):
            raise e
        if multirun:  # bad input: one line; anything else is a bug worth its traceback in run.log
            exc_info = (type(e), e, e.__traceback__) if not isinstance(e, LabError) else False
            log.error("job failed: %s (record in %s)", reason, run_dir, exc_info=exc_info)
            return math.nan
        if isinstance(e, LabError):
            log.error("%s", reason)
            raise SystemExit(2) from None
        raise e


def _shown(path: Path) -> str:
    """A path as the user types it: relative to the working directory when it lies under it."""
    relative = os.path.relpath(path)
    return relative if not relative.startswith("..") else str(path)


def where_it_is(run_dir: Path, weights: dict, metric: str, setting: str) -> str:
    """A single run's last lines: its folder, its weight files and the command that evaluates
    them (a study's report says the same of its best trial)."""
    folder = _shown(run_dir)
    best, final = weights.get("best"), weights.get("final")
    if best is None and final is None:
        saved = f"none (trainer.save_weights={setting})"
    elif best == final or final is None or best is None:
        when = "best on " + metric if final is None else "last epoch"
        when += ", also the best on " + metric if best == final else ""
        saved = f"{os.path.join(folder, best or final)} ({when})"
    else:
        saved = (
            f"{os.path.join(folder, best)} (best on {metric}), "
            f"{os.path.join(folder, final)} (last epoch)"
        )
    lines = [f"run folder: {folder} (result.json, metrics.csv, run.log)", f"weights: {saved}"]
    command = evaluate_command(folder) if best or final else None
    if command:
        lines.append(f"evaluate: {command}")
    return "\n".join(lines)


def evaluate_command(run_dir: str) -> str | None:
    """`python experiments/evaluate.py RUN_DIR`, when the task's entry point has that sibling: a
    single run's last line, and a study's report of its best trial."""
    evaluate = Path(sys.argv[0] or "experiments/run.py").with_name("evaluate.py")
    if not evaluate.is_file():
        return None
    return shlex.join(["python", _shown(evaluate.resolve()), run_dir])


def _unwritable(multirun: bool, error: OutputError):
    """A job whose record cannot be written: one line; a single run exits 2, a sweep goes on."""
    if not multirun:
        log.error("%s", error)
        return SystemExit(2)
    log.error("job failed: %s", error)
    return math.nan


def run_jobs(jobs: list[Job], batched: dict | None = None) -> list:
    """Every job's life, its training shared by one epoch loop; returns each job's return value,
    or the exception it raises.

    `batched`: the jobs are a stack of the batched launcher (`group`, `jobs`), which goes into
    every record as `batched` with `k`; they train as one stacked step. Otherwise the jobs train
    alone, as `trainer.backward` says (one job: `run_task`).
    """
    group = None if batched is None else {"k": len(jobs), **batched}
    runs: dict[int, RecordedRun] = {}
    outcomes: dict[int, object] = {}
    try:
        for j, job in enumerate(jobs):
            try:
                runs[j] = RecordedRun(job, group)
            except OutputError as e:
                with job.context():
                    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
                    outcomes[j] = _unwritable(multirun, e)
                continue
            try:
                runs[j].build()
            except KeyboardInterrupt:
                raise
            except BaseException as e:  # bad input, found before epoch 0: this job only
                outcomes[j] = runs[j].settle(e)
        ready = {runs[j].built.member: j for j in runs if j not in outcomes}
        if ready:
            trainer = trainer_for([runs[j].built for j in ready.values()], group is not None)
            for j in ready.values():
                runs[j].record.facts["backward"] = trainer.learner.backward

            def end(member) -> None:
                j = ready[member]
                runs[j].record.facts["cuda_graph"] = trainer.captured
                outcomes[j] = runs[j].settle(member.error)

            trainer.on_stop = end
            trainer.fit()
            for member in trainer.alive:
                end(member)
    # Ctrl-C, or a fault of the shared step: every job's record says so.
    except BaseException as e:
        for j, run in runs.items():
            if j not in outcomes:
                try:
                    outcomes[j] = run.settle(e)
                except KeyboardInterrupt:
                    pass
        if isinstance(e, KeyboardInterrupt):
            raise
    return [outcomes[j] for j in range(len(jobs))]


def run_task(cfg: DictConfig):
    """The project's Hydra task function: one job, a group of one. Returns the objective's value
    at the last epoch (a tuple for several objectives), NaN for a failed job of a multirun."""
    install_in_worker()
    (outcome,) = run_jobs([Job(cfg)])
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def project_task(function):
    """Declares an entry point's `@hydra.main` function to be `run_task` and nothing more
    (experiments/run.py's), so the batched launcher may train its jobs through `run_jobs` instead
    of calling it once per job. (Hydra finds `conf/` from the decorated function's file, so the
    entry point needs a function of its own.)"""
    function.project_task = run_task
    return function


def is_project_task(function) -> bool:
    """Whether the batched launcher may stack this task function's jobs (see `project_task`)."""
    return getattr(function, "project_task", None) is run_task
