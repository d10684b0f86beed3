"""The CUDA-graph fast path: captured where it can be, equal to eager steps, eager elsewhere.

The GPU tests are skipped, with the reason shown by `pytest -ra`, on machines without CUDA; the
CPU test runs everywhere and checks that asking for graphs on the CPU trains eagerly.
"""

from __future__ import annotations

import logging

import pytest
import torch
from hydra import compose, initialize_config_dir

from mnist_lab.config.schema import REPO_ROOT
from mnist_lab.job.build import build_trainer

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

BASE = ["data.train_subset=6000", "epochs=2", "trainer.seed=1", "trainer.save_figures=false"]


def _cfg(overrides):
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=BASE + overrides)


def _train(overrides):
    trainer = build_trainer(_cfg(overrides))
    rows = []
    trainer.members[0].hooks = [lambda epoch, row: rows.append(row)]
    trainer.fit()
    return trainer, rows[-1]


def test_cuda_graph_on_cpu_falls_back_to_eager(caplog):
    with caplog.at_level(logging.WARNING):
        trainer, last = _train(["trainer.device=cpu", "trainer.cuda_graph=on"])
    assert trainer.graph is None
    assert "needs a CUDA device" in caplog.text
    assert last["val/acc"] > 0.5


CASES = {
    "sgd": [],
    "sgd-momentum-partial-batch": ["optimizer.momentum=0.9", "batch_size=64"],
    "adam-cosine": ["optimizer=adam", "lr=0.001", "scheduler=cosine"],
    "adamw-onecycle": ["optimizer=adamw", "lr=0.001", "scheduler=onecycle"],
    "rmsprop": ["optimizer=rmsprop", "lr=0.001"],
    "sgd-step-schedule": ["scheduler=step", "scheduler.step_epochs=1"],
    "scratch-cosine": ["model=scratch", "model.init_std=0.1", "scheduler=cosine"],
    "batchnorm-dropout-tanh": [
        "model.batch_norm=true",
        "model.dropout=0.1",
        "model.activation=tanh",
    ],
    "scratch": ["model=scratch", "model.init_std=0.1", "batch_size=64"],
    "resmlp-adam": ["model=resmlp", "optimizer=adam", "lr=0.001", "model.dropout=0.1"],
    "log-interval": ["trainer.log_interval=50"],
    "compile-partial-batch": ["trainer.compile=true", "batch_size=64"],
    "regularised-sgd-nesterov-cosine": [
        "model.input_dropout=0.2",
        "model.dropout=0.3",
        "trainer.label_smoothing=0.1",
        "trainer.max_norm=1.0",
        "optimizer.momentum=0.9",
        "optimizer.nesterov=true",
        "scheduler=cosine",
    ],
    "scratch-max-norm-smoothing": [
        "model=scratch",
        "model.init_std=0.1",
        "trainer.max_norm=1.0",
        "trainer.label_smoothing=0.1",
    ],
}


@needs_cuda
@pytest.mark.parametrize("case", sorted(CASES))
def test_graph_matches_eager(case):
    overrides = ["trainer.device=cuda", *CASES[case]]
    graph_trainer, graph = _train([*overrides, "trainer.cuda_graph=on"])
    assert graph_trainer.graph is not None and graph_trainer.graph.failed is None
    assert graph_trainer.graph.graph is not None, "the step was not captured"
    _, eager = _train([*overrides, "trainer.cuda_graph=off"])
    print(case, "graph", graph, "\neager", eager)
    # Same maths, same batches; only floating-point order may differ (run-to-run noise).
    assert graph["train/loss"] == pytest.approx(eager["train/loss"], rel=0.1)
    assert graph["val/acc"] == pytest.approx(eager["val/acc"], abs=0.01)
    assert graph["test/acc"] == pytest.approx(eager["test/acc"], abs=0.01)


@needs_cuda
def test_best_weights_are_kept_from_the_captured_parameters(tmp_path):
    """The best epoch's copy reads the tensors the graph updates: it equals what that epoch saw."""
    from mnist_lab.job.weights import WeightKeeper, load_state
    from mnist_lab.records.objective import Objective
    from mnist_lab.train.evaluation import measure

    trainer = build_trainer(_cfg(["trainer.device=cuda", "trainer.cuda_graph=on", "epochs=3"]))
    keeper = WeightKeeper(trainer.learner.model, "both", Objective.of(None))
    rows = []
    trainer.members[0].hooks = [lambda epoch, row: rows.append(row), keeper]
    trainer.fit()
    assert trainer.graph.graph is not None
    files = keeper.save(tmp_path, final_epoch=3)
    best = max(rows[1:], key=lambda r: r["val/acc"])
    trainer.learner.model.load_state_dict(load_state(tmp_path / files["best"], "cuda"))
    data, learner = trainer.data, trainer.learner
    acc = measure(learner.model, learner.eval_loss, data.val_x, data.val_y, 10_000)["acc"]
    assert acc == best["val/acc"]
