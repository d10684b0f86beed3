"""PNG figures next to the summary tables: learning curves, a heatmap, the metric against time.

Drawn on matplotlib's Agg canvas directly (no pyplot, so no window, no global figure state, and
no change to the backend of a session that imports this). PNGs carry no software or date
metadata, so the same runs give the same bytes. A figure with nothing to show is skipped with one
log line (returned as None) rather than failing the summary.

Readable with 3 runs or 300: runs are coloured by recipe (seeds of one recipe share a colour),
each recipe labelled by the keys that differ among the runs; the MAX_LABELLED (9) best recipes (on
validation accuracy) get a colour and a legend entry outside the axes, the others are drawn in
grey under one entry. Accuracy axes are scaled to the second half of each run (where runs are
compared); earlier epochs, epoch 0 (the untrained model) included, may run off the bottom.
"""

from __future__ import annotations

import io
import logging

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from mnist_lab.results.columns import lower_is_better, metric_label, metric_values, short, tick

log = logging.getLogger(__name__)

PNG_METADATA = {"Software": None}  # matplotlib's version in the file would differ across installs
PALETTE = [f"C{i}" for i in range(10) if i != 7]  # tab10 without its grey, kept for the rest
MAX_LABELLED = len(PALETTE)  # recipes with their own colour and legend entry
OTHERS = "0.75"  # grey of the recipes beyond MAX_LABELLED


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(fig)  # attaches the Agg canvas; "tight" keeps a legend placed outside
    fig.savefig(buffer, format="png", metadata=PNG_METADATA, bbox_inches="tight", dpi=100)
    return buffer.getvalue()


def _style(groups: pd.DataFrame, run_dir: str) -> dict:
    rank = int(groups.at[run_dir, "rank"])
    if rank < MAX_LABELLED:
        return {"color": PALETTE[rank], "lw": 1.6, "zorder": 3}
    return {"color": OTHERS, "lw": 0.8, "zorder": 1}


def _legend_handles(groups: pd.DataFrame, shown: list[str], marker: str | None = None) -> list:
    """One entry per coloured recipe (best first, with its run count), one for the grey rest."""
    present = groups.loc[shown].reset_index(names="run_dir")
    counts = present.groupby(["rank", "label"]).size().reset_index(name="runs")
    line = {"marker": marker, "ls": "none"} if marker else {}
    handles = [
        Line2D([], [], color=PALETTE[rank], label=f"{label} ({runs})", **line)
        for rank, label, runs in counts.itertuples(index=False)
        if rank < MAX_LABELLED
    ]
    others = counts[counts["rank"] >= MAX_LABELLED]
    if len(others):
        label = f"{len(others)} other recipes ({int(others['runs'].sum())} runs)"
        handles.append(Line2D([], [], color=OTHERS, label=label, **line))
    return handles


def _place_legend(fig: Figure, ax, handles: list, title: str) -> None:
    """Inside the axes for a few entries, else in a column right of the figure."""
    if not handles:
        return
    if len(handles) <= 3 and max(len(h.get_label()) for h in handles) <= 30:
        ax.legend(handles=handles, fontsize=8, title=title, title_fontsize=8, loc="lower right")
        return
    fig.legend(
        handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, title=title
    )


def _zoom(ax, values: pd.Series, floor: float | None = None) -> None:
    """Scale the y axis to the values, with a margin and a minimal span."""
    values = values.dropna()
    if values.empty:
        return
    low, high = float(values.min()), float(values.max())
    span = max(high - low, 0.5)
    low, high = low - 0.15 * span, high + 0.15 * span
    if floor is not None:
        high = min(high, floor)
    ax.set_ylim(low, high)


def _late(curves: pd.DataFrame) -> pd.Series:
    """The rows from the second half of each run's trained epochs (epoch >= 1)."""
    last = curves["epoch"].where(curves["epoch"] >= 1).groupby(curves["run_dir"]).transform("max")
    return (curves["epoch"] >= 1) & (curves["epoch"] >= np.ceil(last / 2))


def learning_curves(runs: pd.DataFrame, epochs: pd.DataFrame, groups: pd.DataFrame) -> bytes | None:
    """Train (solid) and test (dashed) loss per epoch, as in the lab report; validation accuracy
    per epoch (the selection metric; test accuracy where a run has no validation split)."""
    columns = ["run_dir", "epoch", "train/loss", "test/loss", "val/acc", "test/acc"]
    curves = epochs.reindex(columns=columns)
    if curves[columns[2:]].isna().all().all():
        log.info("learning curves skipped: no run has a measured epoch")
        return None
    use_val = curves["val/acc"].notna().any()
    accuracy = "val/acc" if use_val else "test/acc"
    fig = Figure(figsize=(12, 4.5))
    ax_loss, ax_acc = fig.subplots(1, 2)
    by_run = dict(tuple(curves.groupby("run_dir", sort=False)))
    # draw the grey rest first and the best recipe last, so it is on top
    shown = sorted(
        (r for r in runs["run_dir"] if r in by_run), key=lambda r: -int(groups.at[r, "rank"])
    )
    few = curves["epoch"].max() <= 5  # short runs: mark the epochs, a line alone hides them
    for run_dir in shown:
        run, style = by_run[run_dir].sort_values("epoch"), _style(groups, run_dir)
        style = {**style, "marker": "o", "ms": 3} if few else style
        ax_loss.plot(run["epoch"], run["train/loss"], **style)
        ax_loss.plot(run["epoch"], run["test/loss"], "--", **style)
        ax_acc.plot(run["epoch"], run[accuracy] * 100, **style)
    ax_loss.legend(
        handles=[
            Line2D([], [], color="k", label="train"),
            Line2D([], [], color="k", ls="--", label="test"),
        ],
        fontsize=8,
    )
    trained = curves[curves["epoch"] >= 1]
    losses = trained[["train/loss", "test/loss"]].stack()
    if len(losses) and losses.min() > 0 and losses.max() / losses.min() > 100:
        ax_loss.set_yscale("log")  # one blown-up run would hide the rest
    elif len(losses):
        ax_loss.set_ylim(0, float(losses.max()) * 1.1)  # epoch 0 (~2.3) may go off the top
    completed = curves["run_dir"].isin(runs.loc[runs["status"] == "completed", "run_dir"])
    scale = curves[_late(curves) & (completed | ~completed.any())]
    _zoom(ax_acc, scale[accuracy] * 100, floor=100.5)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Training and test loss")
    name = "Validation accuracy (selection metric)" if use_val else "Test accuracy (no val split)"
    ax_acc.set(xlabel="epoch", ylabel=f"{accuracy} (%)", title=f"{name}, {len(shown)} runs")
    for ax in (ax_loss, ax_acc):
        ax.grid(True, alpha=0.4)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    fig.tight_layout()
    _place_legend(fig, ax_acc, _legend_handles(groups, shown), "recipe (runs)")
    return _png(fig)


def heatmap(runs: pd.DataFrame, groups: pd.DataFrame, rows: str, columns: str, metric: str):
    """Mean metric of the completed runs over two keys, when each cell holds one recipe."""
    done = runs[runs["status"] == "completed"]
    cells = done.assign(
        _value=metric_values(done, metric), _recipe=groups.loc[done["run_dir"], "label"].to_numpy()
    ).dropna(subset=[rows, columns])
    mixed = cells.groupby([rows, columns])["_recipe"].nunique()
    if len(mixed) and mixed.max() > 1:
        log.info(
            "heatmap skipped: some %s x %s cells hold runs of different recipes "
            "(narrow the runs with --where)",
            short(rows),
            short(columns),
        )
        return None
    table = cells.pivot_table(index=rows, columns=columns, values="_value", aggfunc="mean")
    if table.empty or table.isna().all().all():
        log.info("heatmap skipped: no completed run with %s, %s and %s", rows, columns, metric)
        return None
    values = table.to_numpy(dtype=float)
    fig = Figure(figsize=(2 + 1.1 * values.shape[1], 1.8 + 0.6 * values.shape[0]))
    ax = fig.subplots()
    reverse = lower_is_better(metric)  # the better end is always the bright one
    image = ax.imshow(values, cmap="viridis_r" if reverse else "viridis", aspect="auto")
    ax.set_xticks(range(values.shape[1]), [tick(v) for v in table.columns])
    ax.set_yticks(range(values.shape[0]), [tick(v) for v in table.index])
    for (r, c), value in pd.DataFrame(values).stack().items():
        bright = (image.norm(value) > 0.5) != reverse  # dark text on the bright cells
        color = "black" if bright else "white"
        ax.text(c, r, f"{value:.4g}", ha="center", va="center", color=color, fontsize=9)
    ax.set(xlabel=short(columns), ylabel=short(rows), title=f"{metric_label(metric)} (mean)")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return _png(fig)


def metric_vs_time(runs: pd.DataFrame, groups: pd.DataFrame, metric: str) -> bytes | None:
    """Each completed run's metric against its wall time: what a better result cost."""
    done = runs[runs["status"] == "completed"]
    points = pd.DataFrame(
        {
            "run_dir": done["run_dir"].to_numpy(),
            "seconds": pd.to_numeric(done["wall_seconds"], errors="coerce").to_numpy(dtype=float),
            "value": metric_values(done, metric).to_numpy(),
        }
    ).dropna()
    if points.empty:
        log.info("%s vs wall time skipped: no completed run with both measured", metric)
        return None
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    ranks = groups.loc[points["run_dir"], "rank"].to_numpy()
    colors = [PALETTE[r] if r < MAX_LABELLED else OTHERS for r in ranks]
    order = np.argsort(-ranks, kind="stable")  # the best recipes drawn last, on top
    ax.scatter(
        points["seconds"].iloc[order], points["value"].iloc[order], c=np.array(colors)[order]
    )
    if len(points["seconds"]) and points["seconds"].max() / max(points["seconds"].min(), 1e-9) > 30:
        ax.set_xscale("log")
    ax.set(xlabel="wall time per run (s)", ylabel=metric_label(metric), title="Result vs cost")
    ax.grid(True, alpha=0.4)
    fig.tight_layout()
    handles = _legend_handles(groups, list(points["run_dir"]), marker="o")
    _place_legend(fig, ax, handles, "recipe (runs)")
    return _png(fig)


def render(runs, epochs, groups: pd.DataFrame, *, metric: str, axes: list[str]) -> dict:
    """{file name: PNG bytes, or None for a figure skipped (its old file is then removed)}."""
    rows, columns = axes
    name = f"heatmap_{short(rows)}_{short(columns)}.png".replace("/", "-")
    drawers = {
        "learning_curves.png": lambda: learning_curves(runs, epochs, groups),
        name: lambda: heatmap(runs, groups, rows, columns, metric),
        "accuracy_vs_time.png": lambda: metric_vs_time(runs, groups, metric),
    }
    return {file: _safely(file, draw) for file, draw in drawers.items()}


def _safely(file: str, draw) -> bytes | None:
    """A figure that cannot be drawn (odd values) is skipped with a log line, never fatal."""
    try:
        return draw()
    except (TypeError, ValueError, KeyError) as e:
        log.warning("%s skipped: %s", file, e)
        return None
