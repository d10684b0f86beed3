"""Whether the launch can start, asked before any trial: Hydra's launchers check their settings
and make the sweep folder only when they launch a batch, and by then the batch's trials are in
the study (a Slurm launcher on a machine without Slurm left every trial of its first batch FAIL in
a shared study).

Each known launcher gets the check its own start would make; any other launcher is trusted (a
launch that fails tells its batch FAIL with the error as the reason).
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from mnist_lab.job import one_line

from ._errors import SweeperError


def _joblib(cfg: DictConfig) -> None:
    import joblib

    joblib.effective_n_jobs(cfg.get("n_jobs"))  # 0: "n_jobs == 0 in Parallel has no meaning"


def _submitit(cluster: str) -> Callable[[DictConfig], None]:
    def check(cfg: DictConfig) -> None:
        import submitit

        # The executor's constructor is where submitit looks for the cluster (`srun` for Slurm).
        with tempfile.TemporaryDirectory() as folder:
            submitit.AutoExecutor(folder=folder, cluster=cluster)

    return check


# By the launcher class `hydra.launcher._target_` names (the last part of its dotted path).
CHECKS: dict[str, Callable[[DictConfig], None]] = {
    "JoblibLauncher": _joblib,
    "SlurmLauncher": _submitit("slurm"),
    "LocalLauncher": _submitit("local"),
}


def check_launcher(cfg: DictConfig, shown: str) -> None:
    """Refuse in one line (SweeperError) a launcher that cannot start; `shown` names it."""
    check = CHECKS.get(str(cfg.get("_target_", "")).rpartition(".")[2])
    if check is None:
        return
    try:
        check(cfg)
    except Exception as e:
        raise SweeperError(f"{shown} cannot start: {one_line(e)}; no trial was asked") from None


def check_sweep_folder(folder: Path) -> None:
    """The OSError that says why the sweep folder cannot be made or written (one line through
    `mnist_lab.app.cli`, exit 2); checked, not made: the launcher makes it, as always."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        code = errno.ENOTDIR
    elif not os.access(existing, os.W_OK | os.X_OK):
        code = errno.EROFS if os.statvfs(existing).f_flag & os.ST_RDONLY else errno.EACCES
    else:
        return
    raise OSError(code, os.strerror(code), str(folder))
