"""Records into the one-row-per-run table (summary.csv), and nothing more.

The run record (docs/ARCHITECTURE.md) is the only input: `result.json` as the record reader gives
it (today's form: older versions migrated, unreadable and malformed ones skipped with one warning,
a `running` record whose process died read as `killed`), flattened with `pd.json_normalize` (one
row per run, every key its own column), plus `metrics.csv` for what only the epoch rows know
(converged accuracy, epochs to a target). Columns a reader types come first: the short knobs
(`mnist_lab.config.vocabulary`: the value the run used) and the option picked in each config group
(`model`, `optimizer`, ...).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from mnist_lab.config import vocabulary
from mnist_lab.config.knobs import overridden
from mnist_lab.errors import LabError
from mnist_lab.records.format import METRICS_FILE, RESULT_FILE
from mnist_lab.records.reading import read_record

log = logging.getLogger(__name__)

# summary.csv starts with these (always present, empty where a record lacks them), then the option
# of each config group the records name, then every other flattened key in name order.
FIRST = ("run_id", "section", "sweep", "study", "trial", "status", "reason")
RESULTS = (
    "data.id",
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
# Whole numbers that a missing value would otherwise turn into floats ("16.0") in the CSV.
INTEGERS = ("trial", "epochs_run", "best.epoch", "epochs_to_target", "param_count", "job.num")


class SummaryError(LabError):
    """Input the user can fix (a path, a column, a filter): one line, nothing written."""


def knob_names() -> list[str]:
    return [knob.name for knob in vocabulary.KNOBS]


def find_records(paths: Iterable[str | Path]) -> list[tuple[Path, Path]]:
    """(search root, result.json) for every record under the paths, each file once."""
    found, seen = [], set()
    for root in map(Path, paths):
        if root.is_dir():
            files = sorted(root.rglob(RESULT_FILE))
        elif root.is_file() and root.name == RESULT_FILE:
            files = [root]
        else:
            raise SummaryError(f"no such directory or {RESULT_FILE}: {root}")
        for file in files:
            if file.resolve() not in seen:
                seen.add(file.resolve())
                found.append((root, file))
    return found


def read_epochs(run_dir: Path) -> pd.DataFrame | None:
    """metrics.csv of one run, every column a number; None when it has no row (a run refused or
    failed before epoch 0 leaves none, or the header alone).

    Numbers always: pandas reads a header-only file as text columns, and one such frame made the
    whole concatenated table text, on which numpy's `ceil` of a missing value fails ("cannot
    convert float NaN to integer": the results-wide learning curves were skipped)."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return None
    try:
        epochs = pd.read_csv(path)
    except (OSError, ValueError) as e:  # ValueError covers pandas' parser and empty-data errors
        log.warning("skipping unreadable %s (%s)", path, e)
        return None
    if not len(epochs):
        return None
    text = [c for c in epochs if not pd.api.types.is_numeric_dtype(epochs[c])]
    return epochs.assign(**{c: pd.to_numeric(epochs[c], errors="coerce") for c in text})


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
    trial = record.get("trial") or {}
    if trial.get("study_name"):
        return f"study {trial['study_name']}"
    sweep_dir = (record.get("job") or {}).get("sweep_dir")
    return f"sweep {_relative(root, Path(sweep_dir))}" if sweep_dir else "single runs"


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


def flat_config(record: dict) -> dict:
    """A record's config as dotted keys (`optimizer.lr`), lists kept as lists."""
    flat: dict = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    walk(record.get("config") or {}, "")
    return flat


def epoch_stats(epochs: pd.DataFrame, k: int, target: float) -> pd.DataFrame:
    """Per run_dir: mean test/acc of the last k trained epochs, first epoch reaching target."""
    epochs = epochs.reindex(columns=["run_dir", "epoch", "test/acc"])
    trained = epochs[epochs["epoch"] > 0].sort_values(["run_dir", "epoch"])
    converged = trained.groupby("run_dir").tail(k).groupby("run_dir")["test/acc"].mean()
    reached = epochs[epochs["test/acc"] >= target].groupby("run_dir")["epoch"].min()
    return pd.DataFrame({"converged.test/acc": converged, "epochs_to_target": reached})


def _as_number(values: pd.Series) -> pd.Series:
    """Numbers when every value is one: nullable integers when each is whole, so the CSV says 16
    rather than 16.0; left as they are otherwise (true/false, text)."""
    numbers = pd.to_numeric(values, errors="coerce")
    if (
        values.map(lambda v: isinstance(v, bool)).any()
        or numbers.notna().sum() < values.notna().sum()
    ):
        return values
    return numbers.astype("Int64") if (numbers.dropna() % 1 == 0).all() else numbers.astype(float)


def text(value):
    """Lists (hidden_sizes, overrides) as JSON text: readable in a CSV and hashable for groupby."""
    return json.dumps(value) if isinstance(value, list | dict) else value


def build_runs(records: list[dict], epochs: pd.DataFrame, k: int, target: float) -> pd.DataFrame:
    """summary.csv: every record flattened, the columns a reader types first, rows in a stable
    order."""
    flat = pd.json_normalize(records) if records else pd.DataFrame(columns=["run_dir"])
    configs = [flat_config(r) for r in records]
    shorts = {knob.name: [knob.value(c) for c in configs] for knob in vocabulary.KNOBS}
    groups = sorted({g for r in records for g in (r.get("choices") or {})} - set(shorts))
    shorts |= {g: [(r.get("choices") or {}).get(g) for r in records] for g in groups}
    shorts |= {
        "study": [(r.get("trial") or {}).get("study_name") for r in records],
        "trial": [(r.get("trial") or {}).get("number") for r in records],
        "sweep": [(r.get("job") or {}).get("sweep_dir") for r in records],
    }
    flat = flat.assign(
        **{c: pd.Series(v, index=flat.index, dtype=object) for c, v in shorts.items()}
    )
    for column, missing in (("status", "unknown"), ("section", "single runs")):
        values = flat.get(column, pd.Series(None, index=flat.index))
        flat[column] = values.astype(object).fillna(missing)
    flat = flat.join(epoch_stats(epochs, k, target), on="run_dir")
    for column in flat.columns:
        if pd.api.types.is_object_dtype(flat[column]):
            flat[column] = flat[column].map(text)
    leading = [*FIRST, *knob_names(), *groups, *RESULTS, "job.num"]
    columns = [*leading, *sorted(set(flat.columns) - set(leading))]
    runs = flat.reindex(columns=columns)
    for column in (*INTEGERS, *knob_names()):
        runs[column] = _as_number(runs[column])
    order = ["sweep", "trial", "job.num", "run_id"]
    return runs.sort_values(order, na_position="last", kind="stable", ignore_index=True)


def resolve_column(runs: pd.DataFrame, name: str, option: str) -> str:
    """A summary.csv column by its name, or short for `final.<name>` or `config.<name>`."""
    for candidate in (name, f"final.{name}", f"config.{name}"):
        if candidate in runs.columns:
            return candidate
    raise SummaryError(
        f"{option}: unknown column {name!r} (use a summary.csv column, e.g. hidden, lr, "
        "optimizer, test/acc, converged.test/acc, best.val/acc, model.activation)"
    )


def overridden_columns(runs: pd.DataFrame) -> set[str]:
    """The columns the runs' own overrides set (`lr=0.1`, `optimizer=adam`, `model.dropout=0.3`):
    what the user chose or a sweeper searched, never hidden behind another column."""
    found = set()
    for value in runs.get("overrides", pd.Series(dtype=object)).dropna():
        try:
            overrides = json.loads(value) if isinstance(value, str) else value
        except ValueError:
            continue
        for key in overridden(overrides if isinstance(overrides, list) else []):
            if key.startswith("hydra"):
                continue
            found.add(key if key in runs.columns and "." not in key else f"config.{key}")
    return found
