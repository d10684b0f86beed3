"""Telling: a job's return value and result.json record become the trial's state, values and
user attributes (a job that raises, returns something other than a finite number, or leaves a
record with status failed/diverged is told FAIL with a `reason`); a sweep stopped by a signal or
an error tells its unfinished trials FAIL with the reason.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobReturn, JobStatus
from optuna.trial import FrozenTrial, TrialState

from mnist_lab.job import (
    Objective,
    StorageUnavailable,
    is_unavailable,
    one_line,
    read_record,
    stop_status,
)

log = logging.getLogger(__name__)


def objective_values(value: Any, n_objectives: int) -> tuple[list[float] | None, str | None]:
    """(values, None) for a finite number per objective, else (None, why not)."""
    if n_objectives == 1:
        items = [value]
    elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        items = list(value)
        if len(items) != n_objectives:
            return None, f"returned {len(items)} values for {n_objectives} objectives"
    else:
        return None, f"returned {_short(value)}, expected {n_objectives} numbers"
    values = []
    for item in items:
        if isinstance(item, (str, bytes, bool)) or not hasattr(item, "__float__"):
            return None, f"returned {_short(item)}, not a number"
        try:
            number = float(item)
        except (TypeError, ValueError) as e:
            return None, f"returned {_short(item)}, not a number ({e})"
        if not math.isfinite(number):
            return None, f"returned {number}"
        values.append(number)
    return values, None


def job_record(run_dir: Path | None) -> dict[str, Any] | None:
    """The job's result.json, or None (no folder, or no readable record)."""
    return None if run_dir is None else read_record(run_dir, warn=False)


def record_attrs(record: Mapping[str, Any] | None) -> dict[str, Any]:
    """The trial's user attributes from a job's result.json (docs/ARCHITECTURE.md)."""
    if not record:
        return {}
    final, best = record.get("final") or {}, record.get("best") or {}
    attrs = {
        "status": record.get("status"),
        "test_acc": final.get("test/acc"),
        "val_acc": final.get("val/acc"),
        "best_epoch": best.get("epoch"),
        "best_val_acc": best.get("val/acc"),
        "best_test_acc": best.get("test/acc"),
        "epochs_run": record.get("epochs_run"),
        "wall_seconds": record.get("wall_seconds"),
        "run_dir": record.get("run_dir"),
    }
    return {k: v for k, v in attrs.items() if v is not None}


def tell(
    study: optuna.Study,
    trial: optuna.Trial | int,
    state: TrialState,
    values: list[float] | None = None,
) -> None:
    """study.tell, tolerating GridSampler's `study.stop()` (only allowed inside optimize())."""
    try:
        study.tell(trial, values=values, state=state, skip_if_finished=True)
    except RuntimeError as e:  # the state is stored before the sampler's hook raises
        if "Study.stop" not in str(e):
            raise


def record_values(record: Mapping[str, Any], n_objectives: int) -> tuple[list[float] | None, str]:
    """The values a completed job's task returned, as its record states them (`Objective.values`:
    the record's objective, val/acc for a record without one, the task's own rule)."""
    items = Objective.of((record.get("config") or {}).get("objective")).values(record)
    values, why = objective_values(items[0] if len(items) == 1 else list(items), n_objectives)
    return values, "" if why is None else f"record: objective {why}"


@dataclass
class Outcome:
    """How a trial ends: its state, values (COMPLETE only) and reason (None when complete)."""

    state: TrialState
    values: list[float] | None = None
    reason: str | None = None


def record_outcome(record: Mapping[str, Any] | None, n_objectives: int) -> Outcome | None:
    """The outcome a job's record states when the job finished (completed, failed, diverged,
    pruned); None for a job that did not (no record, running, stopped by a signal, killed)."""
    status = (record or {}).get("status")
    if status == "completed":
        values, why = record_values(record, n_objectives)
        return (
            Outcome(TrialState.COMPLETE, values) if values else Outcome(TrialState.FAIL, None, why)
        )
    if status in ("failed", "diverged"):
        return Outcome(TrialState.FAIL, None, f"{status}: {record.get('reason')}")
    if status == "pruned":
        return Outcome(TrialState.PRUNED, None, record.get("reason") or "pruned")
    return None


def tell_outcome(
    study: optuna.Study,
    trial: optuna.Trial | FrozenTrial,
    outcome: Outcome,
    attrs: dict[str, Any],
    set_attr: Callable[[str, Any], None],
) -> None:
    """Store the user attributes (`status` and `reason` from the outcome unless given) with
    `set_attr` (a live trial's `set_user_attr`, or the storage's for a trial of a dead sweeper)
    and tell the outcome."""
    state = outcome.state
    attrs.setdefault("status", {TrialState.COMPLETE: "completed"}.get(state, state.name.lower()))
    if outcome.reason:
        attrs["reason"] = str(outcome.reason)
    for key, value in attrs.items():
        set_attr(key, value)
    tell(study, trial.number, state, outcome.values)
    if state == TrialState.COMPLETE:
        assert outcome.values is not None
        shown = ", ".join(f"{v:.6g}" for v in outcome.values)
        log.info("trial %d complete: %s (%s)", trial.number, shown, params_text(trial.params))
    else:
        log.warning("trial %d %s: %s", trial.number, state.name.lower(), outcome.reason)


def tell_job(study: optuna.Study, trial: optuna.Trial, ret: JobReturn, n_objectives: int) -> bool:
    """Tell the job's outcome with the record's facts as user attributes; True if it failed.

    The task's return value gives the values; a record that says the job failed, diverged or was
    pruned wins over a number returned; a job that raised is FAIL (PRUNED for TrialPruned).
    """
    run_dir = None
    if ret.hydra_cfg is not None:
        run_dir = Path(ret.hydra_cfg.hydra.runtime.output_dir)
    record = job_record(run_dir)
    # A completed job's values are what its task returned; any other finished record wins.
    completed = (record or {}).get("status") == "completed"
    stated = None if completed else record_outcome(record, n_objectives)
    if ret.status == JobStatus.FAILED:
        # The exception the job raised (JobReturn.return_value would re-raise it and print
        # "Error executing job", which is wrong for a pruned trial).
        error = ret._return_value
        if isinstance(error, optuna.TrialPruned):
            reason = (record or {}).get("reason") or one_line(error) or "pruned"
            outcome = Outcome(TrialState.PRUNED, None, reason)
        else:
            outcome = Outcome(TrialState.FAIL, None, f"{type(error).__name__}: {one_line(error)}")
    elif stated is not None:
        outcome = stated
    else:
        values, why = objective_values(ret.return_value, n_objectives)
        reason = (record or {}).get("reason") if why is None else f"objective {why}"
        outcome = Outcome(TrialState.COMPLETE if why is None else TrialState.FAIL, values, reason)
    tell_outcome(study, trial, outcome, record_attrs(record), trial.set_user_attr)
    return outcome.state == TrialState.FAIL


def tell_stopped(study: optuna.Study, trials: Sequence[optuna.Trial], error: BaseException) -> None:
    """Tell the trials a stopped sweep leaves unfinished, so none stays RUNNING.

    A trial whose job finished before the stop is told what its record says (COMPLETE with its
    values, or why it failed): its record is the truth, whatever the launcher. The others are
    FAIL: Ctrl-C and SIGTERM (`mnist_lab.signals`) give the status `interrupted` /
    `terminated`, a storage that stopped answering the reason `storage unavailable` (stored if
    it answers again), any other error (a launcher's) `failed` with the error as the reason.
    """
    if isinstance(error, KeyboardInterrupt):
        status, _ = stop_status(error)
        stopped = Outcome(TrialState.FAIL, None, f"{status}: {type(error).__name__}")
    elif is_unavailable(error) or isinstance(error, StorageUnavailable):
        status, stopped = "failed", Outcome(TrialState.FAIL, None, "storage unavailable")
    else:
        status = "failed"
        stopped = Outcome(
            TrialState.FAIL, None, f"sweep stopped: {type(error).__name__}: {one_line(error)}"
        )
    n_objectives = len(study.directions)
    for trial in trials:
        try:
            run_dir = trial.user_attrs.get("run_dir")
            record = job_record(Path(run_dir)) if run_dir else None
            outcome = record_outcome(record, n_objectives)
            if outcome is None:
                outcome, attrs = stopped, {"status": status}
            else:
                attrs = record_attrs(record)
            tell_outcome(study, trial, outcome, attrs, trial.set_user_attr)
        except Exception as e:
            log.debug("could not tell trial %d: %s", trial.number, e)


def params_text(params: Mapping[str, Any]) -> str:
    """`key=value, ...` for log lines (floats to 6 significant digits, strings quoted)."""
    return ", ".join(
        f"{k}={v!r}"
        if isinstance(v, str)
        else f"{k}={v:.6g}"
        if isinstance(v, float)
        else f"{k}={v}"
        for k, v in params.items()
    )


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
