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


# --- older records, read in today's form -------------------------------------------------------

# Model classes that moved when mnist_lab was split into rooms: a record written before names the
# old path in `config.model._target_`; it is read as the new one, so old runs still load.
MOVED_TARGETS = {
    "mnist_lab.models.MLP": "mnist_lab.models.mlp.MLP",
    "mnist_lab.scratch.ScratchMLP": "mnist_lab.models.scratch.ScratchMLP",
    "mnist_lab.resmlp.ResMLP": "mnist_lab.models.resmlp.ResMLP",
}


def moved_targets(record: dict) -> dict:
    """The record with a model `_target_` of an earlier layout read as today's path."""
    model = record["config"].get("model")
    if isinstance(model, dict) and model.get("_target_") in MOVED_TARGETS:
        model = {**model, "_target_": MOVED_TARGETS[model["_target_"]]}
        return {**record, "config": {**record["config"], "model": model}}
    return record


def schema_1(record: dict) -> dict:
    """Schema 1 (before `choices`) named the model in `config.model.name` beside its keys; today
    the option picked in each group is `choices` (the optimizer's is its class, lower-cased:
    `torch.optim.SGD` was picked as `optimizer=sgd`)."""
    if isinstance(record.get("choices"), dict):
        return record
    config = record["config"]
    choices = {}
    model = config.get("model")
    if isinstance(model, dict) and "name" in model:
        choices["model"] = model["name"]
        config = {**config, "model": {k: v for k, v in model.items() if k != "name"}}
    target = (config.get("optimizer") or {}).get("_target_")
    if isinstance(target, str):
        choices["optimizer"] = target.rsplit(".", 1)[-1].lower()
    return {**record, "config": config, "choices": choices}


def before_deskew(record: dict) -> dict:
    """`data.deskew` came later: a record from before trained on the digits as they are."""
    data = record["config"].get("data")
    if isinstance(data, dict) and "deskew" not in data:
        return {**record, "config": {**record["config"], "data": {**data, "deskew": False}}}
    return record


def today(record: dict) -> dict:
    """A record of any earlier version in today's form (docs/ARCHITECTURE.md), so that readers
    know one form only."""
    if not isinstance(record.get("config"), dict):
        return record
    return before_deskew(schema_1(moved_targets(record)))


# --- what a record's fields hold ------------------------------------------------------------------

NUMBER = (int, float)
# The type of each field a reader relies on (null is always allowed: not known, not measured).
FIELDS = {
    "schema_version": int,
    "status": str,
    "reason": str,
    "refused": bool,
    "run_dir": str,
    "job": dict,
    "trial": dict,
    "overrides": list,
    "choices": dict,
    "config": dict,
    "data": dict,
    "epochs_run": int,
    "initial": dict,
    "final": dict,
    "best": dict,
    "stopped_early": dict,
    "weights": dict,
    "param_count": int,
    "wall_seconds": NUMBER,
    "seconds_per_epoch": NUMBER,
    "device": str,
    "writer": dict,
}
# Fields inside them, as (field, key): type.
INSIDE = {
    ("job", "num"): int,
    ("job", "sweep_dir"): str,
    ("trial", "study_name"): str,
    ("trial", "number"): int,
    ("data", "id"): str,
    ("best", "epoch"): int,
}
METRIC_FIELDS = ("initial", "final", "best")  # metric name -> number
KINDS = {
    str: "a string",
    int: "an integer",
    bool: "true or false",
    dict: "an object",
    list: "a list",
}


def _wrong(name: str, value, types) -> str | None:
    """Why `value` does not fit `types` (a bool is not a number here), or None when it does."""
    types = types if isinstance(types, tuple) else (types,)
    if value is None or (
        isinstance(value, types) and (bool in types or not isinstance(value, bool))
    ):
        return None
    kind = "a number" if types == NUMBER else KINDS[types[0]]
    return f"{name}: {json.dumps(value)[:40]} is not {kind}"


def malformed(record: dict) -> str | None:
    """What is wrong with a record's fields (`status: 5 is not a string`), or None if nothing."""
    checks = [(field, record.get(field), types) for field, types in FIELDS.items()]
    if problem := next((p for check in checks if (p := _wrong(*check))), None):
        return problem  # the fields below are read only from objects
    checks = [
        (f"{field}.{key}", (record.get(field) or {}).get(key), types)
        for (field, key), types in INSIDE.items()
    ]
    checks += [
        (f"{field}.{key}", value, NUMBER)
        for field in METRIC_FIELDS
        for key, value in (record.get(field) or {}).items()
        if key != "epoch"
    ]
    checks += [("overrides", value, str) for value in record.get("overrides") or []]
    return next((p for check in checks if (p := _wrong(*check))), None)


def read_record(path: Path, warn: bool = True) -> dict | None:
    """A `result.json` (or the run folder holding one) as a dict in today's form (`today`); None
    when it is missing, unreadable, half-written or malformed (a field of the wrong type), with
    one warning naming it unless `warn` is false. A `running` record whose writer is gone reads
    as `killed` (`live_status`)."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULT_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError covers JSONDecodeError and bad UTF-8
        if warn:
            log.warning("skipping unreadable record %s (%s)", path, e)
        return None
    problem = "not a JSON object" if not isinstance(data, dict) else malformed(data)
    if problem:
        if warn:
            log.warning("skipping malformed record %s (%s)", path, problem)
        return None
    return live_status(today(data))


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
        if not isinstance(data, dict) or malformed(data):
            continue
        if (data.get("writer") or {}).get("host") != host:
            continue
        if live_status(data).get("status") != "killed":
            continue
        data.update(status=status, reason=reason, finished_at=now())
        atomic_write_text(path, json.dumps(clean(data), indent=2) + "\n")
        changed.append(path)
    return changed
