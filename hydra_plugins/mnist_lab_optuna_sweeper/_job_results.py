"""Job results: a job's return value and result.json record become the trial's state, values and
user attributes (a job that raises, returns something other than a finite number, or leaves a
record with status failed/diverged is told FAIL with a `reason`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from mnist_lab.records import read_record


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


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
