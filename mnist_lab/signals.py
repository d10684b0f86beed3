"""Signals as exceptions: SIGTERM unwinds like Ctrl-C, so every path that records an interrupted
job (the task's record, the sweeper's trials) also records a terminated one.

Contract (docs/ARCHITECTURE.md, exit codes): a run or sweep stopped by SIGINT records the status
`interrupted` and exits 130; one stopped by SIGTERM records `terminated` and exits 143.
"""

from __future__ import annotations


class Terminated(KeyboardInterrupt):
    """SIGTERM received (Slurm, Kubernetes and `timeout` send it before a kill)."""


def stop_status(error: BaseException) -> tuple[str, int]:
    """(record status, exit status) of a run stopped by `error`, a KeyboardInterrupt."""
    if isinstance(error, Terminated):
        return "terminated", 143
    return "interrupted", 130
