"""`hydra/launcher=batched` end to end: a stacked member's record is the one its job leaves alone.

Tolerance (float32 on the CPU): accuracies to 1e-3 and losses to 1e-4 relative. The stacked step
computes each member's maths with batched products whose rounding differs from a stack of one by a
few ulps; in float64 the engine matches autograd + torch.optim to 1e-10 (tests/test_stacked.py).
"""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import optuna
import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.test_utils.test_utils import SweepTaskFunction

from mnist_lab.config.schema import CONF_DIR

QUICK = ["epochs=1", "data.train_subset=2000", "trainer.device=cpu"]
GRID = ["lr=0.01,0.02", "seed=0,1"]
ACC_TOL, LOSS_RTOL = 1e-3, 1e-4
# Where and when a job ran: all that may differ between its record alone and as a member.
LAUNCH = {
    "run_dir",
    "job",
    "batched",
    "writer",
    "started_at",
    "updated_at",
    "finished_at",
    "wall_seconds",
    "train_seconds",
    "eval_seconds",
    "seconds_per_epoch",
}


def records(sweep_dir):
    return {int(p.parent.name): json.loads(p.read_text()) for p in sweep_dir.glob("*/result.json")}


def flat(record: dict, prefix="") -> dict:
    """The record's values by dotted key (`final.val/acc`)."""
    found = {}
    for key, value in record.items():
        if isinstance(value, dict) and value:
            found.update(flat(value, f"{prefix}{key}."))
        else:
            found[f"{prefix}{key}"] = value
    return found


def assert_same_number(key: str, got, want) -> None:
    if isinstance(want, float) and key.endswith("acc"):
        assert abs(got - want) <= ACC_TOL, key
    elif isinstance(want, float) and key.endswith("loss"):
        assert got == pytest.approx(want, rel=LOSS_RTOL), key
    else:
        assert got == want, key


def epoch_rows(run_dir) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_a_jobs_record_is_the_same_alone_and_as_a_batched_member(run_cli, tmp_path):
    # Two epochs; early stopping ends the jobs whose val/acc gains less than 0.05 in epoch 2.
    jobs = ["-m", *GRID, "epochs=2", "data.train_subset=2000", "trainer.device=cpu"]
    jobs += ["trainer.early_stopping.patience=1", "trainer.early_stopping.min_delta=0.05"]
    basic = run_cli(jobs, cwd=tmp_path / "basic")
    batched = run_cli([*jobs, "hydra/launcher=batched"], cwd=tmp_path / "batched")
    assert basic.returncode == 0, basic.output
    assert batched.returncode == 0, batched.output
    alone, together = records(basic.sweep_dir), records(batched.sweep_dir)
    assert sorted(alone) == sorted(together) == [0, 1, 2, 3]
    for num, rec in together.items():
        ref = alone[num]
        assert rec["status"] == "completed" and ref["batched"] is None
        assert rec["batched"] == {"k": 4, "group": 0, "jobs": [0, 1, 2, 3]}
        assert rec["backward"] == ref["backward"] == "manual"
        got, want = flat(rec), flat(ref)
        keys = {k for k in want if k.split(".")[0] not in LAUNCH}
        assert {k for k in got if k.split(".")[0] not in LAUNCH} == keys
        for key in keys:
            assert_same_number(key, got[key], want[key])
        rows = epoch_rows(batched.sweep_dir / str(num))
        ref_rows = epoch_rows(basic.sweep_dir / str(num))
        assert [list(r) for r in rows] == [list(r) for r in ref_rows]  # the same columns
        for row, ref_row in zip(rows, ref_rows, strict=True):
            for key in row.keys() - {"seconds"}:
                if row[key] or ref_row[key]:  # empty: not measured (epoch 0's train/*)
                    assert_same_number(key, float(row[key]), float(ref_row[key]))
        folder = batched.sweep_dir / str(num)
        assert (folder / ".hydra" / "overrides.yaml").is_file()
        log = (folder / "run.log").read_text()
        assert log.count("- epoch 1 ") == 1 and "#" not in log  # its own lines only
    # the four members are different runs: seeds and rates change the numbers
    assert len({r["final"]["val/acc"] for r in together.values()}) == 4
    assert {r["stopped_early"] is None for r in together.values()} == {True, False}


def test_a_diverging_member_stops_alone(run_cli, tmp_path):
    args = ["-m", "lr=0.01,1e8", "seed=0", "epochs=2", "data.train_subset=2000"]
    batched = run_cli([*args, "trainer.device=cpu", "hydra/launcher=batched"], cwd=tmp_path / "b")
    alone = run_cli(
        ["-m", "lr=0.01", "seed=0", "epochs=2", "data.train_subset=2000", "trainer.device=cpu"],
        cwd=tmp_path / "a",
    )
    assert batched.returncode == 0 and alone.returncode == 0, batched.output + alone.output
    recs, ref = records(batched.sweep_dir), records(alone.sweep_dir)[0]
    assert recs[1]["status"] == "diverged" and recs[1]["epochs_run"] == 1
    assert recs[0]["status"] == "completed" and recs[0]["epochs_run"] == 2
    assert recs[0]["batched"]["k"] == 2
    assert abs(recs[0]["final"]["val/acc"] - ref["final"]["val/acc"]) <= ACC_TOL


def test_optuna_prunes_members_of_a_stack_on_their_own(run_cli, tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    proc = run_cli(
        [
            "-m",
            "hydra/sweeper=optuna",
            "hydra/sweeper/sampler=grid",
            "hydra/launcher=batched",
            "hydra.sweeper.direction=maximize",
            f"hydra.sweeper.storage={url}",
            "hydra.sweeper.study_name=stack",
            "hydra.sweeper.n_jobs=4",
            "hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner",
            "+hydra.sweeper.pruner.lower=0.6",
            "lr=choice(0.0005, 0.05)",
            "seed=choice(0, 1)",
            "epochs=2",
            "data.train_subset=2000",
            "trainer.device=cpu",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.output
    study = optuna.load_study(study_name="stack", storage=url)
    assert len(study.trials) == 4
    for trial in study.trials:
        rec = json.loads(
            (next(tmp_path.glob(f"sweep/trial_{trial.number:04d}")) / "result.json").read_text()
        )
        assert rec["batched"]["k"] == 4 and rec["trial"]["number"] == trial.number
        if trial.params["lr"] == 0.0005:  # below the threshold after epoch 1
            assert trial.state == optuna.trial.TrialState.PRUNED
            assert rec["status"] == "pruned" and rec["epochs_run"] == 1
            assert list(trial.intermediate_values) == [1]
        else:
            assert trial.state == optuna.trial.TrialState.COMPLETE
            assert rec["status"] == "completed" and rec["epochs_run"] == 2
            assert sorted(trial.intermediate_values) == [1, 2]
            assert trial.value == pytest.approx(rec["final"]["val/acc"])


def test_jobs_that_fit_no_group_run_as_today(run_cli, tmp_path):
    proc = run_cli(
        [
            "-m",
            "optimizer=sgd,rmsprop",
            *QUICK,
            "hydra/launcher=batched",
            "hydra.launcher.max_batch=1",
        ]
    )
    assert proc.returncode == 0, proc.output
    recs = records(proc.sweep_dir)
    assert [recs[i]["status"] for i in (0, 1)] == ["completed", "completed"]
    assert recs[0]["batched"] is None and recs[1]["batched"] is None
    bad = run_cli(["-m", "lr=0.1", *QUICK, "hydra/launcher=batched", "hydra.launcher.max_batch=0"])
    assert bad.returncode != 0
    assert "hydra.launcher.max_batch=0 is not allowed" in bad.output


# --- a task function of its own ---------------------------------------------------------------

APP = Path(__file__).parent / "apps" / "own_task.py"
_spec = importlib.util.spec_from_file_location("own_task", APP)
own_task = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(own_task)


def sweep_own_task(tmp_path, *overrides):
    """Runs tests/apps/own_task.py's function as a multirun in-process, as Hydra's launcher
    conformance suites do; returns the seeds it was called with."""
    own_task.CALLS.clear()
    runner = SweepTaskFunction()
    runner.calling_file, runner.calling_module = str(APP), None
    runner.task_function = own_task.task
    runner.config_path, runner.config_name = str(CONF_DIR), "config"
    runner.temp_dir = str(tmp_path / "sweep")
    runner.overrides = ["epochs=1", "trainer.device=cpu", "hydra/launcher=batched", *overrides]
    try:
        runner.__enter__()  # runs the sweep; __exit__ would delete the sweep dir
    finally:
        HydraConfig.instance().cfg = None  # the last job's config must not leak into other tests
    return sorted(own_task.CALLS)


def test_another_task_function_is_called_for_every_job(tmp_path):
    assert sweep_own_task(tmp_path, "seed=0,1") == [0, 1]
    assert not list(tmp_path.rglob("result.json"))  # nothing trained in its place


def test_under_optuna_the_study_gets_what_another_task_function_returned(tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    seeds = sweep_own_task(
        tmp_path,
        "hydra/sweeper=optuna",
        "hydra/sweeper/sampler=grid",
        "hydra.sweeper.direction=maximize",
        f"hydra.sweeper.storage={url}",
        "hydra.sweeper.study_name=own",
        "hydra.sweeper.n_jobs=2",  # both trials launched together: a stack, were they ours
        "seed=choice(0, 1)",
    )
    assert seeds == [0, 1]
    study = optuna.load_study(study_name="own", storage=url)
    assert sorted(t.value for t in study.trials) == [42.0, 43.0]
