"""`trainer.backward`: on the CPU the default single run trains through the hand-written stacked
step (a stack of one) where it covers the model, with the numbers autograd + torch.optim give."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mnist_lab.job.build import build_trainer
from mnist_lab.job.weights import load_state

SMALL = ["epochs=2", "data.train_subset=2000", "trainer.device=cpu"]


def _fit(job_config, overrides):
    trainer = build_trainer(job_config([*SMALL, *overrides]))
    rows = []
    trainer.members[0].hooks = [lambda epoch, row: rows.append(row)]
    trainer.fit()
    return trainer, rows


@pytest.mark.parametrize(
    "recipe",
    [
        [],  # the default: 784-128-10, plain SGD, batch 32
        ["optimizer.momentum=0.9", "optimizer.nesterov=true", "scheduler=cosine"],
        ["optimizer=adamw", "lr=0.001", "model.dropout=0.3", "hidden=64"],
        ["model.hidden_sizes=[64,32]", "model.activation=tanh", "optimizer.weight_decay=0.001"],
    ],
    ids=["default", "nesterov-cosine", "adamw-dropout", "two-layers-tanh"],
)
def test_auto_on_the_cpu_is_the_manual_step_with_autograds_numbers(job_config, recipe):
    lean, lean_rows = _fit(job_config, recipe)
    plain, plain_rows = _fit(job_config, [*recipe, "trainer.backward=autograd"])
    assert lean.learner.backward == "manual" and plain.learner.backward == "autograd"
    for a, b in zip(lean_rows, plain_rows, strict=True):
        # float32, two epochs: rounding differs, the run does not (dropout masks included).
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-4, nan_ok=True)
        assert abs(a["val/acc"] - b["val/acc"]) <= 1e-3
        assert abs(a["test/acc"] - b["test/acc"]) <= 1e-3
        # the configured rate, not its float32 copy on the device (epoch 0 has none)
        assert a["lr"] == b["lr"] or (math.isnan(a["lr"]) and math.isnan(b["lr"]))


@pytest.mark.parametrize(
    "uncovered",
    [
        "trainer.max_norm=3",
        "trainer.label_smoothing=0.1",
        "model.input_dropout=0.2",
        "model.batch_norm=true",
        "optimizer=rmsprop",
    ],
)
def test_auto_keeps_autograd_where_the_manual_step_does_not_reach(job_config, uncovered):
    trainer = build_trainer(job_config([*SMALL, uncovered]))
    assert trainer.learner.backward == "autograd"


def test_manual_where_it_does_not_reach_is_refused_in_one_line(run_cli):
    proc = run_cli([*SMALL, "trainer.max_norm=3", "trainer.backward=manual"])
    assert proc.returncode == 2, proc.output
    lines = [line for line in proc.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "trainer.backward" in lines[0] and "max_norm" in lines[0]


def test_the_record_names_the_backward_and_the_weights_reload(run_cli):
    proc = run_cli([*SMALL, "epochs=1"])
    assert proc.returncode == 0, proc.output
    record = json.loads((proc.run_dir / "result.json").read_text())
    assert record["backward"] == "manual"
    state = load_state(proc.run_dir / record["weights"]["final"], "cpu")
    assert state["0.weight"].shape == (128, 784)
    # A saved tensor is its own storage, not a view into a larger one.
    assert all(t.untyped_storage().nbytes() == t.numel() * t.element_size() for t in state.values())


def test_a_batched_members_weights_hold_only_its_own_parameters(run_cli):
    proc = run_cli(
        [
            "-m",
            "lr=0.01,0.02",
            *SMALL,
            "epochs=1",
            "hydra/launcher=batched",
            "trainer.save_weights=final",
        ]
    )
    assert proc.returncode == 0, proc.output
    for job in ("0", "1"):
        record = json.loads((proc.sweep_dir / job / "result.json").read_text())
        assert record["batched"]["k"] == 2
        state = torch.load(proc.sweep_dir / job / record["weights"]["final"], weights_only=True)
        sizes = {k: t.untyped_storage().nbytes() for k, t in state.items()}
        assert sizes["0.weight"] == 128 * 784 * 4, sizes
