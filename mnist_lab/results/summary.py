"""Comparison grids that put like with like, written as summary.csv, grid.csv, summary.md and PNGs.

Comparisons are honest by construction:
- runs are compared within a section: one Optuna study, one sweep, or the single runs;
- a grid row is a recipe: the rows are keyed by every key that differs among the section's
  completed runs (`mnist_lab.results.recipes`; a study's searched parameters always), and what
  they all share beyond the default config is listed above the table. `--by` keys the rows by
  other columns; a row that then holds several recipes says so in its own cell and shows the
  mean of their means, never a ± that would be a spread across recipes;
- replicates are runs that differ only in seed: `n` counts the distinct seeds of one recipe, shown
  as mean ± std with a Student t 95% confidence interval from two seeds on; runs with the same
  recipe and seed are duplicates, counted once (their mean) and flagged;
- the best row (★) is chosen on the section's objective (its records' `config.objective`: final
  validation accuracy, maximised, by default), never on the reported metric (test accuracy by
  default). Rows whose selection score Welch's t-test cannot tell apart from ★ at 95% are marked
  ≈. With two objectives the Pareto-optimal rows (over the means) are marked ◆ instead.

Everything is rendered in memory before anything is written, and each file is then written whole
(temp file + `os.replace`); files of an earlier call that this one does not produce are removed,
so the folder always holds one consistent set. Rows are sorted, so a rerun writes the same bytes.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mnist_lab.config.vocabulary import SEED
from mnist_lab.errors import OutputError
from mnist_lab.records.files import atomic_write_bytes
from mnist_lab.records.objective import Objective
from mnist_lab.results import recipes, stats
from mnist_lab.results.columns import (
    DEFAULT_OBJECTIVE,
    is_accuracy,
    metric_label,
    metric_values,
    objective_columns,
    objectives,
    short,
    typed,
)
from mnist_lab.results.runs import SummaryError, build_runs, load, resolve_column
from mnist_lab.results.where import FilterError, compile_where

log = logging.getLogger(__name__)

TABLES = ("summary.csv", "grid.csv", "summary.md")
PLOTS = ("learning_curves.png", "accuracy_vs_time.png", "trials.png")
HEATMAPS = "heatmap_*.png"  # named by their two axes: any of them may be left from another call
BEST_MARK, PARETO_MARK, TIE_MARK = "★", "◆", "≈"
ALPHA = 1 - stats.CONFIDENCE


@dataclass
class Section:
    """One section's comparison: its runs, the grid of its completed ones and how it is keyed."""

    name: str
    runs: pd.DataFrame
    grid: pd.DataFrame
    keys: list[str]  # the grid's row keys
    mixed: list[str]  # keys that differ within rows (only when --by names the keys)
    same: dict  # what every completed run shares and the default config does not
    objective: Objective
    objectives_differ: bool  # its runs were selected on different objectives (★: the default)
    metrics: list[str]  # the objective's columns, then the reported metric (those measured)
    selection: list[str]  # the objective's columns that were measured: what picks the best
    labels: pd.Series = field(default_factory=lambda: pd.Series(dtype=object))  # run_dir -> row
    rows: pd.Series = field(default_factory=lambda: pd.Series(dtype=object))  # run -> row key

    @property
    def pareto(self) -> bool:
        return len(self.objective.metrics) > 1

    def best_labels(self) -> list[str]:
        marked = self.grid["best"].isin([BEST_MARK, PARETO_MARK]) if len(self.grid) else []
        return list(self.grid.loc[marked, "label"]) if len(self.grid) else []


@dataclass
class Summary:
    runs: pd.DataFrame  # summary.csv: one row per run
    epochs: pd.DataFrame  # every metrics.csv row of those runs, keyed by run_dir
    grid: pd.DataFrame  # grid.csv: the sections' grids, one below the other
    markdown: str  # summary.md, also what the CLI prints
    sections: list  # [Section], as in summary.md
    metric: str  # the reported metric's column
    written: list[Path] = field(default_factory=list)


# --- one section's grid --------------------------------------------------------------------------


def section_objective(done: pd.DataFrame) -> tuple[Objective, bool]:
    """The objective the section's completed runs share; the default when they differ."""
    found = set(objectives(done)) if len(done) else {DEFAULT_OBJECTIVE}
    return (found.pop(), False) if len(found) == 1 else (DEFAULT_OBJECTIVE, True)


def _joined(spelled: pd.DataFrame) -> pd.Series:
    """One text key per row from columns spelled by `recipes.keyed` (missing values included)."""
    if spelled.shape[1] == 0 or spelled.empty:
        return pd.Series("", index=spelled.index, dtype=object)
    first, rest = spelled.iloc[:, 0].astype(str), spelled.iloc[:, 1:].astype(str)
    return first.str.cat(rest, sep="\x1f") if rest.shape[1] else first


def label(values: dict) -> str:
    """A row as typed: `hidden=128 optimizer=adam`; keys without a value are left out, unless
    none has one (`data.train_subset=null`)."""
    if not values:
        return "every run: same recipe"
    parts = [f"{short(k)}={typed(v)}" for k, v in values.items() if typed(v) != ""]
    return " ".join(parts or [f"{short(k)}=null" for k in values])


def _order(grid: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Rows sorted by their keys: numbers as numbers, the rest as text, missing last."""

    def sortable(column: pd.Series) -> pd.Series:
        numbers = pd.to_numeric(column, errors="coerce")
        if numbers.notna().sum() == column.notna().sum():
            return numbers
        return column.map(lambda v: typed(v) if typed(v) != "" else None)

    if not keys:
        return grid.reset_index(drop=True)
    return grid.sort_values(
        keys, key=sortable, na_position="last", kind="stable", ignore_index=True
    )


def _row(units: pd.DataFrame, runs: pd.DataFrame, metrics: list[str], keys: list[str]) -> dict:
    """One grid row from its (recipe, seed) units and its runs: the keys' values, the statistics
    of each metric."""
    row = {"_row": units["_row"].iloc[0], **{c: runs[c].iloc[0] for c in keys}}
    pooled = units["_recipe"].nunique()
    for m in metrics:
        name = metric_label(m)
        if pooled == 1:
            described = stats.describe(units[m])
        else:  # the mean of the recipes' means; a spread here would be across recipes
            means = units.groupby("_recipe")[m].mean()
            described = {"mean": means.mean(), "std": math.nan, "low": math.nan, "high": math.nan}
        row |= {
            f"{name} mean": described["mean"],
            f"{name} std": described["std"],
            f"{name} ci95 low": described["low"],
            f"{name} ci95 high": described["high"],
        }
    row |= {"n": len(units) if pooled == 1 else math.nan, "recipes": pooled}
    row["duplicates"] = int(units["runs"].sum() - len(units))
    row["_values"] = list(units[metrics[0]]) if pooled == 1 and metrics else []  # the objective
    return row


def mark_best(grid: pd.DataFrame, objective: Objective, columns: list[str]) -> pd.DataFrame:
    """★ on the best row of the first objective (≈ where Welch's test cannot tell a row from it),
    or ◆ on every Pareto-optimal row when there are several objectives."""
    grid["welch p"] = math.nan
    grid["best"] = ""
    if not len(grid) or not columns:
        return grid
    means = grid[[f"{metric_label(c)} mean" for c in columns]].to_numpy(dtype=float)
    maximise = objective.maximizes
    if len(columns) > 1:
        grid.loc[stats.pareto(means, maximise), "best"] = PARETO_MARK
        return grid
    first = pd.Series(means[:, 0], index=grid.index)
    if first.isna().all():
        return grid
    best = first.idxmax() if maximise[0] else first.idxmin()
    grid.loc[best, "best"] = BEST_MARK
    for i in grid.index[grid.index != best]:
        p = stats.welch_p(grid.at[i, "_values"], grid.at[best, "_values"])
        grid.at[i, "welch p"] = p
        if p >= ALPHA:
            grid.at[i, "best"] = TIE_MARK
    return grid


def section_grid(
    name: str, runs: pd.DataFrame, by: list[str] | None, metric: str, spelled: pd.DataFrame
) -> Section:
    """Completed runs of one section grouped into rows; the best row marked on the objective.
    `spelled`: the runs' candidate and recipe columns spelled by `recipes.keyed`."""
    done = runs[runs["status"] == "completed"]
    spelled = spelled.loc[done.index]
    objective, differ = section_objective(done)
    candidates = spelled[recipes.candidates(done)]
    found = recipes.section_keys(done, candidates) if len(done) else recipes.Keys([], {})
    keys = found.columns if by is None else by
    mixed = [c for c in found.columns if c not in keys] if by is not None else []
    selection = [m for m in objective_columns(objective, runs) if m in runs]
    metrics = [m for m in dict.fromkeys([*selection, metric]) if m in runs]
    present = [c for c in recipes.identity(done) if c in done]
    by_keys = spelled[keys] if set(keys) <= set(spelled) else recipes.keyed(done, keys)
    done = done.assign(_row=_joined(by_keys), _recipe=_joined(spelled[present]))
    units = (
        pd.DataFrame(
            {
                "_row": done["_row"],
                "_recipe": done["_recipe"],
                "_seed": done[SEED.name].map(recipes.value_key) if SEED.name in done else "",
                **{m: metric_values(done, m) for m in metrics},
                "runs": 1,
            },
            index=done.index,
        )
        .groupby(["_row", "_recipe", "_seed"], sort=False)
        .agg(**{m: (m, "mean") for m in metrics}, runs=("runs", "sum"))
        .reset_index()
    )
    firsts = done.drop_duplicates("_row").set_index("_row")[keys]  # keys are the same in a row
    rows = [
        _row(part, firsts.loc[[row_key]], metrics, keys)
        for row_key, part in units.groupby("_row", sort=False)
    ]
    empty = pd.DataFrame(columns=["_row", *keys, "_values"])
    grid = _order(pd.DataFrame(rows) if rows else empty, keys)
    grid = mark_best(grid, objective, selection)
    grid["label"] = [label({k: r[k] for k in keys}) for _, r in grid.iterrows()]
    labels = pd.Series(
        [label(dict(zip(keys, values, strict=True))) for values in done[keys].values],
        index=done["run_dir"].to_numpy(),
        dtype=object,
    )
    grid.insert(0, "section", name)
    return Section(
        name,
        runs,
        grid,
        keys,
        mixed,
        found.same,
        objective,
        differ,
        metrics,
        selection,
        labels,
        done["_row"],
    )


def sections(runs: pd.DataFrame, by: list[str] | None, metric: str) -> list[Section]:
    """Studies and sweeps in name order, the single runs last."""
    names = sorted(runs["section"].unique(), key=lambda s: (s == "single runs", s))
    columns = list(dict.fromkeys([*recipes.candidates(runs), *recipes.identity(runs), *(by or [])]))
    spelled = recipes.keyed(runs, [c for c in columns if c in runs])
    parts = [section_grid(n, runs[runs["section"] == n], by, metric, spelled) for n in names]
    columns = list(dict.fromkeys(k for part in parts for k in part.keys))
    for part in parts:  # grid.csv: every row with every key, where all its runs share a value
        done = part.runs[part.runs["status"] == "completed"]
        row = part.rows
        for column in (c for c in columns if c not in part.keys):
            shared = spelled.loc[done.index, column].groupby(row).nunique() == 1
            value = done[column].groupby(row).first().where(shared)
            part.grid[column] = part.grid["_row"].map(value)
        part.grid = part.grid.reindex(
            columns=["section", *columns, *(c for c in part.grid if c not in {"section", *columns})]
        )
    return parts


# --- rendering -----------------------------------------------------------------------------------


def _number(metric: str):
    """Accuracies in percent with two decimals, other numbers as typed (`12730`, `0.0234`)."""
    return "{:.2f}".format if is_accuracy(metric) else typed


def metric_cell(row: pd.Series, metric: str) -> str:
    """mean ± std [95% CI] over seeds; the mean alone for one seed; `(mean of 3 recipes)` for a
    row that pools recipes."""
    name, number = metric_label(metric), _number(metric)
    mean = row[f"{name} mean"]
    if pd.isna(mean):
        return ""
    text = number(mean)
    if row["recipes"] > 1:
        return f"{text} (mean of {row['recipes']} recipes)"
    if pd.notna(row[f"{name} std"]):
        low, high = row[f"{name} ci95 low"], row[f"{name} ci95 high"]
        text += f" ± {number(row[f'{name} std'])} [{number(low)}, {number(high)}]"
    return text


def grid_table(section: Section) -> pd.DataFrame:
    """A section's grid as the lab prints it (summary.md and the terminal)."""
    grid = section.grid
    shown = pd.DataFrame({short(k): grid[k].map(typed) for k in section.keys}, index=grid.index)
    for m in section.metrics:
        shown[metric_label(m)] = grid.apply(metric_cell, axis=1, metric=m) if len(grid) else []
    shown["n"] = grid["n"].map(lambda n: "–" if pd.isna(n) else str(int(n)))
    if (grid["recipes"] > 1).any():
        shown["recipes"] = grid["recipes"].map(lambda r: str(r) if r > 1 else "")
    if grid["duplicates"].any():
        shown["duplicates"] = grid["duplicates"].map(lambda d: f"+{d}" if d else "")
    if grid["welch p"].notna().any():
        shown[f"vs {BEST_MARK}"] = [
            "" if pd.isna(p) else (f"{TIE_MARK} p={p:.2g}" if p >= ALPHA else f"p={p:.2g}")
            for p in grid["welch p"]
        ]
    shown["best"] = grid["best"].where(grid["best"] != TIE_MARK, "")
    return shown


def top_rows(section: Section, n: int) -> tuple[pd.DataFrame | None, str]:
    """The n best rows on the objective's first metric (Pareto rows first), and the best in words."""
    if not len(section.grid):
        return None, ""
    table = grid_table(section)
    if not section.selection:  # nothing to rank on: never on the reported metric
        return table.head(n), f"none (no {section.objective.metrics[0]} measured)"
    first = section.grid[f"{metric_label(section.selection[0])} mean"]
    maximise = section.objective.maximizes[0]
    order = pd.DataFrame({"front": section.grid["best"] != PARETO_MARK, "value": first})
    order = order.sort_values(
        ["front", "value"], ascending=[True, not maximise], kind="stable", na_position="last"
    )
    top = table.loc[order.index[:n]]
    best = section.best_labels()
    if not best:
        return top, f"none (no {section.objective.metrics[0]} measured)"
    return top, "; ".join(best)


def _counts(runs: pd.DataFrame) -> str:
    statuses = runs["status"].value_counts().sort_index()
    return ", ".join(f"{n} {status}" for status, n in statuses.items()) or "none"


def same_line(section: Section) -> str:
    """What every completed run of the section shares beyond the default config."""
    same = ", ".join(f"{short(k)}={typed(v)}" for k, v in section.same.items())
    return f"Same in every completed run: {same}."


def section_markdown(section: Section) -> list[str]:
    lines = [f"## {section.name}", "", f"Runs: {_counts(section.runs)}."]
    if not len(section.grid):
        return [*lines, "", "(no completed runs)", ""]
    if section.objectives_differ:
        lines.append(
            f"Its runs were selected on different objectives: {BEST_MARK} is on "
            f"{DEFAULT_OBJECTIVE}."
        )
    elif section.objective != DEFAULT_OBJECTIVE:
        mark = PARETO_MARK if section.pareto else BEST_MARK
        lines.append(f"Objective: {section.objective}; {mark} follows it.")
    if section.same:
        lines.append(same_line(section))
    if section.mixed:
        lines.append(
            f"Rows pool runs that also differ in: {', '.join(map(short, section.mixed))} "
            "(not in --by); a row holding several recipes says how many and shows the mean of "
            "their means, with no ± or n."
        )
    duplicates = int(section.grid["duplicates"].sum())
    if duplicates:
        lines.append(
            f"Duplicates: {duplicates} run(s) repeat the recipe and seed of another; each "
            "(recipe, seed) counted once (mean)."
        )
    table = grid_table(section).to_markdown(index=False, disable_numparse=True)
    return [*lines, "", table, ""]


def grid_markdown(runs, parts: list[Section], metric: str, *, k, target, where, refused) -> str:
    """summary.md: what it shows, then one grid per section."""
    lines = [
        f"# {len(runs)} runs in {len(parts)} section(s)",
        "",
        "Sections: one per Optuna study, per sweep, and the single runs; runs are compared only "
        "within their section. Rows: every configuration key that differs among the section's "
        "completed runs (seed excluded; a study's searched parameters always), or the --by "
        "columns; what every run shares beyond the default config is listed above the table. "
        "n: distinct seeds of one recipe; mean ± std [Student t 95% confidence interval of the "
        f"mean] from two seeds on. {BEST_MARK}: the best row on the section's objective (final "
        f"{DEFAULT_OBJECTIVE}, unless its runs' config.objective says otherwise); "
        f"{metric_label(metric)} is reported beside it, never used to choose. "
        f"vs {BEST_MARK}: Welch's t-test (two-sided) of the objective over seeds against the "
        f"{BEST_MARK} row, {TIE_MARK} when it cannot tell them apart at 95% (p ≥ {ALPHA:g}). "
        f"Two objectives: {PARETO_MARK} marks every Pareto-optimal row (over the means).",
        f"Runs: {_counts(runs)}."
        + (f" Not shown: {refused} refused (bad input, never trained)." if refused else "")
        + (f" Filter: `{where}`." if where is not None else ""),
        f"converged.test/acc: mean of the last {k} epochs; epochs_to_target: first epoch with "
        f"test/acc >= {target:g}.",
        "",
    ]
    for section in parts:
        lines += section_markdown(section)
    return "\n".join(lines)


def select(runs: pd.DataFrame, where: str | None) -> pd.DataFrame:
    """Rows matching a --where filter (mnist_lab.results.where: comparisons only, never code)."""
    if where is None:
        return runs
    shown = where if len(where) <= 80 else f"{where[:60]}..."  # one line, however long the input
    try:
        mask = compile_where(where, lambda name: resolve_column(runs, name, "column"))(runs)
    except (FilterError, SummaryError) as e:
        raise SummaryError(f"--where {shown!r}: {e}") from None
    chosen = runs[mask].reset_index(drop=True)
    if chosen.empty and len(runs):
        raise SummaryError(
            f"--where {shown!r}: matches none of the {len(runs)} runs; nothing written"
        )
    return chosen


# --- writing -------------------------------------------------------------------------------------


def check_out(out: Path) -> None:
    """Refuse an output folder that is a file or cannot be written, before anything is read."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"cannot write into {out}: it is a file, not a folder")
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write into {out}: {existing} is not writable")


def write_files(out: Path, files: dict[str, bytes | None]) -> list[Path]:
    """Write each file atomically, then remove every summary file this call did not produce
    (a plot skipped, --no-plots, a heatmap of other axes): the folder holds one consistent set."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot write into {out}: {e.strerror or e}") from None
    written = []
    for name, data in files.items():
        if data is not None:
            atomic_write_bytes(out / name, data)
            written.append(out / name)
    for stale in [*(out / n for n in (*TABLES, *PLOTS)), *out.glob(HEATMAPS)]:
        if stale not in written:
            stale.unlink(missing_ok=True)
    return written


def summarize(
    paths: Iterable[str | Path],
    out: str | Path,
    *,
    by: Sequence[str] | None,
    metric: str,
    k: int,
    target: float,
    heatmap: Sequence[str],
    plots: bool,
    where: str | None = None,
) -> Summary:
    """Read the records under `paths`, write summary.csv, grid.csv, summary.md (and PNGs) to `out`.

    `by` None (or empty) keys each section's rows by what differs among its runs. No defaults
    here: they live in `hydra.callbacks.summarize` of conf/config.yaml, which the multirun
    callback and experiments/summarize.py both read.
    """
    if int(k) < 1:
        raise SummaryError(f"--k must be at least 1, got {k}")
    check_out(Path(out))
    records, epochs = load(paths)
    runs = build_runs(records, epochs, int(k), float(target))
    refused = runs["refused"].eq(True) if "refused" in runs else pd.Series(False, runs.index)
    runs = runs[~refused].reset_index(drop=True)
    refused = int(refused.sum())
    by = list(dict.fromkeys(resolve_column(runs, name, "--by") for name in by)) if by else None
    metric = resolve_column(runs, metric, "--metric")
    if not pd.api.types.is_numeric_dtype(runs[metric]) and runs[metric].notna().any():
        raise SummaryError(f"--metric: column {metric!r} is not numeric")
    axes = [resolve_column(runs, name, "--heatmap") for name in heatmap] if plots else []
    if plots and len(axes) != 2:
        raise SummaryError(f"--heatmap: needs two columns, got {list(heatmap)}")
    runs = select(runs, where)
    epochs = epochs[epochs["run_dir"].isin(runs["run_dir"])]
    parts = sections(runs, by, metric)
    grid = pd.concat([s.grid for s in parts], ignore_index=True) if parts else pd.DataFrame()
    grid = grid.drop(columns=["_row", "_values", "label"], errors="ignore")
    markdown = grid_markdown(runs, parts, metric, k=k, target=target, where=where, refused=refused)
    files: dict[str, bytes | None] = {
        "summary.csv": runs.to_csv(index=False, lineterminator="\n").encode(),
        "grid.csv": grid.to_csv(index=False, lineterminator="\n").encode(),
        "summary.md": markdown.encode(),
    }
    if plots:
        from mnist_lab.results import plots as figures

        files.update(figures.render(parts, epochs, metric=metric, axes=axes))
    written = write_files(Path(out), files)
    log.info("summarised %d runs into %s", len(runs), Path(out))
    return Summary(runs, epochs, grid, markdown, parts, metric, written)
