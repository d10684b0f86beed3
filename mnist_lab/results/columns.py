"""What the summary's columns mean, shared by the tables and the figures: how a value is written
(as a user types it), accuracies in percent, and the objective a section's runs were selected on
(`config.objective` of their records: the metrics and their directions; records without one were
selected on final validation accuracy, maximised). Test accuracy is reported, never used to choose.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from mnist_lab.records.objective import Objective


def is_accuracy(metric: str) -> bool:
    return metric.endswith("acc")


def metric_label(metric: str) -> str:
    """Accuracies are shown in percent, like the lab's table."""
    return f"{metric} %" if is_accuracy(metric) else metric


def metric_values(runs: pd.DataFrame, metric: str) -> pd.Series:
    values = pd.to_numeric(runs[metric], errors="coerce").astype(float)
    return values * 100 if is_accuracy(metric) else values


def short(column: str) -> str:
    """A column as a reader types it: `config.model.activation` -> `model.activation`."""
    return column.removeprefix("config.")


def missing(value) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def typed(value) -> str:
    """A value as a user types it on the command line: `3000` (not `3e+03` or `3000.0`),
    `false`, `[64,64]`, a sampled `0.01208`; "" when missing."""
    if missing(value):
        return ""
    if isinstance(value, bool | np.bool_):
        return str(bool(value)).lower()
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.4g}"
    if isinstance(value, str) and value.startswith("["):
        try:
            return json.dumps(json.loads(value), separators=(",", ":"))
        except ValueError:
            return value
    return str(value)


def objective_columns(objective: Objective, runs: pd.DataFrame) -> list[str]:
    """The summary.csv columns of an objective's metrics: a record's `final.<metric>`, or a
    top-level key such as `param_count`."""
    return [f"final.{m}" if f"final.{m}" in runs else m for m in objective.metrics]


DEFAULT_OBJECTIVE = Objective.of(None)


def _listed(value) -> tuple[str, ...] | None:
    """A record's list (JSON text in the table), as a tuple of strings."""
    try:
        items = json.loads(value) if isinstance(value, str) else value
    except ValueError:
        return None
    return tuple(map(str, items)) if isinstance(items, list) and items else None


def objectives(runs: pd.DataFrame) -> pd.Series:
    """Each run's objective, from its `config.objective` (the default where it has none)."""
    metrics = runs.get("config.objective.metrics", pd.Series(None, index=runs.index, dtype=object))
    directions = runs.get("config.objective.directions", pd.Series(None, index=runs.index))
    found = [
        Objective(m, d) if m and d and len(m) == len(d) else DEFAULT_OBJECTIVE
        for m, d in zip(metrics.map(_listed), directions.map(_listed), strict=True)
    ]
    return pd.Series(found, index=runs.index, dtype=object)
