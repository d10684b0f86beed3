"""The residual MLP (`model=resmlp`): its blocks, its config, and training like any other model."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from conftest import IN_FEATURES, N_CLASSES
from hydra.errors import ConfigCompositionException
from torch import nn

from mnist_lab.errors import ConfigError
from mnist_lab.job.build import build_trainer
from mnist_lab.job.checks import check_config
from mnist_lab.models.build import build_model, count_parameters
from mnist_lab.models.resmlp import ResMLP

QUICK = ["data.train_subset=1000", "batch_size=100", "epochs=1", "trainer.device=cpu"]


def resmlp(**keys) -> ResMLP:
    settings = dict(
        width=32, depth=3, expansion=2, activation="relu", dropout=0.0, input_dropout=0.0
    )
    return ResMLP(784, 10, **{**settings, **keys})


def test_layers_and_parameter_count():
    model = resmlp(dropout=0.1)
    assert sum(isinstance(m, nn.LayerNorm) for m in model.modules()) == 3 + 1  # blocks + final
    inner = [m for m in model.blocks[0].modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in inner] == [(32, 64), (64, 32)]
    block = 2 * 32 + (32 * 64 + 64) + (64 * 32 + 32)
    assert count_parameters(model) == 784 * 32 + 32 + 3 * block + 2 * 32 + 32 * 10 + 10
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.1] * 3


def test_blocks_add_to_the_residual_stream():
    """With each block's last Linear zeroed, every block is the identity."""
    torch.manual_seed(0)
    model = resmlp()
    x = torch.randn(4, 784)
    with torch.no_grad():
        for block in model.blocks:
            last = block.body[-1]
            last.weight.zero_()
            last.bias.zero_()
        torch.testing.assert_close(model(x), model.head(model.norm(model.stem(x))))


def test_dropout_only_in_training_mode():
    model = resmlp(dropout=0.5)
    x = torch.randn(8, 784)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


def test_config_builds_it_and_hidden_sets_its_width(compose):
    cfg = compose(["model=resmlp", "hidden=48", "model.depth=3", "model.activation=tanh"])
    check_config(cfg)
    assert cfg.model._target_ == "mnist_lab.models.resmlp.ResMLP" and cfg.model.width == 48
    model = build_model(cfg.model, torch.device("cpu"), IN_FEATURES, N_CLASSES)
    assert isinstance(model, ResMLP) and len(model.blocks) == 3
    assert model.stem.out_features == 48
    assert any(isinstance(m, nn.Tanh) for m in model.modules())
    assert model(torch.zeros(2, 784)).shape == (2, 10)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["hidden=0"], "model.width"),
        (["model.depth=0"], "model.depth"),
        (["model.expansion=0"], "model.expansion"),
        (["model.dropout=1.0"], "model.dropout"),
    ],
)
def test_bad_values_are_refused_with_the_key(compose, overrides, key):
    with pytest.raises(ConfigError) as info:
        check_config(compose(["model=resmlp", *overrides]))
    assert info.value.key == key and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("model.activation=swish", ["model.activation", "leaky_relu"]),
        ("model.hidden_sizes=[64]", ["model.hidden_sizes"]),
        ("model.depth=two", ["model.depth"]),
    ],
)
def test_hydra_refuses_at_composition(compose, override, named):
    with pytest.raises(ConfigCompositionException) as info:
        compose(["model=resmlp", override])
    text = str(info.value) + str(info.value.__cause__ or "")
    for word in named:
        assert word in text


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_trains_with_autograd_and_any_optimizer(compose, optimizer):
    cfg = compose(["model=resmlp", "hidden=32", f"optimizer={optimizer}", "lr=0.01", *QUICK])
    trainer = build_trainer(cfg)
    rows = []
    trainer.members[0].hooks = [lambda epoch, row: rows.append(row)]
    trainer.fit()
    assert math.isfinite(rows[-1]["train/loss"])
    assert rows[-1]["val/acc"] > rows[0]["val/acc"] + 0.2  # it learned something in 10 steps


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_step_is_captured_as_a_cuda_graph(compose):
    cfg = compose(["model=resmlp", "hidden=64", "data.train_subset=6400", "batch_size=64"])
    trainer = build_trainer(cfg)
    rows = []
    trainer.members[0].hooks = [lambda epoch, row: rows.append(row)]
    trainer.fit()
    assert trainer.graph is not None and trainer.graph.graph is not None, trainer.graph.failed
    assert rows[-1]["val/acc"] > 0.8


def test_a_sweep_over_models_records_and_summarises_each(run_cli):
    """`-m model=mlp,scratch,resmlp`: one record per model; summary.csv's `model` names it."""
    proc = run_cli(["-m", "model=mlp,scratch,resmlp", "hidden=16", *QUICK])
    assert proc.returncode == 0, proc.output
    results = [json.loads((proc.sweep_dir / n / "result.json").read_text()) for n in "012"]
    assert [r["status"] for r in results] == ["completed"] * 3
    assert [r["choices"]["model"] for r in results] == ["mlp", "scratch", "resmlp"]
    assert results[2]["config"]["model"]["_target_"] == "mnist_lab.models.resmlp.ResMLP"
    summary = pd.read_csv(proc.sweep_dir / "summary.csv")
    assert sorted(summary["model"]) == ["mlp", "resmlp", "scratch"]
