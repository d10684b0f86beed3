"""A NaN or infinite validation loss or accuracy is `diverged`, like a NaN training loss, even when
a hook that judges the epoch (Optuna's pruner) would have stopped the trial as pruned."""

from __future__ import annotations

import math

import pytest

from mnist_lab.job.build import build_trainer
from mnist_lab.train.loop import Diverged, Trainer


class PrunerLike(Exception):
    """What a pruning hook raises on a NaN intermediate value (optuna.TrialPruned)."""


def _judge(epoch: int, row: dict) -> None:
    if epoch > 0 and not math.isfinite(row["val/acc"]):
        raise PrunerLike


@pytest.mark.parametrize(("key", "bad"), [("val/loss", math.nan), ("val/acc", math.inf)])
def test_non_finite_validation_is_diverged_not_pruned(job_config, monkeypatch, key, bad):
    trainer = build_trainer(job_config(["epochs=2", "data.train_subset=500", "trainer.device=cpu"]))
    evaluate = Trainer._evaluate

    def broken(self, member):
        metrics = evaluate(self, member)
        if self.fitting:
            metrics[key] = bad
            if key == "val/loss":
                metrics["val/acc"] = math.nan  # a NaN loss comes with a meaningless accuracy
        self.fitting = True  # epoch 0 (before training) is measured as it is
        return metrics

    monkeypatch.setattr(Trainer, "_evaluate", broken)
    trainer.fitting = False
    rows = []
    (member,) = trainer.members
    member.hooks = [lambda epoch, row: rows.append(row), _judge]
    trainer.fit()
    assert isinstance(member.error, Diverged)
    assert str(member.error) == f"{key} became {bad} in epoch 1"
    assert [r["epoch"] for r in rows] == [0, 1]  # the epoch is still recorded


def test_a_hook_error_on_a_finite_epoch_still_propagates(job_config):
    trainer = build_trainer(job_config(["epochs=1", "data.train_subset=500", "trainer.device=cpu"]))

    def fail(epoch, row):
        if epoch == 1:
            raise PrunerLike

    trainer.members[0].hooks = [fail]
    trainer.fit()
    assert isinstance(trainer.members[0].error, PrunerLike)
