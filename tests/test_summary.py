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
import runpy
import socket
import subprocess
import sys
import time
from pathlib import Path

import hydra.utils
import pandas as pd
import pytest
from conftest import METRICS_COLUMNS
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from mnist_lab.app.callbacks import SummarizeCallback
from mnist_lab.config.schema import REPO_ROOT
from mnist_lab.records import files, reading
from mnist_lab.results import summary
from mnist_lab.results.columns import typed
from mnist_lab.results.summary import SummaryError, summarize

SUMMARIZE_PY = REPO_ROOT / "experiments" / "summarize.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOTS = ("learning_curves.png", "heatmap_hidden_lr.png", "accuracy_vs_time.png")
FIRST = ("run_id", "section", "sweep", "study", "trial", "status", "reason")
TABLES = ("summary.csv", "grid.csv", "summary.md")
OUTPUTS = (*TABLES, *PLOTS)
SETTINGS = {
    "by": None,
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
    val_acc: list | None = None,
    optimizer: str = "SGD",
    data_id: str = "eee3ce93c2df",
    deskew: bool = False,
    config: dict | None = None,
    overrides: list | None = None,
) -> dict:
    """A run record as mnist_lab.job.task writes it: metrics.csv rows for epochs 0.. and result.json.

    `test_acc` holds the test accuracy of epochs 1..n (None: not measured, e.g. after divergence);
    epoch 0 is the untrained model at 0.1. An empty list writes no metrics.csv (failed early).
    Validation accuracy is test - 0.01 unless `val_acc` gives it. `config` sets more keys
    (dotted: `{"model.dropout": 0.3}`).
    """
    vals = [0.09, *(val_acc or [None if a is None else a - 0.01 for a in test_acc])]
    run_dir.mkdir(parents=True)
    accs = [0.1, *test_acc]
    rows = [
        {
            "epoch": epoch,
            "train/loss": None if epoch == 0 or acc is None else 1 - acc + 0.05,
            "train/acc": None if epoch == 0 or acc is None else acc + 0.01,
            "val/loss": None if acc is None else 1 - acc + 0.02,
            "val/acc": val,
            "test/loss": None if acc is None else 1 - acc,
            "test/acc": acc,
            "lr": None if epoch == 0 else lr,
            "seconds": 0.0 if epoch == 0 else 0.5,
        }
        for epoch, (acc, val) in enumerate(zip(accs, vals, strict=True))
    ]
    if test_acc:
        pd.DataFrame(rows, columns=METRICS_COLUMNS).to_csv(run_dir / "metrics.csv", index=False)
    last = rows[-1] if test_acc else {}
    final = {key: last.get(key) for key in METRICS_COLUMNS[1:7]}
    cfg = {
        "data": {"normalize": "mnist", "batch_size": 32, "train_subset": None, "deskew": deskew},
        "model": {
            "_target_": "mnist_lab.models.mlp.MLP",
            "hidden_sizes": [hidden],
            "activation": "relu",
        },
        "optimizer": {"_target_": f"torch.optim.{optimizer}", "lr": lr, "momentum": 0.0},
        "trainer": {"epochs": 3, "seed": seed},
        "hidden": hidden,
        "lr": lr,
        "batch_size": 32,
        "epochs": 3,
        "seed": seed,
        "preset": None,
    }
    for key, value in (config or {}).items():
        *path, last_key = key.split(".")
        node = cfg
        for part in path:
            node = node.setdefault(part, {})
        node[last_key] = value
    record = {
        "schema_version": 2,
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
        "overrides": overrides
        if overrides is not None
        else [f"hidden={hidden}", f"lr={lr}", f"seed={seed}"],
        "choices": {"model": "mlp", "optimizer": optimizer.lower(), "experiment": None},
        "config": cfg,
        "data": {"id": data_id, "files": []},
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
    """A record from an older version: no short knobs, no schema_version, choices, job, trial or
    best; the model named in config.model.name (schema 1)."""
    run_dir.mkdir(parents=True)
    pd.DataFrame({"epoch": [0, 1, 2, 3], "test/acc": [0.1, 0.88, 0.89, 0.9]}).to_csv(
        run_dir / "metrics.csv", index=False
    )
    record = {
        "status": "completed",
        "config": {
            "data": {"batch_size": 64},
            "model": {"name": "mlp", "hidden_sizes": [128]},
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
    write_run(a / "5", [0.80, 0.85, 0.88], lr=0.05, sweep_dir=a, num=5)
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
    """summarize() with the configured settings; plots only where a test asks (they are slow)."""
    return summarize(paths, out, **{**SETTINGS, "plots": False, **overrides})


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
    with caplog.at_level(logging.WARNING, logger="mnist_lab.records.reading"):
        result = run([lab], tmp_path / "out")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(lab / "runs" / "broken" / "result.json") in warnings[0]

    runs = read_csv(tmp_path / "out" / "summary.csv")
    assert len(runs) == len(result.runs) == 9
    leading = [*FIRST, "hidden", "lr", "batch_size", "epochs", "seed", "experiment", "model"]
    assert list(runs.columns[: len(leading)]) == leading
    assert runs["run_id"].tolist() == [
        "multiruns/A/0",
        "multiruns/A/1",
        "multiruns/A/2",
        "multiruns/A/3",
        "multiruns/A/4",
        "multiruns/A/5",
        "multiruns/B/0",
        "multiruns/B/1",
        "runs/old",
    ]
    assert runs["status"].tolist() == ["completed"] * 3 + ["diverged", "failed", "completed"] + [
        "completed",
        "pruned",
        "completed",
    ]
    assert runs["hidden"].tolist() == [16, 16, 32, 32, 64, 16, 32, 32, 128]
    assert runs["lr"].tolist() == [0.1, 0.1, 0.1, 0.5, 0.05, 0.05, 0.1, 0.001, 0.01]
    assert runs["seed"].tolist() == [0, 1, 0, 0, 0, 0, 0, 0, 0]
    assert runs["batch_size"].tolist() == [32] * 8 + [64]
    assert set(runs["optimizer"]) == {"sgd"}  # as typed: optimizer=sgd (the old record's too)
    assert runs["model"].tolist() == ["mlp"] * 9  # the old record's config.model.name
    assert (
        runs["sweep"].tolist()[:8]
        == [str(lab / "multiruns" / "A")] * 6 + [str(lab / "multiruns" / "B")] * 2
    )
    assert runs["study"].tolist()[6:8] == ["s", "s"] and runs["trial"].tolist()[6:8] == [0, 1]
    assert runs["run_dir"].tolist()[0] == str((lab / "multiruns" / "A" / "0").resolve())
    assert runs["reason"][3] == "loss is nan at epoch 2"
    # every hyperparameter flattened into its own column
    assert runs["config.optimizer.momentum"][0] == 0.0
    assert runs["config.model.hidden_sizes"][0] == "[16]"


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
    assert old["config.data.deskew"] == False  # noqa: E712 (before data.deskew: not deskewed)
    assert old["status"] == "completed" and old["final.test/acc"] == 0.9
    assert pd.isna(old["sweep"]) and pd.isna(old["trial"]) and pd.isna(old["seconds_per_epoch"])


# --- the grid ------------------------------------------------------------------------------------


def test_grid_is_mean_std_count_over_completed_runs(lab, tmp_path):
    """One grid per section (study, sweep, single runs), keyed by what differs in it."""
    run([lab], tmp_path / "out")
    grid = read_csv(tmp_path / "out" / "grid.csv")
    stats = ["mean", "std", "ci95 low", "ci95 high"]
    assert list(grid.columns) == [
        "section",
        "hidden",
        "lr",
        *(f"final.val/acc % {s}" for s in stats),
        *(f"final.test/acc % {s}" for s in stats),
        "n",
        "recipes",
        "duplicates",
        "welch p",
        "best",
    ]
    assert grid["section"].tolist() == [
        "study s",
        "sweep multiruns/A",
        "sweep multiruns/A",
        "sweep multiruns/A",
        "single runs",
    ]
    # only sweep A's runs differ (in hidden and lr); grid.csv fills in the others' values
    assert grid[["hidden", "lr"]].astype(object).values.tolist() == [
        [32, 0.1],
        [16, 0.05],
        [16, 0.1],
        [32, 0.1],
        [128, 0.01],
    ]
    assert grid["final.test/acc % mean"].tolist() == pytest.approx([98.0, 88.0, 95.0, 97.5, 90.0])
    assert grid["final.val/acc % mean"].tolist()[:4] == pytest.approx([97.0, 87.0, 94.0, 96.5])
    assert grid["final.test/acc % std"][2] == pytest.approx(math.sqrt(2))
    # two seeds: Student t with one degree of freedom, 12.706 * std / sqrt(2)
    assert grid["final.test/acc % ci95 low"][2] == pytest.approx(95 - 12.7062, abs=1e-3)
    assert math.isnan(grid["final.test/acc % std"][3])  # one run: no spread
    assert grid["n"].tolist() == [1, 1, 2, 1, 1]
    assert grid["recipes"].tolist() == [1] * 5 and grid["duplicates"].tolist() == [0] * 5
    # a best row per section; none where no validation accuracy was measured (the old record)
    assert grid["best"].fillna("").tolist() == [summary.BEST_MARK, "", "", summary.BEST_MARK, ""]


def test_markdown_grid_reads_like_the_lab_table(lab, tmp_path):
    result = run([lab], tmp_path / "out")
    text = (tmp_path / "out" / "summary.md").read_text()
    assert text == result.markdown
    sweep = text.split("## sweep multiruns/A")[1].split("##")[0]
    rows = [line for line in sweep.splitlines() if line.startswith("|")]
    assert len(rows) == 2 + 3  # header, rule, one line per (hidden, lr)
    assert "| hidden " in rows[0] and "| lr " in rows[0] and "final.test/acc %" in rows[0]
    assert "94.00 ± 1.41 [81.29, 106.71]" in rows[3] and "95.00 ± 1.41 [" in rows[3]
    assert "| 2 " in rows[3] and "97.50" in rows[4] and "★" in rows[4]
    # shared, and not the default config: lr 0.01, epochs 10 (batch_size 32 and sgd are)
    assert "Same in every completed run: epochs=3, data.id=eee3ce93c2df." in sweep
    assert "Runs: 4 completed, 1 diverged, 1 failed." in sweep
    assert "Runs: 6 completed, 1 diverged, 1 failed, 1 pruned." in text
    study = "Same in every completed run: hidden=32, lr=0.1, epochs=3, data.id=eee3ce93c2df."
    assert study in text.split("## study s")[1].split("##")[0]
    assert text.index("## study s") < text.index("## sweep") < text.index("## single runs")


def test_best_is_chosen_on_validation_never_on_test(tmp_path):
    sweep = tmp_path / "s"
    write_run(sweep / "0", [0.95], hidden=16, val_acc=[0.97], sweep_dir=sweep, num=0)
    write_run(sweep / "1", [0.99], hidden=32, val_acc=[0.90], sweep_dir=sweep, num=1)
    grid = run([sweep], tmp_path / "out").grid
    assert grid["hidden"].tolist() == [16, 32]
    assert grid["best"].tolist() == [summary.BEST_MARK, ""]  # val 97 beats val 90; test ignored
    # whatever the reported metric, the best stays the validation pick
    loss = run([sweep], tmp_path / "loss", metric="test/loss").grid
    assert loss["best"].tolist() == [summary.BEST_MARK, ""]
    assert "final.test/loss mean" in loss.columns


def test_rows_never_mix_recipes(tmp_path):
    """Adam and SGD at the same hidden/lr are two rows; other data is a row of its own."""
    sweep = tmp_path / "s"
    write_run(sweep / "0", [0.95], sweep_dir=sweep, num=0)
    write_run(sweep / "1", [0.96], seed=1, sweep_dir=sweep, num=1)
    write_run(sweep / "2", [0.97], optimizer="Adam", sweep_dir=sweep, num=2)
    write_run(sweep / "3", [0.11], data_id="0123456789ab", sweep_dir=sweep, num=3)
    result = run([sweep], tmp_path / "out")
    grid = result.grid
    # optimizer._target_ changes only with the optimizer's option: not a column of its own
    assert list(grid.columns[1:3]) == ["optimizer", "data.id"]
    assert grid[["optimizer", "data.id", "n"]].values.tolist() == [
        ["adam", "eee3ce93c2df", 1],
        ["sgd", "0123456789ab", 1],
        ["sgd", "eee3ce93c2df", 2],
    ]
    assert "| optimizer " in result.markdown and "| data.id " in result.markdown


def test_deskewed_digits_are_their_own_recipe_and_older_records_were_not_deskewed(tmp_path):
    sweep = tmp_path / "s"
    write_run(sweep / "0", [0.95], sweep_dir=sweep, num=0)
    old = json.loads((sweep / "0" / "result.json").read_text())
    del old["config"]["data"]["deskew"]  # a record from before data.deskew existed
    (sweep / "0" / "result.json").write_text(json.dumps(old))
    write_run(sweep / "1", [0.96], seed=1, deskew=False, sweep_dir=sweep, num=1)
    write_run(sweep / "2", [0.98], seed=2, deskew=True, sweep_dir=sweep, num=2)
    result = run([sweep], tmp_path / "out")
    assert result.runs["config.data.deskew"].tolist() == [False, False, True]
    assert result.grid[["config.data.deskew", "n"]].values.tolist() == [[False, 2], [True, 1]]
    assert "| data.deskew " in result.markdown and "| false " in result.markdown


def test_duplicates_are_counted_once_and_flagged(tmp_path):
    sweep = tmp_path / "s"
    for num, acc in enumerate([0.90, 0.92, 0.92]):  # three runs, one recipe, one seed
        write_run(sweep / str(num), [acc], sweep_dir=sweep, num=num)
    write_run(sweep / "3", [0.94], seed=1, sweep_dir=sweep, num=3)
    result = run([sweep], tmp_path / "out")
    assert result.grid["n"].tolist() == [2]  # distinct seeds, not runs
    assert result.grid["duplicates"].tolist() == [2]
    mean_seed0 = (90 + 92 + 92) / 3
    assert result.grid["final.test/acc % mean"][0] == pytest.approx((mean_seed0 + 94) / 2)
    assert "Duplicates: 2 run(s) repeat the recipe and seed of another" in result.markdown
    assert "| +2 " in result.markdown


def test_by_pools_recipes_only_where_its_own_cell_says_so(tmp_path):
    """--by hidden over an SGD and an Adam run: one row of two recipes, no ± across them."""
    sweep = tmp_path / "s"
    write_run(sweep / "0", [0.95], sweep_dir=sweep, num=0)
    write_run(sweep / "1", [0.97], optimizer="Adam", lr=0.001, sweep_dir=sweep, num=1)
    write_run(sweep / "2", [0.90], hidden=32, sweep_dir=sweep, num=2)
    write_run(sweep / "3", [0.92], hidden=32, seed=1, sweep_dir=sweep, num=3)
    result = run([sweep], tmp_path / "out", by=["hidden"])
    grid = result.grid
    assert list(grid.columns[:2]) == ["section", "hidden"] and grid["hidden"].tolist() == [16, 32]
    assert grid["recipes"].tolist() == [2, 1]
    assert math.isnan(grid["n"][0]) and grid["n"][1] == 2  # n counts seeds of one recipe
    assert math.isnan(grid["final.test/acc % std"][0])  # no spread across recipes
    assert grid["final.test/acc % mean"][0] == pytest.approx(96.0)  # mean of the recipes' means
    assert "Rows pool runs that also differ in: lr, optimizer (not in --by)" in result.markdown
    row = next(line for line in result.markdown.splitlines() if line.startswith("| 16 "))
    assert "96.00 (mean of 2 recipes)" in row and "| –  " in row and "±" not in row


def test_where_filters_the_runs(lab, tmp_path):
    study = run([lab], tmp_path / "study", where="study == 's'")
    assert study.runs["run_id"].tolist() == ["multiruns/B/0", "multiruns/B/1"]
    assert study.grid["n"].tolist() == [1]  # one completed trial: one row, no key to differ
    assert study.grid["final.test/acc % mean"][0] == pytest.approx(98.0)
    assert "Same in every completed run: hidden=32, lr=0.1, epochs=3," in study.markdown
    run([lab], tmp_path / "done", where="status == 'completed'")
    assert len(read_csv(tmp_path / "done" / "summary.csv")) == 6
    both = run([lab], tmp_path / "both", where="`final.test/acc` > 0.95 and seed == 0")
    assert both.runs["run_id"].tolist() == ["multiruns/A/2", "multiruns/B/0"]
    sgd = run([lab], tmp_path / "sgd", where="optimizer == 'sgd' and not (hidden in [16, 128])")
    assert sgd.runs["hidden"].tolist() == [32, 32, 64, 32, 32]
    shorter = run([lab], tmp_path / "short", where="`test/acc` >= 0.975 or reason == None")
    assert len(shorter.runs) == 6  # the completed ones (no reason); A/2 and B/0 also pass


def test_other_grouping_and_metrics(lab, tmp_path):
    by_activation = run([lab], tmp_path / "a", by=["model.activation"], metric="converged.test/acc")
    grid = by_activation.grid
    # one grid per section; the old record has no activation: an empty cell
    assert grid["config.model.activation"].fillna("").tolist() == ["relu", "relu", ""]
    # sweep A's row pools three recipes: hidden 16 (seeds 0, 1: 92, 94), 32 (96.5), lr 0.05
    assert grid["recipes"].tolist() == [1, 3, 1]
    assert grid["converged.test/acc % mean"][1] == pytest.approx((93 + 96.5 + 253 / 3) / 3)
    loss = run([lab], tmp_path / "b", metric="test/loss").grid
    assert loss["final.test/loss mean"].tolist() == pytest.approx([0.02, 0.12, 0.05, 0.025, 0.35])


# --- what differs, what is shared, and statistics that mean what they say -----------------------

SEARCHED = ("model.input_dropout", "model.dropout", "trainer.label_smoothing", "trainer.max_norm")


def test_a_study_shows_every_key_its_trials_differ_in_and_a_subset_says_so(tmp_path):
    """Issue 20's reproducer: two trials of a regularisation study differ in lr and four more
    keys, and searched a fifth that came out equal; a single run on a subset sits beside them."""
    results = tmp_path / "results"
    study = results / "multiruns" / "S"
    trials = [
        {"lr": 0.05, **dict(zip(SEARCHED, (0.1, 0.3, 0.1, 3.5), strict=True))},
        {"lr": 0.0121, **dict(zip(SEARCHED, (0.32, 0.44, 0.04, 2.0), strict=True))},
    ]
    fixed = {"data.train_subset": 3000, "model.hidden_sizes": [1024, 1024], "data.deskew": True}
    for number, values in enumerate(trials):
        searched = {k: v for k, v in values.items() if k != "lr"} | {"optimizer.weight_decay": 0.0}
        write_run(
            study / f"trial_{number}",
            [0.88 - 0.2 * number],
            hidden=1024,
            lr=values["lr"],
            sweep_dir=study,
            num=number,
            trial={"study_name": "mlp_regularised", "number": number},
            config={**fixed, **searched},
            overrides=[
                "epochs=3",
                "data.train_subset=3000",
                *(f"{k}={v}" for k, v in values.items()),
            ],
        )
    report = {"best_params": {**trials[0], "optimizer.weight_decay": 0.0}}  # the sweeper's report
    (study / "optimization_results.yaml").write_text(json.dumps(report))
    write_run(results / "runs" / "subset", [0.8], config={"data.train_subset": 2000})
    write_run(results / "runs" / "full", [0.9], seed=1)

    result = run([results], tmp_path / "out")
    searched, single = result.sections
    assert searched.keys == [
        "lr",
        "config.model.dropout",
        "config.model.input_dropout",
        "config.optimizer.weight_decay",  # searched, equal in both trials: still a column
        "config.trainer.label_smoothing",
        "config.trainer.max_norm",
    ]
    header = result.markdown.split("## study mlp_regularised")[1].split("\n| ")[1]
    for name in ("lr", *SEARCHED, "optimizer.weight_decay"):
        assert f" {name} " in f" {header}"
    assert searched.same == {
        "hidden": 1024,
        "epochs": 3,
        "config.data.deskew": True,
        "config.data.train_subset": 3000,
        "config.model.hidden_sizes": "[1024, 1024]",
        "data.id": "eee3ce93c2df",
    }
    assert "data.deskew=true, data.train_subset=3000, model.hidden_sizes=[1024,1024]" in (
        result.markdown
    )
    # the subset run is not full MNIST: the single runs differ in it, and it is a column
    assert single.keys == ["config.data.train_subset"]
    assert single.grid["config.data.train_subset"].map(typed).tolist() == ["2000", ""]


@pytest.mark.parametrize(
    ("second", "told_apart"),
    [([0.895, 0.905, 0.925], False), ([0.80, 0.81, 0.815], True)],
    ids=["overlapping", "worse"],
)
def test_two_recipes_over_three_seeds_give_n_the_spread_and_welchs_verdict(
    tmp_path, second, told_apart
):
    from scipy import stats

    sweep = tmp_path / "s"
    first = [0.90, 0.91, 0.93]
    for seed, (a, b) in enumerate(zip(first, second, strict=True)):
        write_run(sweep / f"a{seed}", [a + 0.01], val_acc=[a], seed=seed, sweep_dir=sweep, num=seed)
        write_run(
            sweep / f"b{seed}", [b + 0.01], val_acc=[b], hidden=32, seed=seed, sweep_dir=sweep
        )
    result = run([sweep], tmp_path / "out")
    grid = result.grid
    assert grid["hidden"].tolist() == [16, 32] and grid["n"].tolist() == [3, 3]
    val = [100 * v for v in first]
    assert grid["final.val/acc % mean"][0] == pytest.approx(sum(val) / 3)
    std = pd.Series(val).std()
    assert grid["final.val/acc % std"][0] == pytest.approx(std)
    half = stats.t.ppf(0.975, 2) * std / math.sqrt(3)  # Student t, two degrees of freedom
    assert grid["final.val/acc % ci95 high"][0] == pytest.approx(sum(val) / 3 + half)
    p = stats.ttest_ind([100 * v for v in second], val, equal_var=False).pvalue
    assert grid["best"].tolist() == [summary.BEST_MARK, "" if told_apart else summary.TIE_MARK]
    assert grid["welch p"][1] == pytest.approx(p) and (p < 0.05) == told_apart
    row = result.markdown.split("\n| 32 ")[1].split("\n")[0]
    mean, spread = grid["final.val/acc % mean"][1], grid["final.val/acc % std"][1]
    assert f"{mean:.2f} ± {spread:.2f} [" in row and "| 3 " in row
    assert (f"≈ p={p:.2g}" in row) != told_apart
    assert "Welch's t-test" in result.markdown.split("## ")[0]  # the header names the test


def objective(metrics: list, directions: list) -> dict:
    return {"objective": {"metrics": metrics, "directions": directions}}


def test_the_best_row_follows_the_objective_and_two_objectives_mark_the_pareto_rows(tmp_path):
    sweep = tmp_path / "loss"
    for num, (hidden, val) in enumerate([(16, 0.95), (32, 0.90)]):
        write_run(
            sweep / str(num),
            [val],
            val_acc=[val],
            hidden=hidden,
            sweep_dir=sweep,
            num=num,
            config=objective(["val/loss"], ["minimize"]),
        )
    result = run([sweep], tmp_path / "a")
    (section,) = result.sections
    assert section.metrics[0] == "final.val/loss" and "final.val/loss mean" in result.grid
    # val/loss = 1 - acc + 0.02 in these records: lowest loss = highest accuracy, hidden 16
    assert result.grid["best"].tolist() == [summary.BEST_MARK, ""]
    assert "Objective: val/loss (minimize); ★ follows it." in result.markdown

    pareto = tmp_path / "pareto"
    for num, (hidden, val) in enumerate([(16, 0.90), (32, 0.95), (64, 0.93), (128, 0.94)]):
        write_run(
            pareto / str(num),
            [val],
            val_acc=[val],
            hidden=hidden,
            sweep_dir=pareto,
            num=num,
            config=objective(["val/acc", "param_count"], ["maximize", "minimize"]),
        )
    result = run([pareto], tmp_path / "b")
    grid = result.grid
    # param_count grows with hidden: 16 (smallest) and 32 (most accurate) dominate 64 and 128
    assert grid["hidden"].tolist() == [16, 32, 64, 128]
    assert grid["best"].tolist() == [summary.PARETO_MARK, summary.PARETO_MARK, "", ""]
    assert "param_count mean" in grid and "Objective: val/acc (maximize), param_count" in (
        result.markdown
    )
    table, best = summary.top_rows(result.sections[0], 10)
    assert best == "hidden=16; hidden=32" and list(table["best"])[:2] == ["◆", "◆"]


def test_values_are_labelled_as_typed():
    assert [typed(v) for v in (3000.0, 0.0121, 1e-5, True, None, "[64, 64]", 2)] == [
        "3000",
        "0.0121",
        "1e-05",
        "true",
        "",
        "[64,64]",
        "2",
    ]


def test_bad_input_writes_nothing(lab, tmp_path):
    out = tmp_path / "out"
    cases = {
        "--by": dict(by=["hidden", "nope"]),
        "--metric": dict(metric="nope"),
        "--where": dict(where="hidden >>"),
        "--heatmap": dict(heatmap=["hidden", "nope"], plots=True),
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
    run([lab], out, plots=True)
    first = snapshot(out)
    assert sorted(first) == sorted(OUTPUTS)
    run([lab], out, plots=True)
    assert snapshot(out) == first  # byte-identical, PNGs included
    assert not [name for name in os.listdir(out) if name.startswith(".") or ".tmp" in name]


def test_failed_write_leaves_old_file_and_no_temp(lab, tmp_path, monkeypatch):
    out = tmp_path / "out"
    run([lab], out, plots=False)
    before = snapshot(out)

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        run([lab], out, plots=False, where="seed == 1")
    assert snapshot(out) == before


def test_plots_are_valid_pngs(lab, tmp_path):
    run([lab], tmp_path / "out", plots=True)
    for name in PLOTS:
        assert_png(tmp_path / "out" / name)


def test_figures_follow_the_sections_and_label_values_as_typed(tmp_path, caplog):
    """A sweep on a subset beside one on all images: legends read as typed (3000, null: never
    3e+03 or a dash for another section's value); an Optuna study gets a scatter of its trials,
    not a sparse heatmap; every figure marks the validation pick."""
    from mnist_lab.results.plots import Colours

    results = tmp_path / "results"
    sweep = results / "multiruns" / "subset"
    write_run(sweep / "0", [0.90], sweep_dir=sweep, num=0, config={"data.train_subset": 3000})
    write_run(sweep / "1", [0.95], sweep_dir=sweep, num=1)
    study = results / "multiruns" / "study"
    for number, (hidden, lr, acc) in enumerate([(16, 0.1, 0.9), (64, 0.02, 0.93), (32, 0.5, 0.7)]):
        trial = {"study_name": "st", "number": number}
        write_run(study / str(number), [acc], hidden=hidden, lr=lr, sweep_dir=study, trial=trial)
    with caplog.at_level(logging.INFO, logger="mnist_lab.results.plots"):
        result = run([results], tmp_path / "out", plots=True)
    studied, subset = result.sections
    labels = [h.get_label() for h in Colours(subset).handles(subset.labels.index)]
    assert labels == ["★ data.train_subset=null (1)", "data.train_subset=3000 (1)"]
    assert [h.get_label() for h in Colours(studied).handles(studied.labels.index)][0] == (
        "★ hidden=64 lr=0.02 (1)"
    )
    for name in ("learning_curves.png", "accuracy_vs_time.png", "trials.png"):
        assert_png(tmp_path / "out" / name)
    assert not (tmp_path / "out" / "heatmap_hidden_lr.png").exists()  # neither section has a grid
    assert (
        "heatmap of sweep multiruns/subset skipped: hidden and lr do not both vary" in caplog.text
    )


def test_single_run_and_no_completed_run(lab, tmp_path, caplog):
    single = tmp_path / "single"
    with caplog.at_level(logging.INFO, logger="mnist_lab.results.plots"):
        run([lab / "multiruns" / "A" / "0"], single, plots=True)
    for name in ("learning_curves.png", "accuracy_vs_time.png"):
        assert_png(single / name)
    assert not (single / "heatmap_hidden_lr.png").exists()  # one run: no 1x1 heatmap
    assert "hidden and lr do not both vary" in caplog.text
    assert len(read_csv(single / "grid.csv")) == 1

    out = tmp_path / "none"
    run([lab], out, plots=True)
    assert_png(out / "heatmap_hidden_lr.png")
    with caplog.at_level(logging.INFO, logger="mnist_lab.results.plots"):
        result = run([lab], out, where="status != 'completed'", plots=True)
    assert len(result.runs) == 3 and result.grid.empty
    assert "(no completed runs)" in (out / "summary.md").read_text()
    assert_png(out / "learning_curves.png")  # the diverged and pruned runs still have curves
    assert not (out / "heatmap_hidden_lr.png").exists()  # stale figures are removed
    assert not (out / "accuracy_vs_time.png").exists()

    failed = tmp_path / "failed"
    run([lab], failed, where="status == 'failed'", plots=True)  # no metrics: every plot skipped
    assert sorted(os.listdir(failed)) == ["grid.csv", "summary.csv", "summary.md"]


def test_empty_folder_gives_empty_tables(tmp_path):
    result = run([tmp_path], tmp_path / "out")
    assert result.runs.empty and result.grid.empty
    assert list(read_csv(tmp_path / "out" / "summary.csv").columns)[:3] == [
        "run_id",
        "section",
        "sweep",
    ]


# --- the Hydra callback --------------------------------------------------------------------------


def hydra_config(sweep_dir: Path):
    return OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}})


def test_callback_summarises_its_sweep_and_nothing_else(lab, capsys):
    """The end of a multirun reads its own jobs only: its cost never grows with results/."""
    callback = SummarizeCallback(results_root=str(lab), **SETTINGS)
    sweep = lab / "multiruns" / "A"
    callback.on_multirun_end(hydra_config(sweep))
    assert len(read_csv(sweep / "summary.csv")) == 6
    for name in PLOTS:
        assert_png(sweep / name)
    assert (
        not (lab / "summary.csv").exists() and not (lab / "multiruns" / "B" / "grid.csv").exists()
    )
    report = capsys.readouterr().out
    # what the sweep's runs share is said beside its table, as in summary.md
    heading = "sweep A (3 rows, best on val/acc first):"
    assert f"{heading}\nSame in every completed run: epochs=3, data.id=eee3ce93c2df.\n" in report
    assert "best on val/acc: hidden=32 lr=0.1" in report
    assert f"all runs under {lab}/: python experiments/summarize.py" in report


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
    assert "| 32       | 0.1  | 96.50 " in proc.stdout and "★" in proc.stdout
    for name in OUTPUTS:
        assert (lab / name).is_file()
    assert len(read_csv(lab / "summary.csv")) == 9


def test_cli_options(lab, tmp_path):
    args = ["results/multiruns", "--out", "out", "--by", "hidden", "--metric", "best.test/acc"]
    proc = summarize_cli(*args, "--where", "seed == 0", "--k", "1", "--no-plots", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(tmp_path / "out")) == ["grid.csv", "summary.csv", "summary.md"]
    grid = read_csv(tmp_path / "out" / "grid.csv")
    assert grid["section"].tolist() == ["study s", "sweep A", "sweep A"]  # relative to the path
    assert grid["hidden"].tolist() == [32, 16, 32] and grid["recipes"].tolist() == [1, 2, 1]
    assert grid["n"].fillna(0).tolist() == [1, 0, 1]  # hidden 16 pools lr 0.1 and 0.05: no n


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--by", "hidden,nope"], "--by: unknown column 'nope'"),
        (["--metric", "nope"], "--metric: unknown column 'nope'"),
        (["--where", "status =="], "--where 'status =='"),
        (["missing/"], "no such directory or result.json: missing"),
        (["--where", ""], "--where '': empty expression"),
        (["--where", "not " * 1_500 + "seed == 0"], "nested 1500 deep: at most 50"),
        (["--where", "not " * 25_000 + "seed == 0"], "longer than 10,000 characters"),
    ],
    ids=["by", "metric", "where", "path", "empty where", "1500 not", "25000 not"],
)
def test_cli_bad_input_is_one_line_exit_2(lab, tmp_path, args, says):
    proc = summarize_cli(*args, "--out", "out", cwd=tmp_path)
    assert proc.returncode == 2
    # before it, only the warning about the half-written record in `lab`
    last = proc.stderr.splitlines()[-1]
    assert last.startswith("summarize: error: ") and says in last and len(last) < 200
    assert proc.stderr.count("summarize: error") == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_cli_out_that_cannot_be_written_is_one_line_exit_2(lab, tmp_path, read_only_folder):
    for out, says in [
        (lab / "runs" / "old" / "metrics.csv", "it is a file, not a folder"),
        (read_only_folder / "summary", f"{read_only_folder} is not writable"),
    ]:
        proc = summarize_cli("--out", str(out), "--no-plots", cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        last = proc.stderr.splitlines()[-1]
        assert last == f"summarize: error: cannot write into {out}: {says}"
        assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert list(read_only_folder.iterdir()) == []


def test_cli_skips_a_malformed_record_with_one_line_and_never_loads_torch(lab, tmp_path):
    """`{"status": 5}` beside good runs: one warning naming it, the summary of the others is
    written; the whole command (tables and figures) never imports torch or a model."""
    bad = lab / "runs" / "bad"
    bad.mkdir()
    (bad / "result.json").write_text('{"status": 5}')
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['summarize.py']\n"
        "try:\n"
        f"    runpy.run_path({str(SUMMARIZE_PY)!r}, run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    print('exit', e.code)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'"
        " or m.startswith(('mnist_lab.models', 'mnist_lab.train', 'mnist_lab.job'))))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.stdout.splitlines()[-2:] == ["exit 0", "[]"], proc.stderr
    skipped = [line for line in proc.stderr.splitlines() if line.startswith("skipping")]
    assert skipped[0] == (
        "skipping malformed record results/runs/bad/result.json (status: 5 is not a string)"
    )
    assert len(skipped) == 2 and "Traceback" not in proc.stderr  # and the half-written one
    assert len(read_csv(lab / "summary.csv")) == 9
    assert_png(lab / "learning_curves.png")


def test_a_narrower_summary_goes_to_its_own_folder_and_leaves_the_main_report(
    lab, tmp_path, monkeypatch
):
    """The README's examples in order (in-process: experiments/summarize.py's own `main`)."""
    main = runpy.run_path(str(SUMMARIZE_PY))["main"]
    monkeypatch.chdir(tmp_path)
    assert main([]) == 0
    report = snapshot(lab)
    assert {"summary.md", "learning_curves.png", "heatmap_hidden_lr.png"} <= set(report)
    for args in (["--where", "seed == 0"], ["--by", "hidden"], ["results/multiruns"]):
        assert main([*args, "--no-plots"]) == 0
    assert snapshot(lab) == report  # summary.md and every PNG untouched
    folders = sorted(p.name for p in (lab / "filtered").iterdir())
    assert [f.rsplit("-", 1)[0] for f in folders] == [
        "by-hidden",
        "results-multiruns",
        "where-seed-==-0",
    ]
    where = next((lab / "filtered").glob("where-*"))
    assert len(read_csv(where / "summary.csv")) == 8 and "Filter: `seed == 0`" in (
        (where / "summary.md").read_text()
    )


def test_cli_where_never_runs_code(lab, tmp_path):
    """Injection attempts of several shapes: one line, exit 2, no file, no side effect."""
    marker = tmp_path / "pwned"
    attempts = [
        f"status == 'completed' and @pd.io.common.os.system('touch {marker}') == 0",
        f"__import__('os').system('touch {marker}') == 0",
        "status.__class__.__init__.__globals__ == 1",
        f"open('{marker}', 'w') != None",
        "`run_dir`[0] == '/'",
    ]
    for expr in attempts:
        proc = summarize_cli("--where", expr, "--out", "out", cwd=tmp_path)
        assert proc.returncode == 2, (expr, proc.stdout)
        last = proc.stderr.splitlines()[-1]
        assert last.startswith("summarize: error: --where") and "Traceback" not in proc.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_cli_where_matching_nothing_is_one_line(lab, tmp_path):
    proc = summarize_cli("--where", "optimizer == 'SGD'", "--out", "out", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == (
        "summarize: error: --where \"optimizer == 'SGD'\": matches none of the 9 runs; "
        "nothing written"
    )
    assert not (tmp_path / "out").exists()
    proc = summarize_cli("--where", "optimizer == 'sgd'", "--out", "out", cwd=tmp_path)
    assert proc.returncode == 0 and len(read_csv(tmp_path / "out" / "summary.csv")) == 9


def test_one_call_writes_one_consistent_set(lab, tmp_path):
    """Files of an earlier call with other options are removed, not left beside new tables."""
    out = tmp_path / "out"
    run([lab], out, plots=True)
    run([lab], out, plots=True, heatmap=["lr", "hidden"])
    assert sorted(os.listdir(out)) == sorted(
        [
            *OUTPUTS[:3],
            "learning_curves.png",
            "heatmap_lr_hidden.png",
            "accuracy_vs_time.png",
        ]
    )
    run([lab], out, where="seed == 1")  # no plots this time: no old PNG describes other runs
    assert sorted(os.listdir(out)) == ["grid.csv", "summary.csv", "summary.md"]
    (out / "keep.txt").write_text("not ours")
    run([lab], out)
    assert (out / "keep.txt").is_file()  # only the summary's own files are touched


def test_refused_runs_are_left_out_and_killed_runs_say_so(lab, tmp_path):
    sweep = lab / "multiruns" / "A"
    refused = write_run(sweep / "6", [], hidden=0, status="failed", reason="hidden=0 ...")
    (sweep / "6" / "result.json").write_text(json.dumps({**refused, "refused": True}))
    (sweep / "6" / "metrics.csv").write_text(",".join(METRICS_COLUMNS) + "\n")  # header alone
    dead = write_run(sweep / "7", [], hidden=64, status="running", sweep_dir=sweep, num=7)
    pd.DataFrame([{"epoch": 0, "val/acc": 0.1, "test/acc": 0.1}]).to_csv(
        sweep / "7" / "metrics.csv"
    )
    dead["writer"] = {"host": socket.gethostname(), "pid": 2**22 + 1, "process_start": "1"}
    (sweep / "7" / "result.json").write_text(json.dumps(dead))
    result = run([lab], tmp_path / "out", plots=True)
    runs = result.runs.set_index("run_id")
    assert "multiruns/A/6" not in runs.index  # refused: not a result
    assert runs.loc["multiruns/A/7", "status"] == "killed"
    assert "ended without finishing" in runs.loc["multiruns/A/7", "reason"]
    # a header-only metrics.csv beside a run killed at epoch 0 once turned the epochs into text,
    # on which the learning curves failed ("cannot convert float NaN to integer")
    assert "multiruns/A/7" in set(
        result.epochs["run_dir"].map(lambda d: Path(d).relative_to(lab).as_posix())
    )
    assert result.epochs["epoch"].dtype.kind in "if"
    assert_png(tmp_path / "out" / "learning_curves.png")
    assert "Not shown: 1 refused (bad input, never trained)." in result.markdown
    assert "1 killed" in result.markdown
    assert (result.grid["n"].sum(), len(result.grid)) == (6, 5)  # neither enters the grid


# --- end to end ----------------------------------------------------------------------------------


def test_grid_and_preset_end_to_end(run_cli, tmp_path):
    """The issue's scenario on real MNIST: an Adam preset run, then a 2x2 grid over hidden and
    seed. The multirun prints and writes its own grid (n=2 per hidden size, ★ on validation
    accuracy); summarize.py makes results/summary.md, which keeps them apart; a filtered summary
    goes to its own folder and leaves the main report and its PNGs untouched."""
    quick = ["epochs=1", "data.train_subset=2000", "trainer.device=cpu"]
    preset = run_cli(["experiment=deep64x3_adam_nll", *quick], own_dirs=True)
    assert preset.returncode == 0, preset.output
    proc = run_cli(["-m", "hidden=128,512", "seed=0,1", *quick], own_dirs=True)
    assert proc.returncode == 0, proc.output
    results = tmp_path / "results"
    (sweep,) = (results / "multiruns").glob("*/*")
    # the terminal shows the sweep's grid, its best row on validation and where the files are
    assert "best on val/acc: hidden=" in proc.stdout
    assert f"files: {sweep.relative_to(tmp_path) / 'summary.md'}" in proc.stdout
    assert len(read_csv(sweep / "summary.csv")) == 4 and not (results / "summary.md").exists()

    cli = summarize_cli(cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr
    runs = read_csv(results / "summary.csv")
    assert len(runs) == 5 and set(runs["status"]) == {"completed"}
    assert set(runs["optimizer"]) == {"sgd", "adam"} and runs["data.id"].nunique() == 1
    grid = read_csv(results / "grid.csv")
    sgd = grid[grid["section"].str.startswith("sweep ")]
    assert sgd["hidden"].tolist() == [128, 512] and sgd["n"].tolist() == [2, 2]
    best = sgd.loc[sgd["final.val/acc % mean"].idxmax()]
    assert best["best"] == summary.BEST_MARK and sgd["best"].fillna("").tolist().count("★") == 1
    adam = grid[grid["section"] == "single runs"]
    assert len(adam) == 1 and adam["n"].tolist() == [1]
    text = (results / "summary.md").read_text()
    single = text.split("## single runs")[1]
    # the preset's own changes are visible: its optimizer, head, normalisation, layers, subset
    for change in ("optimizer=adam", "model.head=log_softmax", "data.normalize=none"):
        assert change in single
    assert "model.hidden_sizes=[64,64,64]" in single and "data.train_subset=2000" in single
    sweep_part = text.split("## sweep ")[1].split("## single runs")[0]
    assert "adam" not in sweep_part and "data.train_subset=2000" in sweep_part
    for name in ("learning_curves.png", "accuracy_vs_time.png"):
        assert_png(results / name)
    main = snapshot(results)

    # a filtered summary never replaces the main report: it goes to a folder of its own
    cli = summarize_cli("--where", "optimizer == 'sgd'", cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr
    assert snapshot(results) == main
    (filtered,) = (results / "filtered").iterdir()
    assert filtered.name.startswith("where-optimizer-==-sgd-")
    assert len(read_csv(filtered / "summary.csv")) == 4
    assert_png(filtered / "learning_curves.png")


def test_a_run_killed_outright_reads_as_killed(tmp_path):
    """kill -9 leaves `running` in result.json; every reader says `killed` once the pid is gone."""
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        str(REPO_ROOT / "experiments" / "run.py"),
        "epochs=100",
        "data.train_subset=2000",
        "trainer.device=cpu",
        f"hydra.run.dir='{run_dir}'",
    ]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):  # the record appears after epoch 0
            if (run_dir / "result.json").is_file():
                break
            time.sleep(0.1)
        assert json.loads((run_dir / "result.json").read_text())["status"] == "running"
        assert reading.read_record(run_dir)["status"] == "running"  # alive: left alone
    finally:
        proc.kill()  # SIGKILL: no handler runs, the record is not finished
        proc.wait()
    assert json.loads((run_dir / "result.json").read_text())["status"] == "running"
    assert reading.read_record(run_dir)["status"] == "killed"
    runs = run([run_dir], tmp_path / "out").runs
    assert runs["status"].tolist() == ["killed"] and "pid" in runs["reason"][0]
