"""A run's record: metrics.csv (a row per epoch) and result.json, always written whole.

Every write goes to a temp file in the same directory and is then renamed over the target, so a
crash or a reader racing the writer never sees half a file. The record is rewritten after every
epoch, so a run killed mid-way still leaves everything it measured.

A record names its writer (host, pid and the process's start time) and when it was last saved
(`updated_at`). A process killed outright (`kill -9`, out of memory) cannot mark its record, so
`read_record` does: a `running` record whose writer is gone is read as `killed` (on the writer's
host: its pid no longer runs, or runs another process; on other hosts: no save for STALE_AFTER).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import socket
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from mnist_lab.errors import OutputError

RESULT_FILE = "result.json"
METRICS_FILE = "metrics.csv"
# Trained weights (mnist_lab.weights writes them; result.json's `weights` names those that exist).
WEIGHTS_FILES = {"best": "weights_best.pt", "final": "weights_final.pt"}
METRICS_COLUMNS = (
    "epoch",
    "train/loss",
    "train/acc",
    "val/loss",
    "val/acc",
    "test/loss",
    "test/acc",
    "lr",
    "seconds",
)
METRIC_KEYS = METRICS_COLUMNS[1:7]  # what an epoch measures: train/val/test loss and accuracy
EVAL_KEYS = METRICS_COLUMNS[3:7]  # what an evaluation measures: val/test loss and accuracy
# 2: `config.model` holds the chosen model's own keys and its `_target_` (no `name`); `choices`
# names the option picked in each config group (`choices.model`: mlp, scratch, resmlp, ...).
SCHEMA_VERSION = 2
# A running record from another host is taken for dead after this long without a save: an epoch
# of the models here takes seconds to minutes, so an hour of silence is a lost machine.
STALE_AFTER_SECONDS = 3600

log = logging.getLogger(__name__)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write whole or not at all: temp file in the same folder, then rename over the target.

    Raises `OutputError` (one line naming the file and what failed) when the disk refuses.
    """
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
            f.write(data)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and not isinstance(e, OutputError):
            raise OutputError(f"cannot write {path}: {e.strerror or e}") from e
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _clean(value):
    """JSON has no NaN: unmeasured or non-finite metrics become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _process_start(pid: int) -> str | None:
    """When a process started (clock ticks since boot, Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the name before ")" may hold spaces


def writer() -> dict:
    """The current process as a record's writer."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "process_start": _process_start(pid)}


def _alive(who: dict) -> bool:
    """Whether the writer process (on this host) still runs."""
    pid = who.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return True  # nothing to check against: do not guess
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # runs, under another user
    started = who.get("process_start")
    return started is None or _process_start(pid) in (None, started)


def _stale(updated_at) -> bool:
    try:
        updated = datetime.fromisoformat(updated_at)
    except (TypeError, ValueError):
        return False
    return (datetime.now(timezone.utc) - updated).total_seconds() > STALE_AFTER_SECONDS


def live_status(record: dict) -> dict:
    """The record, with `running` read as `killed` once its writer is gone (see the docstring)."""
    who = record.get("writer")
    if record.get("status") != "running" or not isinstance(who, dict):
        return record
    if who.get("host") == socket.gethostname():
        if _alive(who):
            return record
        why = f"its process (pid {who.get('pid')}) ended without finishing the record"
    elif _stale(record.get("updated_at")):
        why = f"no update from {who.get('host')} since {record.get('updated_at')}"
    else:
        return record
    return {**record, "status": "killed", "reason": why}


def read_record(path: Path, warn: bool = True) -> dict | None:
    """A `result.json` (or the run folder holding one) as a dict; None when it is missing,
    unreadable or half-written (with one warning naming it, unless `warn` is false).
    A `running` record whose writer is gone reads as `killed` (`live_status`)."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULT_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError covers JSONDecodeError and bad UTF-8
        if warn:
            log.warning("skipping unreadable record %s (%s)", path, e)
        return None
    if not isinstance(data, dict):
        if warn:
            log.warning("skipping record %s (not a JSON object)", path)
        return None
    return live_status(data)


class RunRecord:
    """Collects epoch rows and run facts; `save()` rewrites both files from them."""

    def __init__(self, run_dir: Path, facts: dict):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict] = []
        self.facts = {"schema_version": SCHEMA_VERSION, "status": "running", "reason": None}
        self.facts.update(facts)
        self.facts["started_at"] = _now()
        self.facts["writer"] = writer()

    def add_epoch(self, epoch: int, row: dict) -> None:
        self.rows.append(row)
        self.save()

    def summary(self) -> dict:
        trained = [r for r in self.rows if r["epoch"] > 0]
        initial = self.rows[0] if self.rows else {}
        final = trained[-1] if trained else {}
        with_val = [r for r in trained if math.isfinite(r.get("val/acc", math.nan))]
        best = max(with_val, key=lambda r: r["val/acc"]) if with_val else final
        seconds = [r["seconds"] for r in trained]
        return {
            "epochs_run": len(trained),
            "initial": {k: initial.get(k) for k in EVAL_KEYS},
            "final": {k: final.get(k) for k in METRIC_KEYS},
            "best": {"epoch": best.get("epoch"), **{k: best.get(k) for k in EVAL_KEYS}},
            "train_seconds": sum(seconds),
            "eval_seconds": sum(r.get("eval_seconds", 0.0) for r in self.rows),
            "seconds_per_epoch": sum(seconds) / len(seconds) if seconds else None,
        }

    def save(self) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=METRICS_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(
            {k: ("" if _clean(v) is None else v) for k, v in r.items()} for r in self.rows
        )
        atomic_write_text(self.run_dir / METRICS_FILE, buffer.getvalue())
        result = {**self.facts, **self.summary(), "updated_at": _now()}
        atomic_write_text(self.run_dir / RESULT_FILE, json.dumps(_clean(result), indent=2) + "\n")

    def finish(self, status: str, reason: str | None = None, **facts) -> None:
        self.facts.update(status=status, reason=reason, finished_at=_now(), **facts)
        self.save()


def mark_stopped(folder: Path, status: str, reason: str) -> list[Path]:
    """Records under `folder` whose writer on this host is gone while they say `running` get
    `status` (a signal's `interrupted` / `terminated`) instead of reading as `killed`.

    A sweep stopped by a signal has its launcher kill the worker processes (joblib's loky uses
    SIGKILL), which leaves their records `running`; the sweep process calls this on its way out,
    so that every record it leaves says why it stopped. A live job is never touched.
    """
    changed = []
    host = socket.gethostname()
    for path in sorted(Path(folder).rglob(RESULT_FILE)):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict) or (data.get("writer") or {}).get("host") != host:
            continue
        if live_status(data).get("status") != "killed":
            continue
        data.update(status=status, reason=reason, finished_at=_now())
        atomic_write_text(path, json.dumps(_clean(data), indent=2) + "\n")
        changed.append(path)
    return changed
