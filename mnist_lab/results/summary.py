"""One table of every run and comparison grids that put like with like, made by pandas.

The run record (docs/ARCHITECTURE.md) is the only input: `result.json` flattened with
`pd.json_normalize` (one row per run, every config key its own column), plus `metrics.csv` for what
only the epoch rows know (converged accuracy, epochs to a target). Records are read, not trusted:
older ones with missing keys leave empty cells, unreadable ones are skipped with one warning, a
`running` record whose process died reads as `killed` (mnist_lab.records), and runs refused for
bad input before training (`"refused": true`, status `failed`) are left out of every table.

Comparisons are honest by construction:
- runs are compared within a section: one Optuna study, one sweep, or the single runs;
- a grid row is a recipe: by default the rows are keyed by every configuration key whose value
  differs among the section's completed runs (seed excluded, and keys that do not change what is
  trained: where files are, how progress is shown, which device), so no two recipes share a row;
  `--by` narrows the key, and the table then says which differing keys its rows mix;
- replicates are runs that differ only in seed: `n` counts distinct seeds; runs with the same
  recipe and seed are duplicates, counted once (their mean) and flagged;
- the best row (★) has the highest mean final validation accuracy; the reported metric (test
  accuracy by default) is shown beside it and never used to choose.

Everything is rendered in memory before anything is written, and each file is then written whole
(temp file + `os.replace`); files of an earlier call that this one does not produce are removed,
so the folder always holds one consistent set. Rows are sorted, so a rerun writes the same bytes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mnist_lab.config import recipe
from mnist_lab.errors import LabError
from mnist_lab.records.files import atomic_write_bytes
from mnist_lab.records.format import METRICS_FILE, RESULT_FILE
from mnist_lab.records.reading import read_record
from mnist_lab.results.columns import (
    SELECT,
    is_accuracy,
    metric_label,
    metric_values,
    short,
    tick,
)
from mnist_lab.results.where import FilterError, compile_where

log = logging.getLogger(__name__)

RECORD, METRICS = RESULT_FILE, METRICS_FILE
TABLES = ("summary.csv", "grid.csv", "summary.md")
PLOTS = ("learning_curves.png", "accuracy_vs_time.png")
HEATMAPS = "heatmap_*.png"  # named by their two axes: any of them may be left from another call
BEST_MARK = "★"

# Short names for the knobs a reader compares, each the first key present: the value that was
# actually used (the nested key) before the knob that may have fed it, then older records' keys.
SHORT = {
    "hidden": ("hidden_first", "config.model.width", "config.hidden"),  # width: model=resmlp
    "lr": ("config.optimizer.lr", "config.lr"),
    "batch_size": ("config.data.batch_size", "config.batch_size"),
    "epochs": ("config.trainer.epochs", "config.epochs"),
    "seed": ("config.trainer.seed", "config.seed"),
    "activation": ("config.model.activation",),
    "normalize": ("config.data.normalize",),
    "deskew": ("config.data.deskew",),
    "model": ("choices.model", "config.model.name"),  # schema_version 1 records: model.name
    "experiment": ("choices.experiment",),
    "data": ("data.id",),
}
# Whole numbers that a missing value would otherwise turn into floats ("16.0") in the CSV.
INTEGERS = (
    "trial",
    "hidden",
    "batch_size",
    "epochs",
    "seed",
    "epochs_run",
    "best.epoch",
    "epochs_to_target",
    "param_count",
    "job.num",
)
# summary.csv starts with these (always present, empty where a record lacks them); every other
# flattened key follows in name order.
LEADING = (
    "run_id",
    "section",
    "sweep",
    "study",
    "trial",
    "status",
    "reason",
    "hidden",
    "hidden_sizes",
    "lr",
    "batch_size",
    "epochs",
    "seed",
    "optimizer",
    "activation",
    "normalize",
    "deskew",
    "model",
    "experiment",
    "data",
    "epochs_run",
    "final.val/acc",
    "final.val/loss",
    "final.test/acc",
    "final.test/loss",
    "best.epoch",
    "best.val/acc",
    "best.test/acc",
    "converged.test/acc",
    "epochs_to_target",
    "param_count",
    "seconds_per_epoch",
    "wall_seconds",
    "device",
    "run_dir",
)
# Grid keys are named by these short columns first (in this order), then by config columns.
KEY_ORDER = (
    "hidden",
    "hidden_sizes",
    "lr",
    "batch_size",
    "epochs",
    "optimizer",
    "model",
    "activation",
    "normalize",
    "deskew",
    "data",
)
SHOWN_KNOBS = ("hidden", "hidden_sizes", "lr", "batch_size", "epochs", "optimizer", "model", "data")


class SummaryError(LabError):
    """Input the user can fix (a path, a column, a filter): one line, nothing written."""


@dataclass
class Summary:
    runs: pd.DataFrame  # summary.csv: one row per run
    epochs: pd.DataFrame  # every metrics.csv row of those runs, keyed by run_dir
    grid: pd.DataFrame  # grid.csv: the sections' grids, one below the other
    markdown: str  # summary.md, also what the CLI prints
    sections: list  # [Section], as in summary.md
    metric: str  # the reported metric's column
    written: list[Path] = field(default_factory=list)


# --- reading -------------------------------------------------------------------------------------


def find_records(paths: Iterable[str | Path]) -> list[tuple[Path, Path]]:
    """(search root, result.json) for every record under the paths, each file once."""
    found, seen = [], set()
    for root in map(Path, paths):
        if root.is_dir():
            files = sorted(root.rglob(RECORD))
        elif root.is_file() and root.name == RECORD:
            files = [root]
        else:
            raise SummaryError(f"no such directory or {RECORD}: {root}")
        for file in files:
            if file.resolve() not in seen:
                seen.add(file.resolve())
                found.append((root, file))
    return found


def read_epochs(run_dir: Path) -> pd.DataFrame | None:
    """metrics.csv of one run; None when there is none (a run that failed before epoch 0)."""
    path = run_dir / METRICS
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path)
    except (OSError, ValueError) as e:  # ValueError covers pandas' parser and empty-data errors
        log.warning("skipping unreadable %s (%s)", path, e)
        return None


def _relative(root: Path, folder: Path) -> str:
    """A folder relative to where it was found: short, and unique within one summary."""
    if root.is_file():
        return folder.name
    try:
        relative = folder.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(folder)
    return folder.resolve().name if relative == "." else relative


def _section(record: dict, root: Path) -> str:
    """The work a run belongs to: its Optuna study, else its sweep, else the single runs."""
    trial = record.get("trial")
    if isinstance(trial, dict) and trial.get("study_name"):
        return f"study {trial['study_name']}"
    job = record.get("job")
    if isinstance(job, dict) and job.get("sweep_dir"):
        return f"sweep {_relative(root, Path(job['sweep_dir']))}"
    return "single runs"


def load(paths: Iterable[str | Path]) -> tuple[list[dict], pd.DataFrame]:
    """Readable records (with their found folder, run id and section) and all their epoch rows."""
    records, frames = [], []
    for root, file in find_records(paths):
        record = read_record(file)
        if record is None:
            continue
        run_dir = str(file.parent.resolve())
        run_id = _relative(root, file.parent)
        section = _section(record, root)
        records.append({**record, "run_dir": run_dir, "run_id": run_id, "section": section})
        epochs = read_epochs(file.parent)
        if epochs is not None:
            frames.append(epochs.assign(run_dir=run_dir))
    epochs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["run_dir"])
    return records, epochs


# --- the one-row-per-run table -------------------------------------------------------------------


def _coalesce(flat: pd.DataFrame, keys: Sequence[str]) -> pd.Series:
    """First non-empty value among the keys present; empty where none is."""
    present = [flat[k] for k in keys if k in flat]
    if not present:
        return pd.Series(np.nan, index=flat.index, dtype=object)
    out = present[0]
    for other in present[1:]:
        out = out.combine_first(other)
    return out


def _as_int(values: pd.Series) -> pd.Series:
    """Nullable integers when every value is whole, so the CSV says 16 rather than 16.0."""
    numbers = pd.to_numeric(values, errors="coerce")
    if numbers.notna().sum() == values.notna().sum() and (numbers.dropna() % 1 == 0).all():
        return numbers.astype("Int64")
    return values


def _text(value):
    """Lists (hidden_sizes, overrides) as JSON text: readable in a CSV and hashable for groupby."""
    return json.dumps(value) if isinstance(value, list | dict) else value


def _optimizer(flat: pd.DataFrame) -> pd.Series:
    """As typed (`optimizer=sgd`): the config group's choice, else the class name lower-cased."""
    target = flat.get("config.optimizer._target_", pd.Series(None, index=flat.index))
    spelled = target.map(lambda v: v.rsplit(".", 1)[-1].lower() if isinstance(v, str) else v)
    return _coalesce(flat.assign(_spelled=spelled), ["choices.optimizer", "_spelled"])


def epoch_stats(epochs: pd.DataFrame, k: int, target: float) -> pd.DataFrame:
    """Per run_dir: mean test/acc of the last k trained epochs, first epoch reaching target."""
    epochs = epochs.reindex(columns=["run_dir", "epoch", "test/acc"])
    trained = epochs[epochs["epoch"] > 0].sort_values(["run_dir", "epoch"])
    converged = trained.groupby("run_dir").tail(k).groupby("run_dir")["test/acc"].mean()
    reached = epochs[epochs["test/acc"] >= target].groupby("run_dir")["epoch"].min()
    return pd.DataFrame({"converged.test/acc": converged, "epochs_to_target": reached})


def build_runs(records: list[dict], epochs: pd.DataFrame, k: int, target: float) -> pd.DataFrame:
    """summary.csv: every record flattened, the short columns first, rows in a stable order."""
    flat = pd.json_normalize(records) if records else pd.DataFrame(columns=["run_dir"])
    # Records from before `data.deskew` existed trained on the digits as they are: same recipe.
    had_data = flat.filter(regex=r"^config\.data\.").notna().any(axis=1)
    deskew = flat.get("config.data.deskew", pd.Series(None, index=flat.index, dtype=object))
    flat["config.data.deskew"] = deskew.astype(object).mask(had_data & deskew.isna(), False)
    sizes = flat.get("config.model.hidden_sizes", pd.Series(np.nan, index=flat.index))
    sizes = sizes.map(lambda v: v if isinstance(v, list) else None)
    flat["hidden_first"] = sizes.map(lambda v: v[0] if v else None)
    shorts = {name: _coalesce(flat, keys) for name, keys in SHORT.items()}
    shorts["hidden_sizes"] = sizes.map(lambda v: "x".join(map(str, v)) if v else None)
    shorts["optimizer"] = _optimizer(flat)
    shorts["study"] = _coalesce(flat, ["trial.study_name"])
    shorts["trial"] = _coalesce(flat, ["trial.number"])
    shorts["sweep"] = _coalesce(flat, ["job.sweep_dir"])
    flat = flat.drop(columns="hidden_first").assign(**shorts)
    flat["status"] = _coalesce(flat, ["status"]).fillna("unknown")
    flat["section"] = _coalesce(flat, ["section"]).fillna("single runs")
    flat = flat.join(epoch_stats(epochs, k, target), on="run_dir")
    for column in flat.columns:
        if pd.api.types.is_object_dtype(flat[column]):
            flat[column] = flat[column].map(_text)
    columns = [*LEADING, "job.num", *sorted(set(flat.columns) - set(LEADING) - {"job.num"})]
    runs = flat.reindex(columns=columns)
    for column in INTEGERS:
        runs[column] = _as_int(runs[column])
    order = ["sweep", "trial", "job.num", "run_id"]
    return runs.sort_values(order, na_position="last", kind="stable", ignore_index=True)


# --- recipes and the comparison grid -------------------------------------------------------------


def resolve_column(runs: pd.DataFrame, name: str, option: str) -> str:
    """A summary.csv column by its name, or short for `final.<name>` or `config.<name>`."""
    for candidate in (name, f"final.{name}", f"config.{name}"):
        if candidate in runs.columns:
            return candidate
    raise SummaryError(
        f"{option}: unknown column {name!r} (use a summary.csv column, e.g. hidden, lr, "
        "optimizer, test/acc, converged.test/acc, best.val/acc, model.activation)"
    )


def recipe_columns(runs: pd.DataFrame) -> list[str]:
    """The columns that say what was trained: every recipe key of the config, and the data."""
    config = [
        c
        for c in runs.columns
        if c.startswith("config.") and recipe.is_recipe_key(c.removeprefix("config."))
    ]
    return ["data", *sorted(config)]


# The config columns each short column is read from or stands for: never a key beside it.
ALIASES = {
    "hidden": ("config.hidden", "config.model.width"),
    "hidden_sizes": ("config.model.hidden_sizes",),
    "lr": ("config.lr", "config.optimizer.lr"),
    "batch_size": ("config.batch_size", "config.data.batch_size"),
    "epochs": ("config.epochs", "config.trainer.epochs"),
    "optimizer": ("config.optimizer._target_",),
    "model": ("config.model.name", "config.model._target_"),
    "activation": ("config.model.activation",),
    "normalize": ("config.data.normalize",),
    "deskew": ("config.data.deskew",),
}


def _groups(runs: pd.DataFrame, columns: list[str]) -> int:
    """How many distinct value combinations the columns take (missing values included)."""
    return len(runs[columns].astype(str).drop_duplicates()) if columns else 1


def varying_keys(runs: pd.DataFrame) -> list[str]:
    """Readable columns that tell the recipes among `runs` apart.

    Every short knob that differs is shown (`hidden_sizes` only where it says more than
    `hidden`); then any other recipe column that still separates runs the shown ones do not
    (keys that only come along with a shown one, like Adam's `betas`, are left out). So the rows
    keyed by the result are exactly the recipes: two different recipes never share a row."""
    order = [k for k in KEY_ORDER if k in runs]
    if "hidden_sizes" in runs and runs["hidden_sizes"].astype(str).str.contains("x").any():
        order.remove("hidden")
        order.insert(order.index("hidden_sizes") + 1, "hidden")
    chosen: list[str] = []
    for column in order:
        if runs[column].astype(str).nunique() < 2:
            continue
        pair = {"hidden", "hidden_sizes"}
        twin = [c for c in chosen if c in pair and column in pair]
        if twin and _groups(runs, [*twin, column]) == _groups(runs, twin):
            continue  # one layer: hidden and hidden_sizes say the same
        chosen.append(column)
    aliases = {a for names in ALIASES.values() for a in names}
    for column in recipe_columns(runs):
        if column in chosen or column in aliases or column not in runs:
            continue
        if _groups(runs, [*chosen, column]) > _groups(runs, chosen):
            chosen.append(column)
    return chosen


def _per_seed(done: pd.DataFrame, keys: list[str], metrics: list[str]) -> pd.DataFrame:
    """One row per (recipe, seed) with the row's keys: duplicates averaged, their count kept."""
    group = list(dict.fromkeys([*keys, *(c for c in recipe_columns(done) if c in done), "seed"]))
    values = done[group].assign(**{m: metric_values(done, m) for m in metrics})
    return (
        values.groupby(group, dropna=False, sort=False)
        .agg(**{m: (m, "mean") for m in metrics}, runs=(metrics[0], "size"))
        .reset_index()
    )


@dataclass
class Section:
    """One section's comparison: its runs, the grid of its completed ones and how it is keyed."""

    name: str
    runs: pd.DataFrame
    grid: pd.DataFrame
    keys: list[str]  # the grid's row keys
    mixed: list[str]  # keys that differ within rows (only when --by narrows the key)
    same: dict  # knobs every completed run of the section shares


def section_grid(
    name: str, runs: pd.DataFrame, by: list[str] | None, metric: str, columns: list[str]
) -> Section:
    """Completed runs of one section grouped into rows; the best row marked on validation.

    `columns`: key columns of other sections, filled in for grid.csv with each row's value."""
    done = runs[runs["status"] == "completed"]
    varying = varying_keys(done) if len(done) else []
    keys = varying if by is None else by
    layers = "hidden_sizes" in done and done["hidden_sizes"].astype(str).str.contains("x").any()
    default = ("hidden_sizes" if layers else "hidden", "lr", "batch_size", "epochs")
    shown = keys or [k for k in default if k in done]
    metrics = list(dict.fromkeys([SELECT, metric]))
    seeds = _per_seed(done, shown, metrics)
    grid = (
        seeds.groupby(shown, dropna=False, sort=False)
        .agg(
            **{f"{metric_label(m)} {stat}": (m, stat) for m in metrics for stat in ("mean", "std")},
            n=("runs", "size"),
            runs=("runs", "sum"),
        )
        .reset_index()
        .sort_values(shown, na_position="last", kind="stable", ignore_index=True)
    )
    grid["duplicates"] = grid.pop("runs") - grid["n"]
    extra = [c for c in columns if c not in shown]
    if extra and len(done):  # constant within each row: the rows are recipes
        values = done.groupby(shown, dropna=False, sort=False)[extra].first().reset_index()
        grid = grid.merge(values, on=shown, how="left")
    select = grid[f"{metric_label(SELECT)} mean"]
    best = select.idxmax() if select.notna().any() else None
    grid["best"] = np.where(grid.index == best, BEST_MARK, "")
    grid.insert(0, "section", name)
    redundant = {"hidden"} if layers else {"hidden_sizes"}  # hidden_sizes says it all
    same = {
        k: done[k].iloc[0]
        for k in SHOWN_KNOBS
        if k in done
        and len(done)
        and k not in {*shown, *redundant}
        and done[k].astype(str).nunique() == 1
    }
    mixed = [k for k in varying if k not in shown]
    return Section(name, runs, grid, shown, mixed, same)


def sections(runs: pd.DataFrame, by: list[str] | None, metric: str) -> list[Section]:
    """Studies and sweeps in name order, the single runs last."""
    names = sorted(runs["section"].unique(), key=lambda s: (s == "single runs", s))
    parts = [section_grid(n, runs[runs["section"] == n], by, metric, []) for n in names]
    columns = list(dict.fromkeys(k for part in parts for k in part.keys))
    if any(part.keys != columns for part in parts):  # grid.csv: every row with every key
        parts = [section_grid(p.name, p.runs, by, metric, columns) for p in parts]
    for part in parts:
        part.grid = part.grid.reindex(
            columns=["section", *columns, *(c for c in part.grid if c not in {"section", *columns})]
        )
    return parts


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def grid_table(section: Section, metric: str) -> pd.DataFrame:
    """A section's grid as the lab prints it: "mean ± std" columns, std left out for one seed."""
    grid = section.grid
    shown = pd.DataFrame({short(k): grid[k].map(_cell) for k in section.keys})
    for m in dict.fromkeys([SELECT, metric]):
        label = metric_label(m)
        mean, std = grid[f"{label} mean"], grid[f"{label} std"]
        number = "{:.2f}".format if is_accuracy(m) else "{:.4g}".format
        spread = (" ± " + std.map(number).astype(str)).where(std.notna(), "")
        shown[f"{label}"] = (mean.map(number).astype(str) + spread).where(mean.notna(), "")
    shown["n"] = grid["n"]
    if grid["duplicates"].any():
        shown["duplicates"] = grid["duplicates"].map(lambda d: f"+{d}" if d else "")
    shown["best"] = grid["best"]
    return shown


def top_rows(section: Section, metric: str, n: int) -> tuple[pd.DataFrame | None, str]:
    """The n rows with the highest validation accuracy (as shown), and the best one in words."""
    if not len(section.grid):
        return None, ""
    table = grid_table(section, metric)
    order = section.grid[f"{metric_label(SELECT)} mean"].sort_values(ascending=False, kind="stable")
    top = table.loc[order.index[:n]]
    best = table[table["best"] == BEST_MARK]
    if not len(best):
        return top, "none (no validation accuracy measured)"
    row = best.iloc[0].drop("best")
    return top, ", ".join(f"{k}={v}" for k, v in row.items() if v != "")


def _counts(runs: pd.DataFrame) -> str:
    statuses = runs["status"].value_counts().sort_index()
    return ", ".join(f"{n} {status}" for status, n in statuses.items()) or "none"


def section_markdown(section: Section, metric: str) -> list[str]:
    lines = [f"## {section.name}", "", f"Runs: {_counts(section.runs)}."]
    if not len(section.grid):
        return [*lines, "", "(no completed runs)", ""]
    if section.same:
        same = ", ".join(f"{short(k)}={_cell(v)}" for k, v in section.same.items())
        lines.append(f"Same in every completed run: {same}.")
    if section.mixed:
        lines.append(
            f"Rows mix runs that also differ in: {', '.join(map(short, section.mixed))} "
            "(not in --by)."
        )
    duplicates = int(section.grid["duplicates"].sum())
    if duplicates:
        lines.append(
            f"Duplicates: {duplicates} run(s) repeat the recipe and seed of another; each "
            "(recipe, seed) counted once (mean)."
        )
    table = grid_table(section, metric).to_markdown(index=False, disable_numparse=True)
    return [*lines, "", table, ""]


def grid_markdown(runs, parts: list[Section], metric: str, *, k, target, where, refused) -> str:
    """summary.md: what it shows, then one grid per section."""
    lines = [
        f"# {len(runs)} runs in {len(parts)} section(s)",
        "",
        "Sections: one per Optuna study, per sweep, and the single runs; runs are compared only "
        "within their section. Rows: the configuration keys that differ among the section's "
        "completed runs (seed excluded), unless --by names them. n: distinct seeds, mean ± std "
        f"over them. {BEST_MARK}: highest mean {SELECT} (the selection metric); "
        f"{metric_label(metric)} is reported beside it, never used to choose.",
        f"Runs: {_counts(runs)}."
        + (f" Not shown: {refused} refused (bad input, never trained)." if refused else "")
        + (f" Filter: `{where}`." if where else ""),
        f"converged.test/acc: mean of the last {k} epochs; epochs_to_target: first epoch with "
        f"test/acc >= {target:g}.",
        "",
    ]
    for section in parts:
        lines += section_markdown(section, metric)
    return "\n".join(lines)


def select(runs: pd.DataFrame, where: str | None) -> pd.DataFrame:
    """Rows matching a --where filter (mnist_lab.results.where: comparisons only, never code)."""
    if not where:
        return runs
    try:
        mask = compile_where(where, lambda name: resolve_column(runs, name, "column"))(runs)
    except (FilterError, SummaryError) as e:
        raise SummaryError(f"--where {where!r}: {e}") from None
    chosen = runs[mask].reset_index(drop=True)
    if chosen.empty and len(runs):
        raise SummaryError(
            f"--where {where!r}: matches none of the {len(runs)} runs; nothing written"
        )
    return chosen


# --- writing -------------------------------------------------------------------------------------


def write_files(out: Path, files: dict[str, bytes | None]) -> list[Path]:
    """Write each file atomically, then remove every summary file this call did not produce
    (a plot skipped, --no-plots, a heatmap of other axes): the folder holds one consistent set."""
    out.mkdir(parents=True, exist_ok=True)
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
    markdown = grid_markdown(runs, parts, metric, k=k, target=target, where=where, refused=refused)
    files: dict[str, bytes | None] = {
        "summary.csv": runs.to_csv(index=False, lineterminator="\n").encode(),
        "grid.csv": grid.to_csv(index=False, lineterminator="\n").encode(),
        "summary.md": markdown.encode(),
    }
    if plots:
        from mnist_lab.results import plots as summary_plots

        files.update(
            summary_plots.render(runs, epochs, recipe_groups(runs), metric=metric, axes=axes)
        )
    written = write_files(Path(out), files)
    log.info("summarised %d runs into %s", len(runs), Path(out))
    return Summary(runs, epochs, grid, markdown, parts, metric, written)


def recipe_groups(runs: pd.DataFrame) -> pd.DataFrame:
    """Per run (index run_dir): its recipe's label over the keys that differ among `runs`, the
    recipe's mean selection metric, and its rank (best first): what the figures colour by."""
    keys = varying_keys(runs) if len(runs) else []
    if keys:
        parts = [
            short(k) + "=" + runs[k].map(lambda v: tick(v) if not pd.isna(v) else "–") for k in keys
        ]
        label = pd.concat(parts, axis=1).agg(" ".join, axis=1)
    else:
        label = pd.Series("every run: same recipe", index=runs.index)
    value = metric_values(runs, SELECT)
    score = value.groupby(label).transform("mean")
    order = (
        pd.DataFrame({"label": label, "score": score})
        .drop_duplicates("label")
        .sort_values(["score", "label"], ascending=[False, True], na_position="last")
    )
    rank = dict(zip(order["label"], range(len(order)), strict=True))
    return pd.DataFrame(
        {"label": label.to_numpy(), "rank": label.map(rank).to_numpy(), "score": score.to_numpy()},
        index=runs["run_dir"].to_numpy(),
    )
