"""End-to-end: `python experiments/run.py` in a subprocess on real MNIST; the files it leaves."""

from __future__ import annotations

import csv
import json
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import torch
from conftest import METRICS_COLUMNS
from omegaconf import OmegaConf
from PIL import Image

from mnist_lab.config.schema import REPO_ROOT
from mnist_lab.job.task import where_it_is

QUICK = ["epochs=1", "data.train_subset=2000", "trainer.device=cpu"]
# Measured on CPU with seed 0: 1 epoch of the default recipe on 10,000 images gives test accuracy
# 0.881 (seeds 1-3: 0.875-0.882). 0.85 leaves room for numerical differences across machines.
SANE_ACCURACY = 0.85


def read_metrics(run_dir):
    with (run_dir / "metrics.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == METRICS_COLUMNS
        return list(reader)


def read_result(run_dir):
    def refuse(token):
        raise AssertionError(f"bare {token} in result.json")

    return json.loads((run_dir / "result.json").read_text(), parse_constant=refuse)


def assert_no_temp_files(run_dir):
    leftovers = [p.name for p in run_dir.iterdir() if p.name.endswith((".tmp", ".part"))]
    assert not leftovers


def assert_complete_record(run_dir, param_count):
    """Files every job leaves: Hydra's config, metrics.csv and result.json, nothing half-done."""
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    rows = read_metrics(run_dir)
    result = read_result(run_dir)
    assert [int(r["epoch"]) for r in rows] == list(range(result["epochs_run"] + 1))
    assert rows[0]["train/loss"] == rows[0]["train/acc"] == ""
    assert float(rows[0]["val/acc"]) < 0.3  # an untrained model
    assert result["schema_version"] == 2
    assert result["param_count"] == param_count
    assert result["torch_version"] == torch.__version__
    assert result["device"] == "cpu" and result["device_name"]
    assert result["run_dir"] == str(run_dir.resolve())
    assert result["trial"] is None
    assert "hydra" not in result["config"]
    for key in ("started_at", "finished_at"):
        datetime.fromisoformat(result[key])
    assert result["wall_seconds"] > 0
    assert_no_temp_files(run_dir)
    return rows, result


def assert_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) > 100


def test_one_epoch_run_on_real_mnist(run_cli):
    args = [
        "epochs=1",
        "data.train_subset=10000",
        "trainer.device=cpu",
        "trainer.save_figures=true",
    ]
    proc = run_cli(args)
    assert proc.returncode == 0, proc.output
    assert "Traceback" not in proc.output
    assert re.search(r"epoch 0 .*val/acc", proc.output) and re.search(r"epoch 1 ", proc.output)
    assert "step/s" not in proc.output and "it/s" not in proc.output  # no bar outside a terminal

    run_dir = proc.run_dir
    rows, result = assert_complete_record(run_dir, param_count=101770)  # 784-128-10
    composed = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    assert composed.epochs == 1 and composed.data.train_subset == 10000
    assert list(composed.model.hidden_sizes) == [128]

    assert len(rows) == 2
    last = rows[1]
    assert float(last["test/acc"]) > SANE_ACCURACY and float(last["val/acc"]) > SANE_ACCURACY
    assert (
        float(last["train/loss"]) > 0 and float(last["lr"]) == 0.01 and float(last["seconds"]) > 0
    )

    assert result["status"] == "completed" and result["reason"] is None
    assert result["overrides"] == args
    assert result["job"]["multirun"] is False and result["job"]["sweep_dir"] is None
    assert result["epochs_run"] == 1
    assert result["final"]["test/acc"] == float(last["test/acc"])
    assert result["final"]["val/acc"] == float(last["val/acc"])
    assert result["best"] == {  # losses too, so a saved model's evaluation can be compared
        "epoch": 1,
        "val/loss": result["final"]["val/loss"],
        "val/acc": result["final"]["val/acc"],
        "test/loss": result["final"]["test/loss"],
        "test/acc": result["final"]["test/acc"],
    }
    assert result["initial"]["test/acc"] == float(rows[0]["test/acc"])
    assert result["seconds_per_epoch"] > 0
    assert result["n_train"] == 10000 and result["n_val"] == 5000
    assert result["config"]["data"]["train_subset"] == 10000
    assert result["config"]["optimizer"]["lr"] == 0.01

    assert_png(run_dir / "samples.png")
    assert_png(run_dir / "confusion.png")

    # The last lines say where everything is: the folder (relative to the working directory, the
    # command's cwd here), the weights, and the command that evaluates them.
    folder, weights, evaluate = proc.stdout.splitlines()[-3:]
    assert folder == "run folder: run (result.json, metrics.csv, run.log)"
    assert result["weights"] == {"best": "weights_final.pt", "final": "weights_final.pt"}
    assert weights == "weights: run/weights_final.pt (last epoch, also the best on val/acc)"
    assert (run_dir / "weights_final.pt").is_file()
    assert evaluate == f"evaluate: python {REPO_ROOT / 'experiments' / 'evaluate.py'} run"


def test_two_job_multirun_in_dated_sweep_folder(run_cli, tmp_path):
    """With the config's own output folders (relative to cwd = tmp_path, never the repo)."""
    proc = run_cli(["-m", "hidden=16,32", *QUICK], own_dirs=True)
    assert proc.returncode == 0, proc.output
    assert "Traceback" not in proc.output
    sweeps = list((tmp_path / "results" / "multiruns").glob("*/*"))
    assert len(sweeps) == 1, sweeps
    sweep = sweeps[0]
    datetime.strptime(sweep.parent.name, "%Y-%m-%d")  # dated folder
    assert re.fullmatch(r"\d\d-\d\d-\d\d_\d{6}-\d+", sweep.name), sweep.name
    assert not (tmp_path / "results" / "runs").exists()  # sweeps and single runs kept apart
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]

    for num, hidden in enumerate([16, 32]):
        job = sweep / str(num)
        _, result = assert_complete_record(
            job, param_count=784 * hidden + hidden + hidden * 10 + 10
        )
        assert result["status"] == "completed"
        assert f"hidden={hidden}" in result["overrides"]
        assert result["config"]["model"]["hidden_sizes"] == [hidden]
        assert result["job"] == {
            "name": "run",
            "num": num,
            "sweep_dir": str(sweep.resolve()),
            "multirun": True,
        }
        assert not list(job.glob("*.png"))  # figures default to single runs only


def test_runs_started_together_never_share_a_directory(run_cli, tmp_path):
    """Two runs started at once (in the same second) get distinct folders (pid + microseconds).

    The runs are refused early (hidden=0) to keep this fast; they still create their folders and
    records.
    """
    with ThreadPoolExecutor(2) as pool:
        procs = list(
            pool.map(lambda _: run_cli(["hidden=0", "trainer.device=cpu"], own_dirs=True), [0, 1])
        )
    assert all(p.returncode != 0 for p in procs)
    dirs = sorted((tmp_path / "results" / "runs").glob("*/*"))
    assert len(dirs) == 2, dirs
    for d in dirs:
        assert re.fullmatch(r"\d\d-\d\d-\d\d_\d{6}-\d+", d.name), d.name
        datetime.strptime(d.parent.name, "%Y-%m-%d")
        result = read_result(d)
        assert result["status"] == "failed" and result["run_dir"] == str(d.resolve())


def test_single_diverged_run_is_recorded_and_exits_non_zero(run_cli):
    proc = run_cli(
        ["lr=1e6", "epochs=3", "hidden=16", "data.train_subset=500", "trainer.device=cpu"]
    )
    assert proc.returncode != 0, proc.output
    assert "Traceback" not in proc.output
    # Its one line is plain, on stderr, like every error (no log format)
    assert proc.stderr.startswith("run diverged: train/loss became"), proc.output
    assert "[ERROR]" not in proc.output and "run folder:" not in proc.output
    rows, result = assert_complete_record(proc.run_dir, param_count=784 * 16 + 16 + 170)
    assert result["status"] == "diverged"
    assert re.search(r"\b(nan|inf)\b", result["reason"])
    assert result["epochs_run"] == len(rows) - 1 < 3  # stopped early
    assert result["final"]["train/loss"] is None  # NaN recorded as null


def test_bad_and_diverged_jobs_do_not_stop_the_sweep(run_cli):
    """4 jobs: hidden=0 is refused (failed), lr=1e6 diverges, the good job still completes."""
    proc = run_cli(["-m", "lr=1e6,0.01", "hidden=0,16", *QUICK])
    assert proc.returncode == 0, proc.output
    assert "Traceback" not in proc.output
    jobs = sorted(p for p in proc.sweep_dir.iterdir() if p.is_dir())
    assert len(jobs) == 4
    statuses = {}
    for job in jobs:
        result = read_result(job)
        assert_no_temp_files(job)
        key = tuple(o for o in result["overrides"] if o.startswith(("lr=", "hidden=")))
        statuses[tuple(sorted(key))] = (result["status"], result["reason"])
    assert sorted(statuses) == sorted(
        [
            ("hidden=0", "lr=1000000.0"),
            ("hidden=16", "lr=1000000.0"),
            ("hidden=0", "lr=0.01"),
            ("hidden=16", "lr=0.01"),
        ]
    )
    for key, (status, reason) in statuses.items():
        if "hidden=0" in key:
            assert status == "failed" and reason.startswith("model.hidden_sizes[0]=0"), key
        elif "lr=1000000.0" in key:
            assert status == "diverged" and re.search(r"\b(nan|inf)\b", reason), key
        else:
            assert status == "completed" and reason is None, key


def test_a_single_runs_last_lines_name_each_weights_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", [str(REPO_ROOT / "experiments" / "run.py")])
    both = {"best": "weights_best.pt", "final": "weights_final.pt"}
    lines = where_it_is(tmp_path / "r", both, "val/loss", "both").splitlines()
    assert (
        lines[1] == "weights: r/weights_best.pt (best on val/loss), r/weights_final.pt (last epoch)"
    )
    assert lines[2].endswith("experiments/evaluate.py r")
    lines = where_it_is(tmp_path / "r", {"best": None, "final": None}, "val/acc", "none")
    assert lines.splitlines()[1:] == ["weights: none (trainer.save_weights=none)"]
