"""Workers and stale trials: each trial carries its sweeper's identity and a heartbeat, so a
rerun (or a concurrent worker) can fail the trials a killed sweeper left RUNNING (`stale_reason`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ._telling import Outcome, job_record, record_attrs, record_outcome, tell_outcome

log = logging.getLogger(__name__)


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def this_worker() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pidns": _pid_namespace(), "pid": os.getpid()}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True
    return True


def failed_by(study: optuna.Study, command: str) -> list[FrozenTrial]:
    """The study's failed trials that this command's workers ran (their `worker.command`)."""
    return [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        if (t.user_attrs.get("worker") or {}).get("command") == command
    ]


def now() -> datetime:
    return datetime.now(timezone.utc)


def stale_reason(
    trial: FrozenTrial,
    now: datetime,
    grace_period: float,
    here: Mapping[str, Any],
    mine: set[int] = frozenset(),  # type: ignore[assignment]
) -> str | None:
    """Why a RUNNING trial is left over from a dead worker, or None if it may still be alive.

    Each trial carries its sweeper's identity (`worker`: host, pid namespace, pid) and a
    `heartbeat_at` time the sweeper refreshes while the trial runs. A trial is stale when
    - its worker ran on this host in this pid namespace and that process no longer exists
      (immediate, exact: a rerun after a crash or `kill -9` cleans up at once), or
    - its worker is elsewhere and its heartbeat is older than `grace_period` (other machines,
      other containers; the grace absorbs clock skew and a sweeper blocked on a busy database).
    A live concurrent worker keeps its trials: its process exists, or its heartbeat is fresh.
    Trials without our attributes (made by other tools) are never touched.
    """
    worker = trial.user_attrs.get("worker")
    if trial.state != TrialState.RUNNING or trial.number in mine or not isinstance(worker, dict):
        return None
    same_machine = worker.get("host") == here["host"] and worker.get("pidns") == here["pidns"]
    if same_machine and here["pidns"]:
        pid = int(worker.get("pid", -1))
        if pid == here["pid"]:
            return "left running by an earlier sweep in this process"
        if not _pid_alive(pid):
            return f"its sweeper (pid {pid} on {worker['host']}) is gone"
        return None
    try:
        beat = datetime.fromisoformat(str(trial.user_attrs.get("heartbeat_at")))
    except ValueError:
        return None
    age = (now - beat).total_seconds()
    if age > grace_period:
        return f"no heartbeat from {worker.get('host')} pid {worker.get('pid')} for {age:.0f} s"
    return None


def fail_stale(
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    grace_period: float,
    here: Mapping[str, Any],
    in_flight: set[int],
) -> None:
    """Tell every RUNNING trial left over from a dead worker: what its job's record says when
    the job finished (COMPLETE with its values, or why it failed), else FAIL (`stale: ...`)."""
    at = now()
    study_id = None
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reason = stale_reason(trial, at, grace_period, here, in_flight)
        if reason is None:
            continue
        run_dir = trial.user_attrs.get("run_dir")
        record = job_record(Path(run_dir)) if run_dir else None
        outcome = record_outcome(record, len(study.directions))
        if outcome is None:
            outcome, attrs = Outcome(TrialState.FAIL, None, f"stale: {reason}"), {"status": "stale"}
        else:  # the job finished before its sweeper was lost: its record is the truth
            attrs = record_attrs(record)
            log.info(
                "trial %d: %s; its job's record says %s", trial.number, reason, record["status"]
            )
        try:
            if study_id is None:
                study_id = storage.get_study_id_from_name(study.study_name)
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            tell_outcome(
                study, trial, outcome, attrs, partial(storage.set_trial_user_attr, trial_id)
            )
        except Exception as e:  # another worker failed or finished it first
            log.debug("stale trial %d: %s", trial.number, e)


class Heartbeat:
    """Refreshes `heartbeat_at` of the trials in flight while a batch runs."""

    def __init__(self, trials: Sequence[optuna.Trial], interval: float):
        self.trials, self.interval = list(trials), interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="optuna-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            for trial in self.trials:
                try:
                    trial.set_user_attr("heartbeat_at", now().isoformat())
                except Exception as e:  # finished meanwhile, or the database is busy
                    log.debug("heartbeat of trial %d: %s", trial.number, e)

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()
