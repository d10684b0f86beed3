"""`hydra/launcher=batched` end to end: stacked members equal the same jobs run one by one.

Tolerance (float32 on the CPU): the same final validation accuracy to 1e-3 and the same training
loss to 1e-4 relative. The stacked step computes each member's maths with batched products whose
rounding differs from the single-model kernels by a few ulps; in float64 the engine matches
autograd + torch.optim to 1e-10 (tests/test_stacked.py).
"""

from __future__ import annotations

import json

import optuna
import pytest

QUICK = ["epochs=1", "data.train_subset=2000", "trainer.device=cpu"]
GRID = ["lr=0.01,0.02", "seed=0,1"]
ACC_TOL, LOSS_RTOL = 1e-3, 1e-4


def records(sweep_dir):
    return {int(p.parent.name): json.loads(p.read_text()) for p in sweep_dir.glob("*/result.json")}


def test_batched_members_equal_the_basic_launchers_jobs(run_cli, tmp_path):
    basic = run_cli(["-m", *GRID, *QUICK], cwd=tmp_path / "basic")
    batched = run_cli(["-m", *GRID, *QUICK, "hydra/launcher=batched"], cwd=tmp_path / "batched")
    assert basic.returncode == 0, basic.output
    assert batched.returncode == 0, batched.output
    alone, together = records(basic.sweep_dir), records(batched.sweep_dir)
    assert sorted(alone) == sorted(together) == [0, 1, 2, 3]
    for num, rec in together.items():
        ref = alone[num]
        assert rec["status"] == "completed" and rec["batched"] == {
            "k": 4,
            "group": 0,
            "jobs": [0, 1, 2, 3],
        }
        assert rec["overrides"] == ref["overrides"] and "batched" not in ref
        assert abs(rec["final"]["val/acc"] - ref["final"]["val/acc"]) <= ACC_TOL
        assert rec["final"]["train/loss"] == pytest.approx(
            ref["final"]["train/loss"], rel=LOSS_RTOL
        )
        # the same initialisation, evaluated (losses summed in float64 here, float32 alone)
        assert rec["initial"]["val/acc"] == ref["initial"]["val/acc"]
        assert rec["initial"]["val/loss"] == pytest.approx(ref["initial"]["val/loss"], rel=1e-6)
        folder = batched.sweep_dir / str(num)
        assert (folder / ".hydra" / "overrides.yaml").is_file()
        log = (folder / "run.log").read_text()
        assert log.count("epoch 1 ") == 1 and "#" not in log  # its own lines only
    # the four members are different runs: seeds and rates change the numbers
    assert len({r["final"]["val/acc"] for r in together.values()}) == 4


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
    assert "batched" not in recs[0] and "batched" not in recs[1]
    bad = run_cli(["-m", "lr=0.1", *QUICK, "hydra/launcher=batched", "hydra.launcher.max_batch=0"])
    assert bad.returncode != 0
    assert "hydra.launcher.max_batch=0 is not allowed" in bad.output
