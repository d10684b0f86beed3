"""Signals as exceptions: SIGTERM unwinds like Ctrl-C, so every path that records an interrupted
job (the task's record, the sweeper's trials) also records a terminated one.

Contract (docs/ARCHITECTURE.md, exit codes): a run or sweep stopped by SIGINT records the status
`interrupted` and exits 130; one stopped by SIGTERM records `terminated` and exits 143. A second
signal while the first one unwinds (records being written, workers being stopped) exits at once.

Python drops an exception raised while a finalizer or `__del__` runs ("Exception ignored in …"),
so a signal that lands there would be lost and the run would go on: the first signal is also kept
as pending until a stop is handled, and the training loops call `raise_pending` at every step.
"""

from __future__ import annotations

import os
import signal
import sys
import threading


class Terminated(KeyboardInterrupt):
    """SIGTERM received (Slurm, Kubernetes and `timeout` send it before a kill)."""


_pending: int | None = None  # the first signal, until a stop is handled


def _stop(signum: int) -> KeyboardInterrupt:
    return Terminated("SIGTERM") if signum == signal.SIGTERM else KeyboardInterrupt("SIGINT")


def stop_status(error: BaseException) -> tuple[str, int]:
    """(record status, exit status) of a run stopped by `error`, a KeyboardInterrupt.

    Asking is handling the stop: the pending signal is cleared (a joblib worker that recorded its
    job's stop may be handed another job)."""
    global _pending
    _pending = None
    if isinstance(error, Terminated):
        return "terminated", 143
    return "interrupted", 130


def raise_pending() -> None:
    """Raises the stop a first signal asked for if Python swallowed it (see the module's text)."""
    if _pending is not None:
        raise _stop(_pending)


def _again(signum, frame) -> None:
    """A second SIGINT/SIGTERM: the user does not want to wait for the clean-up. The process
    dies of the signal itself (its default action), which a shell reports as 130 / 143."""
    os.write(2, f"stopped at once by a second {signal.Signals(signum).name}\n".encode())
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _first(signum, frame) -> None:
    global _pending
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, _again)
    _pending = signum
    raise _stop(signum)


def _unraisable(unraisable) -> None:
    """Python's report of a dropped exception, except the stop itself: a first signal dropped in
    a finalizer stays pending and stops the run at the next step (no traceback for it)."""
    if _pending is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
        return
    sys.__unraisablehook__(unraisable)


def install() -> None:
    """SIGTERM raises `Terminated`, SIGINT `KeyboardInterrupt`; the next one exits at once.

    Only in the main thread (Python's rule for handlers); a signal the parent process ignores
    (`nohup`, a background job) stays ignored.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if sys.unraisablehook is sys.__unraisablehook__:
        sys.unraisablehook = _unraisable
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, _first)


def install_in_worker() -> None:
    """`install` in a job process no entry point set up (a joblib or submitit worker), so that
    its job records `terminated` too; a no-op where a handler is already set."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        install()


# What a shell shows for a command its reader left (`... | head`): killed by SIGPIPE.
EXIT_PIPE_CLOSED = 128 + signal.SIGPIPE


def stdout_closed() -> int:
    """The reader of standard output went away (`python experiments/summarize.py | head`): there
    is nobody to tell, so nothing more is printed (Python would fail again flushing stdout at
    exit); returns the status of a process that SIGPIPE ended, as `cat` gets."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_PIPE_CLOSED
