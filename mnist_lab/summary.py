"""One table of every run and the lab's comparison grid, made by pandas from the run records.

The run record (docs/ARCHITECTURE.md) is the only input: `result.json` flattened with
`pd.json_normalize` (one row per run, every config key its own column), plus `metrics.csv` for what
only the epoch rows know (converged accuracy, epochs to a target). Records are read, not trusted:
older ones with missing keys leave empty cells, unreadable ones are skipped with one warning.
Everything is rendered in memory before anything is written, and each file is then written whole
(temp file + `os.replace`), so bad input writes nothing and two sweeps finishing at once never
leave half a file. Rows are sorted, so a rerun writes the same bytes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mnist_lab.errors import LabError
from mnist_lab.records import METRICS_FILE, RESULT_FILE, atomic_write_bytes, read_record

log = logging.getLogger(__name__)

RECORD, METRICS = RESULT_FILE, METRICS_FILE
TABLES = ("summary.csv", "grid.csv", "summary.md")
BEST_MARK = "★"

# Short names for the knobs a reader compares; each takes the first key present, so a record from
# an older version that only had the nested key still fills it.
SHORT = {
    "hidden": ("config.hidden", "hidden_first"),
    "lr": ("config.lr", "config.optimizer.lr"),
    "batch_size": ("config.batch_size", "config.data.batch_size"),
    "epochs": ("config.epochs", "config.trainer.epochs"),
    "seed": ("config.seed", "config.trainer.seed"),
    "activation": ("config.model.activation",),
    "normalize": ("config.data.normalize",),
    "model": ("choices.model", "config.model.name"),  # schema_version 1 records: model.name
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
    "model",
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
LOWER_IS_BETTER = ("loss", "seconds", "epochs_to_target", "param_count")


class SummaryError(LabError):
    """Input the user can fix (a path, a column, a filter): one line, nothing written."""


@dataclass
class Summary:
    runs: pd.DataFrame  # summary.csv: one row per run
    epochs: pd.DataFrame  # every metrics.csv row of those runs, keyed by run_dir
    grid: pd.DataFrame  # grid.csv
    markdown: str  # summary.md, also what the CLI prints
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


def _run_id(root: Path, run_dir: Path) -> str:
    """The run's folder relative to where it was found: short, and unique within one summary."""
    if root.is_file():
        return run_dir.name
    relative = run_dir.relative_to(root).as_posix()
    return run_dir.resolve().name if relative == "." else relative


def load(paths: Iterable[str | Path]) -> tuple[list[dict], pd.DataFrame]:
    """Readable records (with their found folder and run id) and all their epoch rows."""
    records, frames = [], []
    for root, file in find_records(paths):
        record = read_record(file)
        if record is None:
            continue
        run_dir = str(file.parent.resolve())
        records.append({**record, "run_dir": run_dir, "run_id": _run_id(root, file.parent)})
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
    sizes = flat.get("config.model.hidden_sizes", pd.Series(np.nan, index=flat.index))
    sizes = sizes.map(lambda v: v if isinstance(v, list) else None)
    flat["hidden_first"] = sizes.map(lambda v: v[0] if v else None)
    short = {name: _coalesce(flat, keys) for name, keys in SHORT.items()}
    short["hidden_sizes"] = sizes.map(lambda v: "x".join(map(str, v)) if v else None)
    target_class = flat.get("config.optimizer._target_", pd.Series(None, index=flat.index))
    short["optimizer"] = target_class.map(
        lambda v: v.rsplit(".", 1)[-1] if isinstance(v, str) else v
    )
    short["study"] = _coalesce(flat, ["trial.study_name"])
    short["trial"] = _coalesce(flat, ["trial.number"])
    short["sweep"] = _coalesce(flat, ["job.sweep_dir", "trial.study_name"])
    flat = flat.drop(columns="hidden_first").assign(**short)
    flat["status"] = _coalesce(flat, ["status"]).fillna("unknown")
    flat = flat.join(epoch_stats(epochs, k, target), on="run_dir")
    for column in flat.columns:
        if pd.api.types.is_object_dtype(flat[column]):
            flat[column] = flat[column].map(_text)
    columns = [*LEADING, "job.num", *sorted(set(flat.columns) - set(LEADING) - {"job.num"})]
    runs = flat.reindex(columns=columns)
    for column in INTEGERS:
        runs[column] = _as_int(runs[column])
    order = ["sweep", "trial", "job.num", "run_dir"]
    return runs.sort_values(order, na_position="last", kind="stable", ignore_index=True)


# --- the comparison grid -------------------------------------------------------------------------


def resolve_column(runs: pd.DataFrame, name: str, option: str) -> str:
    """A summary.csv column by its name, or short for `final.<name>` or `config.<name>`."""
    for candidate in (name, f"final.{name}", f"config.{name}"):
        if candidate in runs.columns:
            return candidate
    raise SummaryError(
        f"{option}: unknown column {name!r} (use a summary.csv column, e.g. hidden, lr, "
        "test/acc, converged.test/acc, best.val/acc, model.activation)"
    )


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


def select(runs: pd.DataFrame, where: str | None) -> pd.DataFrame:
    """Rows matching a pandas query (column names with `.` or `/` go in backticks)."""
    if not where:
        return runs
    try:
        chosen = runs.query(where, engine="python")
    except Exception as e:  # a user's expression can fail in many ways; all are bad input
        first_line = (str(e).splitlines() or [type(e).__name__])[0]
        raise SummaryError(f"--where {where!r}: {first_line}") from None
    return chosen.reset_index(drop=True)


def build_grid(runs: pd.DataFrame, by: list[str], metric: str) -> pd.DataFrame:
    """grid.csv: completed runs grouped by `by`, metric mean/std/count, the best row marked."""
    label = metric_label(metric)
    done = runs[runs["status"] == "completed"]
    grid = (
        done.assign(_value=metric_values(done, metric))
        .groupby(by, dropna=False, sort=False)["_value"]
        .agg(["mean", "std", "count"])
        .reset_index()
        .sort_values(by, na_position="last", kind="stable", ignore_index=True)
        .rename(columns={"mean": f"{label} mean", "std": f"{label} std", "count": "n"})
    )
    means = grid[f"{label} mean"]
    best = None
    if means.notna().any():
        best = means.idxmin() if lower_is_better(metric) else means.idxmax()
    grid["best"] = np.where(grid.index == best, BEST_MARK, "")
    return grid


def grid_table(grid: pd.DataFrame, by: list[str], metric: str) -> pd.DataFrame:
    """The grid as the lab prints it: one "mean ± std" column (std left out for a single run)."""
    label = metric_label(metric)
    mean, std = grid[f"{label} mean"], grid[f"{label} std"]
    number = "{:.2f}".format if is_accuracy(metric) else "{:.4g}".format
    spread = (" ± " + std.map(number).astype(str)).where(std.notna(), "")
    shown = grid[by].astype(object).where(grid[by].notna(), "")
    shown[f"{label} (mean ± std)"] = mean.map(number).astype(str) + spread
    shown["n"], shown["best"] = grid["n"], grid["best"]
    return shown


def grid_markdown(runs, grid, by, metric, *, k, target, where) -> str:
    """summary.md: the grid as the lab's table ("mean ± std" over seeds), with what it shows."""
    label = metric_label(metric)
    table = (
        grid_table(grid, by, metric).to_markdown(index=False)
        if len(grid)
        else "(no completed runs)"
    )
    statuses = runs["status"].value_counts().sort_index()
    counted = ", ".join(f"{n} {status}" for status, n in statuses.items()) or "none"
    direction = "lowest" if lower_is_better(metric) else "highest"
    lines = [
        f"# {label} by {', '.join(by)}",
        "",
        f"Completed runs only, mean ± std over the runs of each row (n); {BEST_MARK}: the "
        f"{direction} mean.",
        f"Runs: {counted}." + (f" Filter: `{where}`." if where else ""),
        f"converged.test/acc: mean of the last {k} epochs; epochs_to_target: first epoch with "
        f"test/acc >= {target:g}.",
        "",
        table,
        "",
    ]
    return "\n".join(lines)


# --- writing -------------------------------------------------------------------------------------


def write_files(out: Path, files: dict[str, bytes | None]) -> list[Path]:
    """Write each file atomically; a None (a plot skipped this time) removes a stale old one."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in files.items():
        if data is None:
            (out / name).unlink(missing_ok=True)
            continue
        atomic_write_bytes(out / name, data)
        written.append(out / name)
    return written


def summarize(
    paths: Iterable[str | Path],
    out: str | Path,
    *,
    by: Sequence[str],
    metric: str,
    k: int,
    target: float,
    heatmap: Sequence[str],
    plots: bool,
    where: str | None = None,
) -> Summary:
    """Read the records under `paths`, write summary.csv, grid.csv, summary.md (and PNGs) to `out`.

    No defaults here: they live in `hydra.callbacks.summarize` of conf/config.yaml, which the
    multirun callback and experiments/summarize.py both read.
    """
    if int(k) < 1:
        raise SummaryError(f"--k must be at least 1, got {k}")
    records, epochs = load(paths)
    runs = build_runs(records, epochs, int(k), float(target))
    by = list(dict.fromkeys(resolve_column(runs, name, "--by") for name in by))
    metric = resolve_column(runs, metric, "--metric")
    if not pd.api.types.is_numeric_dtype(runs[metric]) and runs[metric].notna().any():
        raise SummaryError(f"--metric: column {metric!r} is not numeric")
    axes = [resolve_column(runs, name, "--heatmap") for name in heatmap] if plots else []
    if plots and len(axes) != 2:
        raise SummaryError(f"--heatmap: needs two columns, got {list(heatmap)}")
    runs = select(runs, where)
    epochs = epochs[epochs["run_dir"].isin(runs["run_dir"])]
    grid = build_grid(runs, by, metric)
    markdown = grid_markdown(runs, grid, by, metric, k=k, target=target, where=where)
    files: dict[str, bytes | None] = {
        "summary.csv": runs.to_csv(index=False, lineterminator="\n").encode(),
        "grid.csv": grid.to_csv(index=False, lineterminator="\n").encode(),
        "summary.md": markdown.encode(),
    }
    if plots:
        from mnist_lab import plots as figures  # matplotlib only when plots are asked for

        files.update(figures.render(runs, epochs, metric=metric, by=by, axes=axes))
    written = write_files(Path(out), files)
    log.info("summarised %d runs into %s", len(runs), Path(out))
    return Summary(runs, epochs, grid, markdown, written)
