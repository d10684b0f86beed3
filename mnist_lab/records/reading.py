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

import json
import logging
import os
import socket
from datetime import datetime, timezone
from pathlib import Path

from mnist_lab.records.files import atomic_write_text, clean, now
from mnist_lab.records.format import RESULT_FILE

# A running record from another host is taken for dead after this long without a save: an epoch
# of the models here takes seconds to minutes, so an hour of silence is a lost machine.
STALE_AFTER_SECONDS = 3600

log = logging.getLogger(__name__)


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


# Model classes that moved when mnist_lab was split into rooms: a record written before names the
# old path in `config.model._target_`; it is read as the new one, so old runs still load.
MOVED_TARGETS = {
    "mnist_lab.models.MLP": "mnist_lab.models.mlp.MLP",
    "mnist_lab.scratch.ScratchMLP": "mnist_lab.models.scratch.ScratchMLP",
    "mnist_lab.resmlp.ResMLP": "mnist_lab.models.resmlp.ResMLP",
}


def moved_targets(record: dict) -> dict:
    """The record with a model `_target_` of an earlier layout read as today's path."""
    model = (
        (record.get("config") or {}).get("model")
        if isinstance(record.get("config"), dict)
        else None
    )
    if isinstance(model, dict) and model.get("_target_") in MOVED_TARGETS:
        config = {
            **record["config"],
            "model": {**model, "_target_": MOVED_TARGETS[model["_target_"]]},
        }
        return {**record, "config": config}
    return record


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
    return live_status(moved_targets(data))


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
        data.update(status=status, reason=reason, finished_at=now())
        atomic_write_text(path, json.dumps(clean(data), indent=2) + "\n")
        changed.append(path)
    return changed
