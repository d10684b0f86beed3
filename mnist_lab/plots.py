"""PNG figures next to the summary tables: learning curves, an accuracy heatmap, accuracy vs time.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, so no window, no global figure
state, and no change to the backend of a session that imports this). PNGs carry no software or
date metadata, so the same runs give the same bytes. A figure with nothing to show is skipped
with one log line (returned as None) rather than failing the summary.
"""

from __future__ import annotations

import io
import logging

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from mnist_lab.summary import lower_is_better, metric_label, metric_values

log = logging.getLogger(__name__)

PNG_METADATA = {"Software": None}  # matplotlib's version in the file would differ across installs
MAX_LEGEND = 12  # more runs than this: the lines speak for themselves, a legend would cover them


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buffer, metadata=PNG_METADATA)
    return buffer.getvalue()


def _short(column: str) -> str:
    return column.removeprefix("config.")


def _tick(value) -> str:
    """3 significant digits for sampled floats (an Optuna lr), whole numbers as they are."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def run_labels(runs: pd.DataFrame, by: list[str]) -> pd.Series:
    """Per run_dir, the grouping columns (and seed) that differ between the runs, else its id."""
    varying = [c for c in dict.fromkeys([*by, "seed"]) if runs[c].nunique(dropna=False) > 1]
    if not varying:
        return pd.Series(runs["run_id"].to_numpy(), index=runs["run_dir"])
    parts = [_short(c) + "=" + runs[c].map(_tick) for c in varying]  # map: "nan", not a gap
    return pd.Series(
        pd.concat(parts, axis=1).agg(" ".join, axis=1).to_numpy(), index=runs["run_dir"]
    )


def learning_curves(runs: pd.DataFrame, epochs: pd.DataFrame, by: list[str]) -> bytes | None:
    """Train (solid) and test (dashed) loss per epoch, as in the lab report; test accuracy."""
    curves = epochs.reindex(columns=["run_dir", "epoch", "train/loss", "test/loss", "test/acc"])
    if curves[["train/loss", "test/loss", "test/acc"]].isna().all().all():
        log.info("learning curves skipped: no run has a measured epoch")
        return None
    labels = run_labels(runs, by)
    fig = Figure(figsize=(12, 4.5))
    ax_loss, ax_acc = fig.subplots(1, 2)
    by_run = dict(tuple(curves.groupby("run_dir", sort=False)))
    shown = [run_dir for run_dir in runs["run_dir"] if run_dir in by_run]
    for i, run_dir in enumerate(shown):
        run, color = by_run[run_dir].sort_values("epoch"), f"C{i % 10}"
        ax_loss.plot(run["epoch"], run["train/loss"], color=color)
        ax_loss.plot(run["epoch"], run["test/loss"], "--", color=color)
        ax_acc.plot(run["epoch"], run["test/acc"] * 100, color=color, label=labels[run_dir])
    styles = [
        Line2D([], [], color="k", label="train"),
        Line2D([], [], color="k", ls="--", label="test"),
    ]
    ax_loss.legend(handles=styles)
    losses = curves[["train/loss", "test/loss"]].stack()
    if losses.min() > 0 and losses.max() / losses.min() > 100:  # one blown-up run hides the rest
        ax_loss.set_yscale("log")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Training and test loss")
    ax_acc.set(
        xlabel="epoch", ylabel="test accuracy (%)", title=f"Test accuracy ({len(shown)} runs)"
    )
    if len(shown) <= MAX_LEGEND:
        ax_acc.legend(fontsize=8)
    for ax in (ax_loss, ax_acc):
        ax.grid(True)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    fig.tight_layout()
    return _png(fig)


def heatmap(runs: pd.DataFrame, rows: str, columns: str, metric: str) -> bytes | None:
    """Mean metric of the completed runs over two hyperparameters (pivot_table)."""
    done = runs[runs["status"] == "completed"]
    table = done.assign(_value=metric_values(done, metric)).pivot_table(
        index=rows, columns=columns, values="_value", aggfunc="mean"
    )
    if table.empty or table.isna().all().all():
        log.info("heatmap skipped: no completed run with %s, %s and %s", rows, columns, metric)
        return None
    values = table.to_numpy(dtype=float)
    fig = Figure(figsize=(2 + 1.1 * values.shape[1], 1.8 + 0.6 * values.shape[0]))
    ax = fig.subplots()
    reverse = lower_is_better(metric)  # the better end is always the bright one
    image = ax.imshow(values, cmap="viridis_r" if reverse else "viridis", aspect="auto")
    ax.set_xticks(range(values.shape[1]), [_tick(v) for v in table.columns])
    ax.set_yticks(range(values.shape[0]), [_tick(v) for v in table.index])
    for (r, c), value in pd.DataFrame(values).stack().items():
        bright = (image.norm(value) > 0.5) != reverse  # dark text on the bright cells
        color = "black" if bright else "white"
        ax.text(c, r, f"{value:.4g}", ha="center", va="center", color=color, fontsize=9)
    ax.set(xlabel=_short(columns), ylabel=_short(rows), title=f"{metric_label(metric)} (mean)")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return _png(fig)


def metric_vs_time(runs: pd.DataFrame, metric: str, by: list[str]) -> bytes | None:
    """Each completed run's metric against its wall time: what a better result cost."""
    done = runs[runs["status"] == "completed"]
    points = pd.DataFrame(
        {
            "seconds": pd.to_numeric(done["wall_seconds"], errors="coerce").to_numpy(dtype=float),
            "value": metric_values(done, metric).to_numpy(),
            "label": run_labels(done, by).to_numpy() if len(done) else [],
        }
    ).dropna()
    if points.empty:
        log.info("%s vs wall time skipped: no completed run with both measured", metric)
        return None
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    ax.scatter(points["seconds"], points["value"])
    if len(points) <= MAX_LEGEND:
        for point in points.itertuples():
            ax.annotate(point.label, (point.seconds, point.value), fontsize=7, alpha=0.8)
    ax.set(xlabel="wall time per run (s)", ylabel=metric_label(metric), title="Result vs cost")
    ax.grid(True)
    fig.tight_layout()
    return _png(fig)


def render(runs, epochs, *, metric: str, by: list[str], axes: list[str]) -> dict:
    """{file name: PNG bytes, or None for a figure skipped (its old file is then removed)}."""
    rows, columns = axes
    name = f"heatmap_{_short(rows)}_{_short(columns)}.png".replace("/", "-")
    drawers = {
        "learning_curves.png": lambda: learning_curves(runs, epochs, by),
        name: lambda: heatmap(runs, rows, columns, metric),
        "accuracy_vs_time.png": lambda: metric_vs_time(runs, metric, by),
    }
    return {file: _safely(file, draw) for file, draw in drawers.items()}


def _safely(file: str, draw) -> bytes | None:
    """A figure that cannot be drawn (odd values) is skipped with a log line, never fatal."""
    try:
        return draw()
    except (TypeError, ValueError) as e:
        log.warning("%s skipped: %s", file, e)
        return None
