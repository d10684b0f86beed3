"""Claiming a trial: counting the study's trials and asking the next one as one step.

`n_trials` counts a study's finished + running trials. Two processes on one study (the workers of
`hydra.sweeper.workers`, or the same command started twice) that count and then ask can both see
one slot left and both ask: the study overshoots (7 trials for n_trials=6 was seen). A claim is an
exclusive lock held from the count to the sampled parameters (`Batches.ask`), taken through what
every process of the study reaches:

- SQLite: a file lock beside the database (`optuna.db.lock`, `filelock`): the processes that
  share a database file share its folder;
- PostgreSQL: a session advisory lock (`pg_advisory_lock`) keyed by the study's name, on a
  connection of its own: it holds across machines, and the server releases it when a process
  dies;
- in memory: a lock of this process (the only one that reaches the study);
- another database: none (`exclusive` is False): a racing ask can still add a trial, and
  `hydra.sweeper.workers` says so.

Held across the sampler's proposal too, so a worker's sampler sees every trial claimed before it
(TPE's constant liar, the grid's next point, QMC's next index).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from mnist_lab.job import sqlite_path

_IN_PROCESS = threading.Lock()


def backend(url: str) -> str:
    """The database a storage URL names: sqlite, postgresql, mysql, ..."""
    from sqlalchemy.engine import make_url

    return make_url(url).get_backend_name()


def is_exclusive(url: str | None) -> bool:
    """Whether claims on this storage exclude each other across processes (or it is in memory)."""
    return url is None or backend(url) in ("sqlite", "postgresql")


def _advisory_key(study_name: str) -> int:
    """A signed 64-bit key for `pg_advisory_lock`, the same in every process for a study."""
    digest = hashlib.sha256(f"mnist_lab claim: {study_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class AdvisoryLock:
    """PostgreSQL's session-level advisory lock on a connection kept for the claims."""

    def __init__(self, url: str, study_name: str):
        self.url, self.key = url, _advisory_key(study_name)
        self.engine: Any = None
        self.connection: Any = None

    @contextmanager
    def held(self) -> Iterator[None]:
        from sqlalchemy import create_engine, text

        if self.connection is None:
            self.engine = create_engine(self.url, pool_pre_ping=True)
            self.connection = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        self.connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": self.key})
        try:
            yield
        finally:
            self.connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self.key})

    def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()
            self.engine = self.connection = None


class Claim:
    """`with claim.held():` around a count and an ask; `close()` when the sweep ends."""

    def __init__(self, url: str | None, study_name: str):
        self.advisory: AdvisoryLock | None = None
        self.lock: Any = None  # a file lock, this process's lock, or None (no exclusive claim)
        path = sqlite_path(url)
        if path is not None:
            from filelock import FileLock

            self.lock = FileLock(f"{path}.lock")
        elif url is None or backend(url) == "sqlite":  # in memory: one process reaches it
            self.lock = _IN_PROCESS
        elif backend(url) == "postgresql":
            self.advisory = AdvisoryLock(url, study_name)

    def held(self) -> Any:
        if self.advisory is not None:
            return self.advisory.held()
        return self.lock if self.lock is not None else nullcontext()

    def close(self) -> None:
        if self.advisory is not None:
            self.advisory.close()
