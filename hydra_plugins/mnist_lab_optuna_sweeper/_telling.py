"""Telling: a job's return value and result.json record become the trial's state, values and
user attributes (a job that raises, returns something other than a finite number, or leaves a
record with status failed/diverged is told FAIL with a `reason`); a sweep stopped by a signal or
an error tells its unfinished trials FAIL with the reason.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobReturn, JobStatus
from optuna.trial import TrialState

from mnist_lab.job import one_line, read_record, stop_status

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


def tell_job(study: optuna.Study, trial: optuna.Trial, ret: JobReturn, n_objectives: int) -> bool:
    """Tell the job's outcome with the record's facts as user attributes; True if it failed."""
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
            state, reason = TrialState.PRUNED, reason or one_line(error) or "pruned"
        else:
            state, reason = TrialState.FAIL, f"{type(error).__name__}: {one_line(error)}"
    elif status in ("failed", "diverged"):
        state, reason = TrialState.FAIL, f"{status}: {reason}"
    elif status == "pruned":
        state = TrialState.PRUNED
    else:
        values, why = objective_values(ret.return_value, n_objectives)
        state = TrialState.COMPLETE if why is None else TrialState.FAIL
        reason = reason if why is None else f"objective {why}"
    attrs.setdefault("status", {TrialState.COMPLETE: "completed"}.get(state, state.name.lower()))
    if reason:
        attrs["reason"] = str(reason)
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    tell(study, trial, state, values)
    if state == TrialState.COMPLETE:
        assert values is not None
        shown = ", ".join(f"{v:.6g}" for v in values)
        log.info("trial %d complete: %s (%s)", trial.number, shown, params_text(trial.params))
    else:
        log.warning("trial %d %s: %s", trial.number, state.name.lower(), reason)
    return state == TrialState.FAIL


def tell_stopped(study: optuna.Study, trials: Sequence[optuna.Trial], error: BaseException) -> None:
    """Tell FAIL the trials a stopped sweep leaves unfinished, so none stays RUNNING.

    Ctrl-C and SIGTERM (`mnist_lab.signals`) give the status `interrupted` / `terminated`;
    any other error (a launcher's) gives `failed` with the error as the reason.
    """
    if isinstance(error, KeyboardInterrupt):
        status, _ = stop_status(error)
        reason = f"{status}: {type(error).__name__}"
    else:
        status, reason = "failed", f"sweep stopped: {type(error).__name__}: {one_line(error)}"
    for trial in trials:
        try:
            trial.set_user_attr("reason", reason)
            trial.set_user_attr("status", status)
            tell(study, trial, TrialState.FAIL)
        except Exception as e:
            log.debug("could not fail trial %d: %s", trial.number, e)


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
