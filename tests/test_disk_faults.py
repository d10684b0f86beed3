"""Unwritable or full output locations end a run with one line naming the path and what failed,
never with a traceback or a half-written record; a sweep job whose record cannot be written fails
alone (it returns NaN) and the sweep goes on.

A full disk is simulated in-process (every machine can run that); where this machine lets the
test mount a tiny tmpfs (root on Linux, as in CI), the real thing is tried too.
"""

from __future__ import annotations

import errno
import json
import math
import os
import subprocess
import tempfile
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from mnist_lab.errors import OutputError
from mnist_lab.job.task import run_task
from mnist_lab.records import files

QUICK = ["epochs=3", "data.train_subset=1000", "trainer.device=cpu", "trainer.save_figures=false"]


class FullDisk:
    """Stands in for the `os` module in mnist_lab.records: writes fail once `room` are used up."""

    def __init__(self, room: int, error: int = errno.ENOSPC):
        self.room, self.error = room, error

    def __getattr__(self, name):
        return getattr(os, name)

    def fdopen(self, fd, mode):
        if self.room <= 0:
            os.close(fd)
            raise OSError(self.error, os.strerror(self.error))
        self.room -= 1
        return os.fdopen(fd, mode)


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_atomic_write_names_the_file_and_leaves_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "result.json"
    files.atomic_write_text(target, '{"epoch": 1}\n')
    monkeypatch.setattr(files, "os", FullDisk(room=0))
    with pytest.raises(OutputError, match=rf"cannot write {target}: No space left on device"):
        files.atomic_write_text(target, '{"epoch": 2}\n')
    assert json.loads(target.read_text()) == {"epoch": 1} and _no_temp_files(tmp_path)


def test_single_run_on_a_full_disk_exits_with_one_line(job_config, tmp_path, monkeypatch, caplog):
    cfg = job_config(QUICK)
    out = Path(HydraConfig.get().runtime.output_dir)
    monkeypatch.setattr(files, "os", FullDisk(room=5))  # the disk fills up after epoch 1
    with pytest.raises(SystemExit) as stop:
        run_task(cfg)
    assert stop.value.code == 2
    (message,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert message.startswith(f"cannot write {out}/") and "No space left on device" in message
    record = json.loads((out / "result.json").read_text())  # whole: the last one written
    assert record["status"] == "running" and record["epochs_run"] == 1
    assert _no_temp_files(out)


def test_sweep_job_whose_record_cannot_be_written_fails_alone(
    job_config, tmp_path, monkeypatch, caplog
):
    cfg = job_config([*QUICK, "hydra.mode=MULTIRUN", "hydra.job.num=0"], tmp_path / "job")
    assert HydraConfig.get().mode == RunMode.MULTIRUN
    monkeypatch.setattr(files, "os", FullDisk(room=0, error=errno.EROFS))
    assert math.isnan(run_task(cfg))  # NaN: the sweeper records a failed trial and goes on
    assert any("Read-only file system" in r.getMessage() for r in caplog.records)


def test_output_folder_that_cannot_be_created(run_cli, tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("a file where the output folder should be\n")
    proc = run_cli([*QUICK, f"hydra.run.dir={blocker}/run"], own_dirs=True)
    assert proc.returncode == 2, proc.output
    assert proc.output.strip() == f"cannot write {blocker}/run: Not a directory"


def test_single_run_into_a_read_only_folder(cli_main, read_only_folder):
    code, output = cli_main(*QUICK, f"hydra.run.dir={read_only_folder}")
    assert code == 2 and "Traceback" not in output, output
    (line,) = output.splitlines()
    assert line.startswith(f"cannot write {read_only_folder}/run.log: "), line


def test_optuna_sweep_into_a_read_only_folder_asks_no_trial(cli_main, read_only_folder, tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    args = ["-m", "hparams_search=mlp_optuna", f"hydra.sweeper.storage={storage}", *QUICK]
    code, output = cli_main(*args, f"hydra.sweep.dir={read_only_folder}")
    assert code == 2 and "Traceback" not in output, output
    assert output.splitlines()[-1].startswith(f"cannot write {read_only_folder}: "), output
    assert not (tmp_path / "optuna.db").exists()
    blocker = tmp_path / "results"
    blocker.write_text("a file where the sweep folder should be\n")
    code, output = cli_main(*args, f"hydra.sweep.dir={blocker}/sweep")
    assert code == 2 and output.splitlines()[-1] == f"cannot write {blocker}/sweep: Not a directory"


@pytest.fixture
def tiny_disk():
    """A 16 KiB tmpfs (`mount` needs root on Linux); skipped with the reason elsewhere."""
    folder = Path(tempfile.mkdtemp(prefix="mnist-lab-tiny-"))
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mount.returncode != 0:
        folder.rmdir()
        pytest.skip(f"cannot mount a tmpfs here ({mount.stderr.strip()}); simulated above")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)
    folder.rmdir()


def test_real_full_and_read_only_disk(run_cli, tiny_disk):
    proc = run_cli([*QUICK, f"hydra.run.dir={tiny_disk}/run"], own_dirs=True)
    assert proc.returncode == 2 and "Traceback" not in proc.output, proc.output
    (line,) = [ln for ln in proc.output.splitlines() if "ERROR" in ln or "cannot" in ln]
    assert f"cannot write {tiny_disk}/run/" in line and "No space left on device" in line
    assert not (tiny_disk / "run" / "result.json").exists() or json.loads(
        (tiny_disk / "run" / "result.json").read_text()
    )
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_disk)], check=True)
    proc = run_cli(["-m", *QUICK, f"hydra.sweep.dir={tiny_disk}/sweep"], own_dirs=True)
    assert proc.returncode == 2 and "Traceback" not in proc.output, proc.output
    assert proc.output.splitlines()[-1] == f"cannot write {tiny_disk}/sweep: Read-only file system"
