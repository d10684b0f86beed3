"""The objective in config (`conf/objective/`): one rule for the best epoch, read by the record,
the task's return value and an Optuna study -- minimised, or several at once -- end to end."""

from __future__ import annotations

import json

import optuna
import pytest
from omegaconf import OmegaConf

from mnist_lab.errors import ConfigError
from mnist_lab.job.checks import check_config
from mnist_lab.records.objective import Objective
from mnist_lab.records.run_record import RunRecord

# Three trials of one epoch; a seeded sampler, rates that train (no trial may diverge) and a subset
# every searched batch size fits, so each trial completes with its own numbers.
STUDY = ["hparams_search=mlp_optuna", "epochs=1", "trainer.device=cpu", "data.val_size=1000"]
STUDY += ["data.train_subset=1024", "lr=tag(log, interval(0.005, 0.1))"]
STUDY += ["hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.seed=0"]
STUDY += ["hydra.callbacks.summarize.plots=false"]  # the figures are not what is tested here


def rows(*values):
    """Epoch rows 1, 2, ... with these (val/loss, val/acc)."""
    return [
        {"epoch": e, "train/loss": 0.5, "val/loss": loss, "val/acc": acc, "seconds": 1.0}
        for e, (loss, acc) in enumerate(values, start=1)
    ]


def test_the_record_chooses_its_best_epoch_by_the_objective(tmp_path):
    epochs = rows((0.30, 0.90), (0.25, 0.89), (0.28, 0.92), (0.25, 0.91))
    config = {"objective": {"metrics": ["val/loss"], "directions": ["minimize"]}}
    by_loss = RunRecord(tmp_path / "loss", {"config": config})
    old = RunRecord(tmp_path / "old", {"config": {}})  # written before objectives: val/acc, max
    for row in epochs:
        by_loss.add_epoch(row["epoch"], row)
        old.add_epoch(row["epoch"], row)
    assert by_loss.summary()["best"]["epoch"] == 2  # the first of the two lowest losses
    assert old.summary()["best"]["epoch"] == 3
    assert Objective.of(None) == Objective(("val/acc",), ("maximize",))
    two = Objective(("val/acc", "param_count"), ("maximize", "minimize"))
    assert two.values({"final": {"val/acc": 0.9}, "param_count": 7}) == (0.9, 7)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["objective.metrics=[test/acc]"], "objective.metrics"),  # never chosen on the test set
        (
            ["objective=val_acc_params", "objective.metrics=[val/acc,wall_seconds]"],
            "objective.metrics",
        ),
        (["objective.directions=[maximize,minimize]"], "objective.directions"),
    ],
)
def test_an_objective_that_cannot_choose_is_refused_by_key(job_config, overrides, key):
    with pytest.raises(ConfigError, match=rf"^{key}="):
        check_config(job_config(overrides))


def test_an_optuna_study_minimises_val_loss(run_cli, tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    proc = run_cli(["-m", *STUDY, "objective=val_loss", f"hydra.sweeper.storage={url}"])
    assert proc.returncode == 0, proc.output
    study = optuna.load_study(study_name="mlp", storage=url)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert study.metric_names == ["val/loss"]
    records = {
        t.number: json.loads((proc.sweep_dir / f"trial_{t.number:04d}" / "result.json").read_text())
        for t in study.trials
    }
    losses = {n: r["final"]["val/loss"] for n, r in records.items()}
    assert len(set(losses.values())) == 3
    assert study.best_trial.number == min(losses, key=losses.get)
    assert study.best_value == pytest.approx(min(losses.values()))
    assert all(r["config"]["objective"]["directions"] == ["minimize"] for r in records.values())


def test_a_two_objective_study_keeps_the_pareto_front(run_cli, tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    proc = run_cli(["-m", *STUDY, "objective=val_acc_params", f"hydra.sweeper.storage={url}"])
    assert proc.returncode == 0, proc.output
    study = optuna.load_study(study_name="mlp", storage=url)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    for trial in study.trials:  # the task returned (final val/acc, param_count)
        record = json.loads(
            (proc.sweep_dir / f"trial_{trial.number:04d}" / "result.json").read_text()
        )
        assert trial.values == pytest.approx([record["final"]["val/acc"], record["param_count"]])
    front = sorted(t.number for t in study.best_trials)
    results = OmegaConf.load(proc.sweep_dir / "optimization_results.yaml")
    assert sorted(s.number for s in results.solutions) == front
    assert f"Pareto front of study 'mlp' ({len(front)} trials)" in proc.output
