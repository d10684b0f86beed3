"""Summaries of run records: summary.csv rows, the grid, plots, the callback and the CLI.

Synthetic records (written by `write_run` below into tmp_path, in the format of
docs/ARCHITECTURE.md) cover completed, failed, diverged and pruned runs, an Optuna study, a record
from an older version with missing keys and a half-written one. The end-to-end test runs a real
2x2 multirun through experiments/run.py. Nothing is written into the repository's results/.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import hydra.utils
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from mnist_lab import records, summary
from mnist_lab.callbacks import SummarizeCallback
from mnist_lab.config import REPO_ROOT
from mnist_lab.records import METRICS_COLUMNS
from mnist_lab.summary import SummaryError, summarize

SUMMARIZE_PY = REPO_ROOT / "experiments" / "summarize.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOTS = ("learning_curves.png", "heatmap_hidden_lr.png", "accuracy_vs_time.png")
OUTPUTS = ("summary.csv", "grid.csv", "summary.md", *PLOTS)
SETTINGS = {
    "by": ["hidden", "lr", "batch_size", "epochs"],
    "metric": "test/acc",
    "k": 3,
    "target": 0.97,
    "heatmap": ["hidden", "lr"],
    "plots": True,
}


# --- synthetic records ---------------------------------------------------------------------------


def write_run(
    run_dir: Path,
    test_acc: list,
    *,
    status: str = "completed",
    hidden: int = 16,
    lr: float = 0.1,
    seed: int = 0,
    sweep_dir: Path | None = None,
    num: int | None = None,
    trial: dict | None = None,
    reason: str | None = None,
) -> dict:
    """A run record as mnist_lab.task writes it: metrics.csv rows for epochs 0.. and result.json.

    `test_acc` holds the test accuracy of epochs 1..n (None: not measured, e.g. after divergence);
    epoch 0 is the untrained model at 0.1. An empty list writes no metrics.csv (failed early).
    """
    run_dir.mkdir(parents=True)
    accs = [0.1, *test_acc]
    rows = [
        {
            "epoch": epoch,
            "train/loss": None if epoch == 0 or acc is None else 1 - acc + 0.05,
            "train/acc": None if epoch == 0 or acc is None else acc + 0.01,
            "val/loss": None if acc is None else 1 - acc + 0.02,
            "val/acc": None if acc is None else acc - 0.01,
            "test/loss": None if acc is None else 1 - acc,
            "test/acc": acc,
            "lr": None if epoch == 0 else lr,
            "seconds": 0.0 if epoch == 0 else 0.5,
        }
        for epoch, acc in enumerate(accs)
    ]
    if test_acc:
        pd.DataFrame(rows, columns=METRICS_COLUMNS).to_csv(run_dir / "metrics.csv", index=False)
    last = rows[-1] if test_acc else {}
    final = {key: last.get(key) for key in METRICS_COLUMNS[1:7]}
    record = {
        "schema_version": 1,
        "status": status,
        "reason": reason,
        "run_dir": str(run_dir),
        "job": {
            "name": "run",
            "num": num,
            "sweep_dir": str(sweep_dir) if sweep_dir else None,
            "multirun": sweep_dir is not None,
        },
        "trial": trial,
        "overrides": [f"hidden={hidden}", f"lr={lr}", f"seed={seed}"],
        "config": {
            "data": {"normalize": "mnist", "batch_size": 32, "train_subset": None},
            "model": {"name": "mlp", "hidden_sizes": [hidden], "activation": "relu"},
            "optimizer": {"_target_": "torch.optim.SGD", "lr": lr, "momentum": 0.0},
            "trainer": {"epochs": 3, "seed": seed},
            "hidden": hidden,
            "lr": lr,
            "batch_size": 32,
            "epochs": 3,
            "seed": seed,
            "preset": None,
        },
        "epochs_run": len(test_acc),
        "initial": {"val/loss": 2.3, "val/acc": 0.1, "test/loss": 2.3, "test/acc": 0.1},
        "final": final,
        "best": {
            "epoch": len(test_acc),
            "val/acc": final["val/acc"],
            "test/acc": final["test/acc"],
        },
        "param_count": None if status == "failed" else 785 * hidden + 10 * hidden + 10,
        "wall_seconds": 1.0 + hidden / 16,
        "seconds_per_epoch": 0.5 if test_acc else None,
        "device": None if status == "failed" else "cpu",
        "device_name": None if status == "failed" else "x86_64",
        "torch_version": "2.14.1",
        "started_at": "2026-11-23T06:00:00+00:00",
        "finished_at": "2026-11-23T06:00:02+00:00",
    }
    (run_dir / "result.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def write_old_run(run_dir: Path) -> None:
    """A record from an older version: no short knobs, no schema_version, job, trial or best."""
    run_dir.mkdir(parents=True)
    pd.DataFrame({"epoch": [0, 1, 2, 3], "test/acc": [0.1, 0.88, 0.89, 0.9]}).to_csv(
        run_dir / "metrics.csv", index=False
    )
    record = {
        "status": "completed",
        "config": {
            "data": {"batch_size": 64},
            "model": {"hidden_sizes": [128]},
            "optimizer": {"_target_": "torch.optim.SGD", "lr": 0.01},
            "trainer": {"epochs": 3, "seed": 0},
        },
        "final": {"test/acc": 0.9, "test/loss": 0.35},
        "wall_seconds": 9.0,
    }
    (run_dir / "result.json").write_text(json.dumps(record))


@pytest.fixture
def lab(tmp_path) -> Path:
    """tmp_path/results with two sweeps (one an Optuna study), an old record and a broken one."""
    results = tmp_path / "results"
    a = results / "multiruns" / "A"
    write_run(a / "0", [0.90, 0.92, 0.94], seed=0, sweep_dir=a, num=0)
    write_run(a / "1", [0.91, 0.95, 0.96], seed=1, sweep_dir=a, num=1)
    write_run(a / "2", [0.95, 0.97, 0.975], hidden=32, sweep_dir=a, num=2)
    write_run(
        a / "3",
        [0.5, None],
        hidden=32,
        lr=0.5,
        status="diverged",
        reason="loss is nan at epoch 2",
        sweep_dir=a,
        num=3,
    )
    write_run(
        a / "4",
        [],
        hidden=64,
        lr=0.05,
        status="failed",
        reason="DataError: MNIST files missing",
        sweep_dir=a,
        num=4,
    )
    b = results / "multiruns" / "B"
    study = {"study_name": "s", "number": 0}
    write_run(b / "0", [0.96, 0.97, 0.98], hidden=32, sweep_dir=b, num=0, trial=study)
    write_run(
        b / "1",
        [0.3],
        hidden=32,
        lr=0.001,
        status="pruned",
        reason="pruned at epoch 1",
        sweep_dir=b,
        num=1,
        trial={**study, "number": 1},
    )
    write_old_run(results / "runs" / "old")
    broken = results / "runs" / "broken"
    broken.mkdir(parents=True)
    (broken / "result.json").write_text('{"status": "compl')
    return results


def run(paths, out, **overrides):
    return summarize(paths, out, **{**SETTINGS, **overrides})


def read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=True)


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 1000
    with Image.open(path) as image:
        image.verify()


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# --- summary.csv ---------------------------------------------------------------------------------


def test_summary_has_one_row_per_readable_record(lab, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="mnist_lab.summary"):
        result = run([lab], tmp_path / "out")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(lab / "runs" / "broken" / "result.json") in warnings[0]

    runs = read_csv(tmp_path / "out" / "summary.csv")
    assert len(runs) == len(result.runs) == 8
    assert list(runs.columns[: len(summary.LEADING)]) == list(summary.LEADING)
    assert runs["run_id"].tolist() == [
        "multiruns/A/0",
        "multiruns/A/1",
        "multiruns/A/2",
        "multiruns/A/3",
        "multiruns/A/4",
        "multiruns/B/0",
        "multiruns/B/1",
        "runs/old",
    ]
    assert runs["status"].tolist() == ["completed"] * 3 + ["diverged", "failed"] + [
        "completed",
        "pruned",
        "completed",
    ]
    assert runs["hidden"].tolist() == [16, 16, 32, 32, 64, 32, 32, 128]
    assert runs["lr"].tolist() == [0.1, 0.1, 0.1, 0.5, 0.05, 0.1, 0.001, 0.01]
    assert runs["seed"].tolist() == [0, 1, 0, 0, 0, 0, 0, 0]
    assert runs["batch_size"].tolist() == [32] * 7 + [64]
    assert set(runs["optimizer"]) == {"SGD"}
    assert (
        runs["sweep"].tolist()[:7]
        == [str(lab / "multiruns" / "A")] * 5 + [str(lab / "multiruns" / "B")] * 2
    )
    assert runs["study"].tolist()[5:7] == ["s", "s"] and runs["trial"].tolist()[5:7] == [0, 1]
    assert runs["run_dir"].tolist()[0] == str((lab / "multiruns" / "A" / "0").resolve())
    assert runs["reason"][3] == "loss is nan at epoch 2"
    # every hyperparameter flattened into its own column
    assert runs["config.optimizer.momentum"][0] == 0.0
    assert runs["config.model.hidden_sizes"][0] == "[16]"
    assert runs["hidden_sizes"].astype(str).tolist()[:3] == ["16", "16", "32"]


def test_derived_columns(lab, tmp_path):
    runs = run([lab], tmp_path / "out").runs.set_index("run_id")
    assert runs.loc["multiruns/A/0", "final.test/acc"] == pytest.approx(0.94)
    assert runs.loc["multiruns/A/0", "converged.test/acc"] == pytest.approx(0.92)
    assert runs.loc["multiruns/A/2", "converged.test/acc"] == pytest.approx(0.965)
    assert runs.loc["multiruns/A/2", "epochs_to_target"] == 2
    assert pd.isna(runs.loc["multiruns/A/0", "epochs_to_target"])
    assert runs.loc["multiruns/A/3", "converged.test/acc"] == pytest.approx(0.5)  # nan skipped
    assert pd.isna(runs.loc["multiruns/A/4", "converged.test/acc"])  # no metrics.csv at all
    assert pd.isna(runs.loc["multiruns/A/4", "param_count"])
    assert runs.loc["multiruns/A/0", "param_count"] == 12730
    assert runs.loc["runs/old", "converged.test/acc"] == pytest.approx(0.89)
    # k and target are settings
    other = run([lab], tmp_path / "other", k=1, target=0.95).runs.set_index("run_id")
    assert other.loc["multiruns/A/0", "converged.test/acc"] == pytest.approx(0.94)
    assert other.loc["multiruns/A/1", "epochs_to_target"] == 2


def test_old_record_with_missing_keys_is_read(lab, tmp_path):
    old = run([lab], tmp_path / "out").runs.set_index("run_id").loc["runs/old"]
    assert (old["hidden"], old["lr"], old["batch_size"], old["epochs"]) == (128, 0.01, 64, 3)
    assert old["status"] == "completed" and old["final.test/acc"] == 0.9
    assert pd.isna(old["sweep"]) and pd.isna(old["trial"]) and pd.isna(old["seconds_per_epoch"])


# --- the grid ------------------------------------------------------------------------------------


def test_grid_is_mean_std_count_over_completed_runs(lab, tmp_path):
    run([lab], tmp_path / "out")
    grid = read_csv(tmp_path / "out" / "grid.csv")
    assert list(grid.columns) == [
        "hidden",
        "lr",
        "batch_size",
        "epochs",
        "final.test/acc % mean",
        "final.test/acc % std",
        "n",
        "best",
    ]
    assert grid[["hidden", "lr", "batch_size", "epochs"]].values.tolist() == [
        [16, 0.1, 32, 3],
        [32, 0.1, 32, 3],
        [128, 0.01, 64, 3],
    ]
    assert grid["final.test/acc % mean"].tolist() == pytest.approx([95.0, 97.75, 90.0])
    assert grid["final.test/acc % std"].tolist()[:2] == pytest.approx(
        [math.sqrt(2), math.sqrt(2) / 4]
    )
    assert math.isnan(grid["final.test/acc % std"][2])  # one run: no spread
    assert grid["n"].tolist() == [2, 2, 1]
    assert grid["best"].fillna("").tolist() == ["", summary.BEST_MARK, ""]


def test_markdown_grid_reads_like_the_lab_table(lab, tmp_path):
    result = run([lab], tmp_path / "out")
    text = (tmp_path / "out" / "summary.md").read_text()
    assert text == result.markdown
    rows = [line for line in text.splitlines() if line.startswith("|")]
    assert len(rows) == 2 + 3  # header, rule, one line per grid row
    assert "hidden" in rows[0] and "final.test/acc % (mean ± std)" in rows[0]
    assert "95.00 ± 1.41" in rows[2] and "97.75 ± 0.35" in rows[3] and "★" in rows[3]
    assert "| 90.00 " in rows[4] or " 90.00 |" in rows[4]
    assert "Runs: 5 completed, 1 diverged, 1 failed, 1 pruned." in text


def test_where_filters_the_runs(lab, tmp_path):
    study = run([lab], tmp_path / "study", where="study == 's'")
    assert study.runs["run_id"].tolist() == ["multiruns/B/0", "multiruns/B/1"]
    assert study.grid[["hidden", "n"]].values.tolist() == [[32, 1]]
    assert study.grid["final.test/acc % mean"][0] == pytest.approx(98.0)
    run([lab], tmp_path / "done", where="status == 'completed'")
    assert len(read_csv(tmp_path / "done" / "summary.csv")) == 5
    both = run([lab], tmp_path / "both", where="`final.test/acc` > 0.95 and seed == 0")
    assert both.runs["run_id"].tolist() == ["multiruns/A/2", "multiruns/B/0"]


def test_other_grouping_and_metrics(lab, tmp_path):
    by_activation = run([lab], tmp_path / "a", by=["model.activation"], metric="converged.test/acc")
    grid = by_activation.grid
    # the old record has no activation: a row of its own, after the others
    assert grid["config.model.activation"].fillna("").tolist() == ["relu", ""]
    assert grid["converged.test/acc % mean"][0] == pytest.approx((92 + 94 + 96.5 + 97) / 4)
    assert grid["n"].tolist() == [4, 1]
    loss = run([lab], tmp_path / "b", metric="test/loss").grid
    assert loss["final.test/loss mean"].tolist() == pytest.approx([0.05, 0.0225, 0.35])
    assert loss["best"].tolist() == ["", summary.BEST_MARK, ""]  # lowest loss is best


def test_bad_input_writes_nothing(lab, tmp_path):
    out = tmp_path / "out"
    cases = {
        "--by": dict(by=["hidden", "nope"]),
        "--metric": dict(metric="nope"),
        "--where": dict(where="hidden >>"),
        "--heatmap": dict(heatmap=["hidden", "nope"]),
    }
    for option, overrides in cases.items():
        with pytest.raises(SummaryError, match=option):
            run([lab], out, **overrides)
    with pytest.raises(SummaryError, match="no such directory"):
        run([lab, tmp_path / "missing"], out)
    with pytest.raises(SummaryError, match="--where"):
        run([lab], out, where="unknown_column == 1")
    assert not out.exists()


# --- files: idempotent, atomic, plots ------------------------------------------------------------


def test_rerun_writes_identical_files_and_no_temp_files(lab, tmp_path):
    out = tmp_path / "out"
    run([lab], out)
    first = snapshot(out)
    assert sorted(first) == sorted(OUTPUTS)
    run([lab], out)
    assert snapshot(out) == first  # byte-identical, PNGs included
    assert not [name for name in os.listdir(out) if name.startswith(".") or ".tmp" in name]


def test_failed_write_leaves_old_file_and_no_temp(lab, tmp_path, monkeypatch):
    out = tmp_path / "out"
    run([lab], out, plots=False)
    before = snapshot(out)

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(records.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        run([lab], out, plots=False, where="seed == 1")
    assert snapshot(out) == before


def test_plots_are_valid_pngs(lab, tmp_path):
    run([lab], tmp_path / "out")
    for name in PLOTS:
        assert_png(tmp_path / "out" / name)


def test_single_run_and_no_completed_run(lab, tmp_path, caplog):
    single = tmp_path / "single"
    run([lab / "multiruns" / "A" / "0"], single)
    for name in PLOTS:
        assert_png(single / name)
    assert len(read_csv(single / "grid.csv")) == 1

    out = tmp_path / "none"
    run([lab], out)
    with caplog.at_level(logging.INFO, logger="mnist_lab.plots"):
        result = run([lab], out, where="status != 'completed'")
    assert len(result.runs) == 3 and result.grid.empty
    assert "(no completed runs)" in (out / "summary.md").read_text()
    assert_png(out / "learning_curves.png")  # the diverged and pruned runs still have curves
    assert not (out / "heatmap_hidden_lr.png").exists()  # stale figures are removed
    assert not (out / "accuracy_vs_time.png").exists()
    assert "heatmap skipped" in caplog.text

    failed = tmp_path / "failed"
    run([lab], failed, where="status == 'failed'")  # no metrics at all: every plot skipped
    assert sorted(os.listdir(failed)) == ["grid.csv", "summary.csv", "summary.md"]


def test_empty_folder_gives_empty_tables(tmp_path):
    result = run([tmp_path], tmp_path / "out")
    assert result.runs.empty and result.grid.empty
    assert list(read_csv(tmp_path / "out" / "summary.csv").columns)[:3] == [
        "run_id",
        "sweep",
        "study",
    ]


# --- the Hydra callback --------------------------------------------------------------------------


def hydra_config(sweep_dir: Path):
    return OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}})


def test_callback_summarises_sweep_and_results_root(lab):
    callback = SummarizeCallback(results_root=str(lab), **SETTINGS)
    sweep = lab / "multiruns" / "B"
    callback.on_multirun_end(hydra_config(sweep))
    assert len(read_csv(sweep / "summary.csv")) == 2
    assert len(read_csv(lab / "summary.csv")) == 8
    for name in PLOTS:
        assert_png(lab / name)


def test_callback_never_fails_the_sweep(lab, tmp_path, caplog, monkeypatch):
    sweep = lab / "multiruns" / "A"
    bad = SummarizeCallback(results_root=str(tmp_path / "nowhere"), **{**SETTINGS, "by": ["nope"]})
    with caplog.at_level(logging.INFO):
        bad.on_multirun_end(hydra_config(sweep))
    assert "could not summarise" in caplog.text and "nope" in caplog.text
    assert not (sweep / "summary.csv").exists()
    assert not (tmp_path / "nowhere").exists()

    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(summary, "summarize", explode)
    SummarizeCallback(results_root=str(lab), **SETTINGS).on_multirun_end(hydra_config(sweep))
    SummarizeCallback(results_root=str(lab), **SETTINGS).on_multirun_end(OmegaConf.create({}))
    assert "boom" in caplog.text


def test_config_node_instantiates_the_callback():
    """conf/config.yaml's hydra.callbacks.summarize is the one source of the summary defaults."""
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True)
    callback = hydra.utils.instantiate(cfg.hydra.callbacks.summarize)
    assert isinstance(callback, SummarizeCallback)
    assert callback.options == SETTINGS and callback.results_root == Path("results")


# --- the CLI -------------------------------------------------------------------------------------


def summarize_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SUMMARIZE_PY), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_defaults_summarise_results_into_results(lab, tmp_path):
    proc = summarize_cli(cwd=tmp_path)  # default path and out: results/ under the cwd
    assert proc.returncode == 0, proc.stderr
    assert "97.75 ± 0.35" in proc.stdout and "★" in proc.stdout
    for name in OUTPUTS:
        assert (lab / name).is_file()
    assert len(read_csv(lab / "summary.csv")) == 8


def test_cli_options(lab, tmp_path):
    args = ["results/multiruns", "--out", "out", "--by", "hidden", "--metric", "best.test/acc"]
    proc = summarize_cli(*args, "--where", "seed == 0", "--k", "1", "--no-plots", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(tmp_path / "out")) == ["grid.csv", "summary.csv", "summary.md"]
    grid = read_csv(tmp_path / "out" / "grid.csv")
    assert grid["hidden"].tolist() == [16, 32] and grid["n"].tolist() == [1, 2]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--by", "hidden,nope"], "--by: unknown column 'nope'"),
        (["--metric", "nope"], "--metric: unknown column 'nope'"),
        (["--where", "status =="], "--where 'status =='"),
        (["missing/"], "no such directory or result.json: missing"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(lab, tmp_path, args, says):
    proc = summarize_cli(*args, "--out", "out", cwd=tmp_path)
    assert proc.returncode == 2
    # before it, only the warning about the half-written record in `lab`
    assert proc.stderr.splitlines()[-1].startswith(f"summarize: error: {says}")
    assert proc.stderr.count("summarize: error") == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


# --- end to end ----------------------------------------------------------------------------------


def test_grid_multirun_end_to_end(run_cli, tmp_path):
    """A 2x2 multirun on real MNIST: the callback leaves the tables and PNGs in the sweep dir."""
    proc = run_cli(
        [
            "-m",
            "hidden=16,32",
            "lr=0.05,0.1",
            "epochs=1",
            "data.train_subset=1000",
            "trainer.device=cpu",
        ]
    )
    assert proc.returncode == 0, proc.output
    sweep = proc.sweep_dir
    assert (sweep / "summary.csv").is_file(), "no summary: is the callback in conf/config.yaml?"
    runs = read_csv(sweep / "summary.csv")
    assert len(runs) == 4 and set(runs["status"]) == {"completed"}
    assert sorted(zip(runs["hidden"], runs["lr"], strict=True)) == [
        (16, 0.05),
        (16, 0.1),
        (32, 0.05),
        (32, 0.1),
    ]
    assert (runs["final.test/acc"] > 0.3).all() and (runs["converged.test/acc"] > 0.3).all()
    table = [line for line in (sweep / "summary.md").read_text().splitlines() if line[:1] == "|"]
    assert len(table) == 2 + 4 and sum("★" in line for line in table) == 1
    for name in PLOTS:
        assert_png(sweep / name)
    assert not (tmp_path / "results").exists()  # no results root under this cwd: left alone
    # the CLI with the same (configured) defaults rewrites the very same bytes
    before = snapshot(sweep)
    cli = summarize_cli(str(sweep), "--out", str(sweep), cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr
    assert snapshot(sweep) == before
