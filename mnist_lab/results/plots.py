"""PNG figures beside the summary tables, faceted by the tables' sections: learning curves, the
metric against time, a heatmap where two keys vary, and an Optuna study's trials.

Drawn on matplotlib's Agg canvas directly (no pyplot, so no window, no global figure state, and
no change to the backend of a session that imports this). PNGs carry no software or date
metadata, so the same runs give the same bytes. A figure with nothing to show is skipped with one
log line (returned as None) rather than failing the summary.

Each section (an Optuna study, a sweep, the single runs) gets its own panel or row of panels, so a
figure never mixes runs the tables keep apart; at most MAX_SECTIONS, in the tables' order. In a
section, runs are coloured by their grid row (seeds of one recipe share a colour) and labelled as
the row is, values as typed (`data.train_subset=3000`); the MAX_LABELLED best rows on the
objective get a colour and a legend entry, the others are grey under one entry, runs that did not
complete are dotted. The validation pick (the ★ row, or the Pareto rows) is marked ★ everywhere:
in the legend, as a star in scatter plots, as a framed heatmap cell. Accuracy axes are scaled to
the second half of each run (where runs are compared); epoch 0 (the untrained model) may run off.
"""

from __future__ import annotations

import io
import logging
import math
import textwrap

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from mnist_lab.results.columns import is_accuracy, metric_label, metric_values, short, typed

log = logging.getLogger(__name__)

PNG_METADATA = {"Software": None}  # matplotlib's version in the file would differ across installs
PALETTE = [f"C{i}" for i in range(10) if i != 7]  # tab10 without its grey, kept for the rest
MAX_LABELLED = len(PALETTE)  # rows with their own colour and legend entry
OTHERS = "0.75"  # grey of the rows beyond MAX_LABELLED
MAX_SECTIONS = 12  # panels (or rows of panels) in one figure
MAX_PARAMETERS = 6  # a study's parameters drawn against its objective
LEGEND_WIDTH, LEGEND_CHARACTERS = 4.8, 64  # inches; characters per legend line
PICK = "★"


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(fig)  # attaches the Agg canvas; "tight" keeps a legend placed outside
    fig.savefig(buffer, format="png", metadata=PNG_METADATA, bbox_inches="tight", dpi=100)
    return buffer.getvalue()


class Colours:
    """A section's rows in the grid's order of merit: colour, legend label, pick mark."""

    def __init__(self, section):
        grid = section.grid
        column = f"{metric_label(section.selection[0])} mean" if section.selection else None
        merit = grid[column] if column in grid else pd.Series(np.nan, index=grid.index)
        up = section.objective.maximizes[0]
        order = grid.assign(_merit=merit).sort_values(
            "_merit", ascending=not up, kind="stable", na_position="last"
        )
        self.rank = {label: i for i, label in enumerate(order["label"])}
        self.picked = set(section.best_labels())
        self.labels = section.labels  # run_dir -> row label (completed runs)

    def of(self, run_dir: str) -> dict:
        label = self.labels.get(run_dir)
        if label is None:  # a run that did not complete
            return {"color": OTHERS, "lw": 0.8, "ls": ":", "zorder": 1}
        rank = self.rank[label]
        if rank < MAX_LABELLED:
            return {"color": PALETTE[rank], "lw": 2.4 if label in self.picked else 1.4, "zorder": 3}
        return {"color": OTHERS, "lw": 0.8, "zorder": 2}

    def name(self, label: str) -> str:
        return f"{PICK} {label}" if label in self.picked else label

    def handles(self, run_dirs, marker: str | None = None) -> list:
        """One entry per coloured row (best first, with its run count), one for the grey rest
        and one for the runs that did not complete."""
        labels = pd.Series([self.labels.get(r) for r in run_dirs], dtype=object)
        counts = labels.value_counts(dropna=False)
        line = {"marker": marker, "ls": "none"} if marker else {}
        handles, grey, grey_runs = [], 0, 0
        for label in sorted((x for x in counts.index if isinstance(x, str)), key=self.rank.get):
            if self.rank[label] < MAX_LABELLED:
                runs = counts[label]
                handles.append(
                    Line2D(
                        [],
                        [],
                        color=PALETTE[self.rank[label]],
                        label=f"{self.name(label)} ({runs})",
                        **line,
                    )
                )
            else:
                grey, grey_runs = grey + 1, grey_runs + counts[label]
        if grey:
            label = f"{grey} other rows ({grey_runs} runs)"
            handles.append(Line2D([], [], color=OTHERS, label=label, **line))
        incomplete = int(labels.isna().sum())
        if incomplete and not marker:
            label = f"did not complete ({incomplete})"
            handles.append(Line2D([], [], color=OTHERS, ls=":", label=label))
        return handles


def _legend(ax, handles: list) -> None:
    """The legend in its own axes right of a row of panels (long labels wrapped)."""
    ax.axis("off")
    for handle in handles:
        handle.set_label(textwrap.fill(handle.get_label(), LEGEND_CHARACTERS))
    if handles:
        ax.legend(handles=handles, loc="center left", fontsize=8, frameon=False)


def _rows(count: int, panels: int, width: float = 5.2, height: float = 3.4):
    """A figure of `count` rows, each `panels` panels and a legend's column (its last axes)."""
    fig = Figure(figsize=(panels * width + LEGEND_WIDTH, height * count), layout="constrained")
    spec = fig.add_gridspec(count, panels + 1, width_ratios=[width] * panels + [LEGEND_WIDTH])
    return fig, [[fig.add_subplot(spec[r, c]) for c in range(panels + 1)] for r in range(count)]


def _zoom(ax, values: pd.Series, ceiling: float | None = None) -> None:
    """Scale the y axis to the finite values, with a margin and a minimal span."""
    values = values[np.isfinite(values)]
    if values.empty:
        return
    low, high = float(values.min()), float(values.max())
    span = max(high - low, 0.5)
    low, high = low - 0.15 * span, high + 0.15 * span
    ax.set_ylim(low, min(high, ceiling) if ceiling is not None else high)


def _late(curves: pd.DataFrame) -> pd.Series:
    """The rows from the second half of each run's trained epochs (epoch >= 1)."""
    last = curves["epoch"].where(curves["epoch"] >= 1).groupby(curves["run_dir"]).transform("max")
    return (curves["epoch"] >= 1) & (curves["epoch"] >= np.ceil(last / 2))


def _runs(n: int) -> str:
    return f"{n} run" if n == 1 else f"{n} runs"


def _shown(sections: list) -> tuple[list, str]:
    """The sections a figure draws, and a note when some are left out."""
    if len(sections) <= MAX_SECTIONS:
        return sections, ""
    return sections[:MAX_SECTIONS], (
        f"the first {MAX_SECTIONS} of {len(sections)} sections, in summary.md's order "
        "(summarise a folder or use --where for the others)"
    )


def _title(fig: Figure, title: str, note: str) -> None:
    fig.suptitle(title + (f"\n{note}" if note else ""), fontsize=11)


def _epoch_metric(section, epochs: pd.DataFrame) -> str:
    """The per-epoch column of the section's objective (`val/acc`, `val/loss`), else val/acc,
    else test/acc where no run had a validation split."""
    wanted = section.objective.metrics[0]
    if wanted in epochs and epochs[wanted].notna().any():
        return wanted
    return "val/acc" if "val/acc" in epochs and epochs["val/acc"].notna().any() else "test/acc"


def learning_curves(sections: list, epochs: pd.DataFrame) -> bytes | None:
    """Per section, train (solid) and test (dashed) loss per epoch, as in the lab report, and the
    objective's metric per epoch (validation accuracy unless the objective says otherwise)."""
    columns = ["run_dir", "epoch", "train/loss", "test/loss", "val/loss", "val/acc", "test/acc"]
    curves = epochs.reindex(columns=columns)
    by_run = dict(tuple(curves.groupby("run_dir", sort=False)))
    drawn = [s for s in sections if any(r in by_run for r in s.runs["run_dir"])]
    if not drawn or curves[columns[2:]].isna().all().all():
        log.info("learning curves skipped: no run has a measured epoch")
        return None
    drawn, note = _shown(drawn)
    fig, axes = _rows(len(drawn), 2)
    for (ax_loss, ax_metric, ax_legend), section in zip(axes, drawn, strict=True):
        colours = Colours(section)
        runs = [r for r in section.runs["run_dir"] if r in by_run]
        own = curves[curves["run_dir"].isin(runs)]
        metric = _epoch_metric(section, own)
        percent = 100 if is_accuracy(metric) else 1
        few = own["epoch"].max() <= 5  # short runs: mark the epochs, a line alone hides them
        for run_dir in sorted(runs, key=lambda r: colours.of(r)["zorder"]):
            run, style = by_run[run_dir].sort_values("epoch"), colours.of(run_dir)
            style = {**style, "marker": "o", "ms": 3} if few else style
            ax_loss.plot(run["epoch"], run["train/loss"], **style)
            ax_loss.plot(run["epoch"], run["test/loss"], **{**style, "ls": "--"})
            ax_metric.plot(run["epoch"], run[metric] * percent, **style)
        trained = own.loc[own["epoch"] >= 1, ["train/loss", "test/loss"]].to_numpy(float).ravel()
        trained = trained[np.isfinite(trained)]
        if len(trained) and trained.min() > 0 and trained.max() / trained.min() > 100:
            ax_loss.set_yscale("log")  # one blown-up run would hide the rest
        elif len(trained):
            ax_loss.set_ylim(0, float(trained.max()) * 1.1)  # epoch 0 (~2.3) may go off the top
        done = own["run_dir"].isin(colours.labels.index)
        scale = own[_late(own) & (done | ~done.any())][metric] * percent
        _zoom(ax_metric, scale, ceiling=100.5 if percent == 100 else None)
        ax_loss.set(xlabel="epoch", ylabel="loss")
        ax_loss.set_title(f"{section.name} ({_runs(len(runs))})", loc="left", fontweight="bold")
        ax_loss.legend(
            handles=[
                Line2D([], [], color="k", label="train"),
                Line2D([], [], color="k", ls="--", label="test"),
            ],
            fontsize=8,
        )
        unit = " (%)" if percent == 100 else ""
        ax_metric.set(xlabel="epoch", ylabel=f"{metric}{unit}")
        for ax in (ax_loss, ax_metric):
            ax.grid(True, alpha=0.4)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        _legend(ax_legend, colours.handles(runs))
    _title(fig, f"Learning curves per section ({PICK}: the validation pick)", note)
    return _png(fig)


def _panels(count: int, width: float, height: float):
    cols = min(3, count)
    rows = math.ceil(count / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[count:]:
        ax.set_visible(False)
    return fig, axes[:count]


def _scatter(ax, x, y, picked, colours: list) -> None:
    """Points, the picked ones drawn as large stars on top."""
    x, y, picked = np.asarray(x), np.asarray(y), np.asarray(picked, dtype=bool)
    ax.scatter(x[~picked], y[~picked], c=[c for c, p in zip(colours, picked, strict=True) if not p])
    if picked.any():
        chosen = [c for c, p in zip(colours, picked, strict=True) if p]
        ax.scatter(x[picked], y[picked], c=chosen, marker="*", s=220, edgecolors="k", zorder=4)


def metric_vs_time(sections: list, metric: str) -> bytes | None:
    """Per section, each completed run's metric against its wall time: what a result cost."""
    drawn = []
    for section in sections:
        done = section.runs[section.runs["status"] == "completed"]
        points = pd.DataFrame(
            {
                "run_dir": done["run_dir"].to_numpy(),
                "seconds": pd.to_numeric(done["wall_seconds"], errors="coerce").to_numpy(float),
                "value": metric_values(done, metric).to_numpy(),
            }
        )
        points = points[np.isfinite(points["seconds"]) & np.isfinite(points["value"])]
        if len(points):
            drawn.append((section, points))
    if not drawn:
        log.info("%s vs wall time skipped: no completed run with both measured", metric)
        return None
    drawn, note = _shown(drawn)
    fig, axes = _rows(len(drawn), 1, width=6.5)
    for (ax, ax_legend), (section, points) in zip(axes, drawn, strict=True):
        colours = Colours(section)
        labels = points["run_dir"].map(colours.labels)
        picked = labels.isin(colours.picked)
        _scatter(
            ax,
            points["seconds"],
            points["value"],
            picked,
            [colours.of(r)["color"] for r in points["run_dir"]],
        )
        seconds = points["seconds"]
        if seconds.min() > 0 and seconds.max() / seconds.min() > 30:
            ax.set_xscale("log")
        ax.set(xlabel="wall time per run (s)", ylabel=metric_label(metric))
        ax.set_title(f"{section.name} ({_runs(len(points))})", loc="left", fontweight="bold")
        ax.grid(True, alpha=0.4)
        _legend(ax_legend, colours.handles(points["run_dir"], marker="o"))
    _title(fig, f"Result vs cost per section ({PICK}: the validation pick)", note)
    return _png(fig)


def _heatmap_cells(section, rows: str, columns: str, metric: str):
    """(mean metric table, the picked cell) when both keys vary in the section and each cell
    holds one grid row; the reason otherwise."""
    done = section.runs[section.runs["status"] == "completed"]
    if rows not in done or columns not in done:
        return None, "it has no such keys"
    varied = [done[k].map(typed).replace("", np.nan).dropna().nunique() for k in (rows, columns)]
    if min(varied) < 2:
        return None, f"{short(rows)} and {short(columns)} do not both vary"
    cells = done.assign(
        _value=metric_values(done, metric).to_numpy(),
        _label=done["run_dir"].map(section.labels).to_numpy(),
        _r=done[rows].map(typed),
        _c=done[columns].map(typed),
    )
    cells = cells[(cells["_r"] != "") & (cells["_c"] != "")]
    if cells.groupby(["_r", "_c"])["_label"].nunique().max() > 1:
        return None, "some cells would average different recipes"
    table = cells.pivot_table(index="_r", columns="_c", values="_value", aggfunc="mean")
    for axis in (0, 1):  # numbers in numeric order, as typed
        labels = table.axes[axis]
        numbers = pd.to_numeric(pd.Series(labels), errors="coerce")
        if numbers.notna().all():
            table = table.reindex(labels[np.argsort(numbers.to_numpy(), kind="stable")], axis=axis)
    if table.isna().all().all():
        return None, f"no completed run with {metric}"
    picked = cells[cells["_label"].isin(section.best_labels())]
    pick = (
        (picked["_r"].iloc[0], picked["_c"].iloc[0])
        if len(picked) == 1 or picked["_label"].nunique() == 1
        else None
    )
    return (table, pick), ""


def heatmap(sections: list, rows: str, columns: str, metric: str) -> bytes | None:
    """Per sweep (or the single runs) where both keys vary: the mean metric of each cell, the
    validation pick framed. An Optuna study's trials are drawn in trials.png instead."""
    drawn = []
    for section in sections:
        if section.name.startswith("study "):
            continue
        found, why = _heatmap_cells(section, rows, columns, metric)
        if found is None:
            log.info("heatmap of %s skipped: %s", section.name, why)
        else:
            drawn.append((section, *found))
    if not drawn:
        return None
    drawn, note = _shown(drawn)
    widest = max(t.shape[1] for _, t, _ in drawn)
    tallest = max(t.shape[0] for _, t, _ in drawn)
    fig, axes = _panels(len(drawn), 2.5 + 1.1 * widest, 1.8 + 0.6 * tallest)
    for ax, (section, table, pick) in zip(axes, drawn, strict=True):
        values = table.to_numpy(dtype=float)
        image = ax.imshow(
            values, cmap="viridis_r" if not is_accuracy(metric) else "viridis", aspect="auto"
        )
        ax.set_xticks(range(values.shape[1]), list(table.columns))
        ax.set_yticks(range(values.shape[0]), list(table.index))
        for (r, c), value in np.ndenumerate(values):
            if np.isfinite(value):
                bright = image.norm(value) > 0.5
                ax.text(
                    c,
                    r,
                    f"{value:.4g}",
                    ha="center",
                    va="center",
                    fontsize=9,
                    color="black" if bright else "white",
                )
        if pick is not None:
            r, c = list(table.index).index(pick[0]), list(table.columns).index(pick[1])
            ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, lw=3, ec="red"))
        ax.set(xlabel=short(columns), ylabel=short(rows), title=section.name)
        fig.colorbar(image, ax=ax, label=f"{metric_label(metric)} (mean)")
    _title(fig, f"{metric_label(metric)} (mean over seeds); framed: the validation pick", note)
    return _png(fig)


def trials(sections: list) -> bytes | None:
    """Per Optuna study, the objective of each completed trial against each parameter that
    differs between trials: where the sampler looked and what it found (the pick a star)."""
    drawn = []
    for section in sections:
        if not section.name.startswith("study ") or not section.selection or not section.keys:
            continue
        drawn += [(section, key) for key in section.keys[:MAX_PARAMETERS]]
    if not drawn:
        return None
    studies = list(dict.fromkeys(s.name for s, _ in drawn))
    if len(studies) > MAX_SECTIONS:
        drawn = [(s, k) for s, k in drawn if s.name in studies[:MAX_SECTIONS]]
    note = (
        ""
        if len(studies) <= MAX_SECTIONS
        else f"the first {MAX_SECTIONS} of {len(studies)} studies"
    )
    cols = min(3, max(sum(1 for s, _ in drawn if s.name == n) for n in studies))
    rows = sum(
        math.ceil(sum(1 for s, _ in drawn if s.name == n) / cols) for n in studies[:MAX_SECTIONS]
    )
    fig = Figure(figsize=(4.8 * cols, 3.6 * rows), layout="constrained")
    grid = fig.add_gridspec(rows, cols)
    row = 0
    for name in studies[:MAX_SECTIONS]:
        keys = [(s, k) for s, k in drawn if s.name == name]
        for i, (section, key) in enumerate(keys):
            ax = fig.add_subplot(grid[row + i // cols, i % cols])
            done = section.runs[section.runs["status"] == "completed"]
            metric = section.selection[0]
            y = metric_values(done, metric).to_numpy()
            picked = done["run_dir"].map(section.labels).isin(section.best_labels()).to_numpy()
            numbers = pd.to_numeric(done[key], errors="coerce")
            if (
                numbers.notna().all()
                and not done[key].map(lambda v: isinstance(v, bool | np.bool_)).any()
            ):
                x = numbers.to_numpy(dtype=float)
                positive = x[np.isfinite(x)]
                if len(positive) and positive.min() > 0 and positive.max() / positive.min() > 30:
                    ax.set_xscale("log")
            else:
                text = done[key].map(typed)
                levels = sorted(set(text))
                x = text.map(levels.index).to_numpy(dtype=float)
                ax.set_xticks(range(len(levels)), levels)
                ax.set_xlim(-0.5, len(levels) - 0.5)
            _scatter(ax, x, y, picked, ["C0"] * len(y))
            ax.margins(y=0.12)
            ax.set(xlabel=short(key), ylabel=metric_label(metric))
            ax.set_title(f"{section.name} ({len(done)} trials)" if i == 0 else "", loc="left")
            ax.grid(True, alpha=0.4)
        row += math.ceil(len(keys) / cols)
    _title(fig, f"Optuna trials: the objective against each parameter ({PICK}: the pick)", note)
    return _png(fig)


def render(sections: list, epochs: pd.DataFrame, *, metric: str, axes: list[str]) -> dict:
    """{file name: PNG bytes, or None for a figure skipped (its old file is then removed)}."""
    rows, columns = axes
    name = f"heatmap_{short(rows)}_{short(columns)}.png".replace("/", "-")
    drawers = {
        "learning_curves.png": lambda: learning_curves(sections, epochs),
        name: lambda: heatmap(sections, rows, columns, metric),
        "accuracy_vs_time.png": lambda: metric_vs_time(sections, metric),
        "trials.png": lambda: trials(sections),
    }
    return {file: _safely(file, draw) for file, draw in drawers.items()}


def _safely(file: str, draw) -> bytes | None:
    """A figure that cannot be drawn (odd values) is skipped with a log line, never fatal."""
    try:
        return draw()
    except (TypeError, ValueError, KeyError) as e:
        log.warning("%s skipped: %s", file, e)
        return None
