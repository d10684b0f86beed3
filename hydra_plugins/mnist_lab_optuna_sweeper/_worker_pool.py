"""`hydra.sweeper.workers=N`: the command runs its study in N worker processes of itself.

Each worker is the same command line started again (`worker_command`), so Hydra composes it as
the user's own run: the same config, launcher and callbacks, its jobs ordinary Hydra jobs. What it
is told comes in the environment variable `ROLE_ENV` (its index, the command's id, the trials
the command set out to run) and two overrides: the sweep folder the command resolved (`${now:}`
would differ) and the study's name (an unnamed study gets a random one). A worker asks its next
trial the moment its last one ends (`_batches` with its own batch, one trial by default), so no
worker waits for another's trial; the claims (`_claim`) keep the count exact.

The command's process (`Pool`) opens the study, starts the workers, relays their stderr, forwards
the first Ctrl-C or SIGTERM to them once (they run in their own sessions, so a terminal's Ctrl-C
reaches them only through it: each stops once, recording its trial `interrupted`/`terminated`),
waits for them and reports the study once. A worker stops with the command (Linux:
`PR_SET_PDEATHSIG`), so `kill -9` of the command leaves no worker running; a worker killed alone leaves its trial RUNNING until a sibling's or the command's stale-trial check
fails it (same machine: at once).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from mnist_lab.job import sqlite_path, stop_status

from ._claim import backend, is_exclusive
from ._errors import SweeperError
from ._search_space import quote
from ._study_setup import is_grid, setting

log = logging.getLogger(__name__)

ROLE_ENV = "MNIST_LAB_SWEEP_WORKER"
PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass(frozen=True)
class Role:
    """Who runs the sweep loop in this process: the command itself, or one of its workers."""

    # the command's id, in every trial's `worker` attribute (its failures are counted by it)
    command: str
    index: int | None = None  # the worker's index; None: the command's own process
    planned: int | None = None  # trials the command set out to run (None: count them here)
    parent: int | None = None  # the command's pid

    @property
    def is_worker(self) -> bool:
        return self.index is not None and self.parent is not None


def own_role(devices: Sequence[str] | None) -> Role:
    """The command's role: a new id; worker index 0 when `devices` name its device."""
    return Role(command=uuid.uuid4().hex[:12], index=0 if devices else None)


def role_from_env() -> Role | None:
    """This process's role when the command started it as a worker, else None."""
    raw = os.environ.get(ROLE_ENV)
    if not raw:
        return None
    fields = json.loads(raw)
    return Role(**{k: fields[k] for k in ("command", "index", "planned", "parent")})


def _command_gone(signum: int, frame: Any) -> None:
    """The command's process died: its end of the worker's stderr is closed, so stderr goes to
    /dev/null (a write would fail the clean-up), then the worker stops as if terminated. Once:
    Linux sends the signal again as each of the dying command's threads exits."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    signal.raise_signal(signal.SIGTERM)


def bind_to_parent(role: Role) -> None:
    """A worker stops (as by SIGTERM: its trial FAIL `terminated`) when the command's process
    dies, on Linux by `PR_SET_PDEATHSIG`, and at once if it already has: no worker outlives
    its command."""
    signal.signal(signal.SIGHUP, _command_gone)  # a worker has no terminal: SIGHUP is the parent
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGHUP)
    if os.getppid() != role.parent:
        signal.raise_signal(signal.SIGHUP)


def worker_command(overrides: Sequence[str]) -> list[str]:
    """The command line this process was started with, to start again as a worker.

    `sys.orig_argv` keeps the interpreter's options and `-m module`; when the program replaced
    `sys.argv` (a runner that runs the script in its own process), its `sys.argv` is used. Every
    override Hydra was given must be on it: an app run some other way (a test runner calling the
    task in its own process) cannot be started again, and is refused in one line.
    """
    argv, orig = sys.argv, getattr(sys, "orig_argv", [])
    n = len(argv) - 1
    started = [sys.executable, *orig[1:]] if orig and (n == 0 or orig[-n:] == argv[1:]) else None
    command = started or [sys.executable, *argv]
    missing = [o for o in overrides if o not in command]
    if missing:
        raise SweeperError(
            f"hydra.sweeper.workers starts this command again for each worker, but {missing[0]!r} "
            f"is not on its command line ({' '.join(command[:4])} ...): run the app from a shell"
        )
    return command


def worker_overrides(sweep_dir: str, study_name: str) -> list[str]:
    """What a worker must not resolve on its own: the sweep folder and the study's name."""
    return [
        f"hydra.sweep.dir={quote(os.path.abspath(sweep_dir))}",
        f"hydra.sweeper.study_name={quote(study_name)}",
    ]


def _say(sink: TextIO, line: str) -> None:
    """Pass a worker's line on; a closed or broken stderr here must not stop the reading (a
    worker blocks once a pipe nobody reads is full)."""
    try:
        sink.write(line)
        sink.flush()
    except (OSError, ValueError):
        pass


@dataclass
class Worker:
    index: int
    proc: subprocess.Popen
    relay: threading.Thread | None = None
    last_line: str | None = None  # its stderr's last line: why it ended, when it failed

    def _relay(self, sink: TextIO) -> None:
        """Forward the worker's stderr line by line, holding back the last one: a failing
        worker's last line is its one-line reason, which the command says once for it."""
        assert self.proc.stderr is not None
        last = None
        for line in self.proc.stderr:  # read to the end, whatever happens to the sink
            if last is not None:
                _say(sink, last)
            last = line
        self.last_line = last

    def ended(self) -> str | None:
        """Why the worker ended, if not by finishing its part (None)."""
        code = self.proc.returncode
        if code == 0:
            return None
        who = f"worker {self.index} (pid {self.proc.pid})"
        if code < 0:
            return f"{who} was killed by {signal.Signals(-code).name}"
        said = (self.last_line or "").strip()
        return f"{who} ended with exit status {code}" + (f": {said}" if said else "")


@dataclass
class Pool:
    """The command's worker processes, started together, waited for together."""

    workers: list[Worker] = field(default_factory=list)

    @classmethod
    def start(cls, command: list[str], n: int, role: Role, planned: int) -> Pool:
        env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
        pool = cls()
        sys.stdout.flush()
        try:
            for index in range(n):
                fields = {"command": role.command, "index": index, "planned": planned}
                env[ROLE_ENV] = json.dumps({**fields, "parent": os.getpid()})
                proc = subprocess.Popen(
                    command,
                    env=env,
                    stderr=subprocess.PIPE,
                    text=True,
                    errors="replace",  # a line that is not UTF-8 is still a line
                    start_new_session=True,  # signals reach it through the command only
                )
                worker = Worker(index, proc)
                worker.relay = threading.Thread(
                    target=worker._relay, args=(sys.stderr,), name=f"worker-{index}-stderr"
                )
                worker.relay.start()
                pool.workers.append(worker)
        except BaseException as e:
            pool.stop(signal.SIGTERM)
            raise e
        log.info(
            "started %d workers (pids %s)", n, ", ".join(str(w.proc.pid) for w in pool.workers)
        )
        return pool

    def wait(self) -> None:
        """Wait for every worker; a signal is forwarded to them once, then re-raised here."""
        try:
            for worker in self.workers:
                worker.proc.wait()
        except KeyboardInterrupt as e:
            _, code = stop_status(e)
            self.stop(signal.SIGTERM if code == 143 else signal.SIGINT)
            raise
        finally:
            self._join()

    def stop(self, sig: int) -> None:
        for worker in self.workers:
            if worker.proc.poll() is None:
                worker.proc.send_signal(sig)
        for worker in self.workers:
            worker.proc.wait()
        self._join()

    def _join(self) -> None:
        for worker in self.workers:
            if worker.relay is not None and worker.proc.poll() is not None:
                worker.relay.join()
                worker.relay = None
                if worker.proc.returncode == 0 and worker.last_line:
                    _say(sys.stderr, worker.last_line)  # nothing to explain: pass it on

    def failures(self) -> list[str]:
        """Why workers ended other than by finishing their part, one line each."""
        return [why for why in (w.ended() for w in self.workers) if why is not None]


def pool_message(failures: list[str], finished: int, target: int) -> str:
    """The command's one line when workers failed: the first reason, how many more, the study."""
    more = f" (and {len(failures) - 1} more worker(s))" if len(failures) > 1 else ""
    left = finished < target
    study = f"the study has {finished} of {target} finished trials" + (
        "; rerun the same command to top it up" if left else ""
    )
    return f"{failures[0]}{more}; {study}"


def describe(role: Role, workers: int) -> dict[str, Any]:
    """The worker's part of a trial's `worker` attribute."""
    out: dict[str, Any] = {"command": role.command}
    if role.index is not None:
        out.update(index=role.index, workers=workers)
    return out


def check_shareable(workers: int, sampler: Any, url: str | None) -> None:
    """Refuse in one line what N worker processes cannot share; say what to change."""
    if workers == 1:
        return
    key = f"hydra.sweeper.workers={workers}"
    if url is None or sqlite_path(url) is None and backend(url) == "sqlite":
        raise SweeperError(
            f"{key} needs a storage its worker processes share, e.g. hydra.sweeper.storage="
            "sqlite:///results/optuna.db: a study kept in memory lives in one process"
        )
    if setting(sampler, "_target_") == "optuna.samplers.QMCSampler" and (
        setting(sampler, "seed") is None
    ):
        raise SweeperError(
            f"{key}: the QMC sampler needs hydra.sweeper.sampler.seed: unseeded, each worker "
            "would draw its own sequence, and together they would not cover the space evenly"
        )
    if not is_exclusive(url):
        if is_grid(sampler):
            raise SweeperError(
                f"{key}: the grid sampler shares its grid only through a storage whose claims "
                f"exclude each other (SQLite, PostgreSQL), not {backend(url)}: two workers could "
                "run one point"
            )
        log.warning(
            "%s on %s: trials are claimed without a lock, so the study can end with a trial or "
            "two more than n_trials (exact on SQLite and PostgreSQL)",
            key,
            backend(url),
        )
