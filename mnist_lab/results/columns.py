"""What the summary's metric columns mean, shared by the tables (summary.py) and the figures
(summary_plots.py): accuracies are shown in percent, losses and times are better when lower, and
the selection metric is final validation accuracy (what the task returns and sweepers maximise;
test accuracy is reported beside it, never used to choose)."""

from __future__ import annotations

import pandas as pd

SELECT = "final.val/acc"
LOWER_IS_BETTER = ("loss", "seconds", "epochs_to_target", "param_count")


def is_accuracy(metric: str) -> bool:
    return metric.endswith("acc")


def metric_label(metric: str) -> str:
    """Accuracies are shown in percent, like the lab's table."""
    return f"{metric} %" if is_accuracy(metric) else metric


def metric_values(runs: pd.DataFrame, metric: str) -> pd.Series:
    values = pd.to_numeric(runs[metric], errors="coerce").astype(float)
    return values * 100 if is_accuracy(metric) else values


def lower_is_better(metric: str) -> bool:
    return any(word in metric for word in LOWER_IS_BETTER)


def short(column: str) -> str:
    """A column as a reader types it: `config.model.activation` -> `model.activation`."""
    return column.removeprefix("config.")


def tick(value) -> str:
    """3 significant digits for sampled floats (an Optuna lr), whole numbers as they are."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)
