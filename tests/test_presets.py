"""Every write-up preset composes to its source's recipe and trains for a fraction of an epoch.

The full reproduction (3 seeds, full epochs) is `benchmarks/reproduce.py`; here each preset runs
on 1,000 images for one epoch, and the lab grid's sweep config expands to its eight rows.
"""

from __future__ import annotations

import math

import pytest
from hydra import compose, initialize_config_dir

from mnist_lab.config.schema import REPO_ROOT
from mnist_lab.job.build import build_trainer

PRESETS = sorted(p.stem for p in (REPO_ROOT / "conf/experiment").glob("*.yaml"))

# (hidden sizes, activation, head, optimizer, lr, batch, epochs, normalize, shuffle, model)
RECIPES = {
    "tutorial_relu128_sgd": ([128], "relu", "logits", "SGD", 0.01, 32, 10, "mnist", True, "mlp"),
    "deep64x3_adam_nll": (
        [64, 64, 64], "relu", "log_softmax", "Adam", 0.001, 15, 2, "none", True, "mlp",
    ),
    "sigmoid128x256_sgd_unshuffled": (
        [128, 256], "sigmoid", "logits", "SGD", 0.2, 64, 10, "none", False, "mlp",
    ),
    "lab_scratch_relu128": ([128], "relu", "logits", "SGD", 0.01, 64, 30, "none", True, "scratch"),
    "relu256_adam_half": ([256], "relu", "logits", "Adam", 0.001, 128, 10, "half", True, "mlp"),
}  # fmt: skip
MODELS = {"mlp": "mnist_lab.models.mlp.MLP", "scratch": "mnist_lab.models.scratch.ScratchMLP"}


def _compose(overrides, hydra_config=False):
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=hydra_config)


def test_every_preset_has_a_recipe_check():
    assert set(PRESETS) == set(RECIPES) | {"lab_grid", "mlp_strong"}


@pytest.mark.parametrize("preset", sorted(RECIPES))
def test_preset_composes_to_its_source_recipe(preset):
    cfg = _compose([f"experiment={preset}"])
    hidden, act, head, opt, lr, batch, epochs, norm, shuffle, model = RECIPES[preset]
    assert list(cfg.model.hidden_sizes) == hidden
    # a model without a `head` key (the scratch MLP) always returns logits
    model_head = cfg.model.head.value if "head" in cfg.model else "logits"
    assert cfg.model.activation.value == act and model_head == head
    assert cfg.model._target_ == MODELS[model]
    assert cfg.optimizer._target_ == f"torch.optim.{opt}" and cfg.optimizer.lr == lr
    assert cfg.data.batch_size == batch and cfg.trainer.epochs == epochs
    assert cfg.data.normalize == norm and cfg.data.shuffle == shuffle
    # cited by title (author where the write-up names one) and its figure, no file path
    source = cfg.preset.source
    assert "reports " in source and "/" not in source.split("(")[0], source


@pytest.mark.parametrize("preset", sorted(RECIPES))
def test_preset_trains_for_a_fraction_of_an_epoch(preset):
    cfg = _compose(
        [f"experiment={preset}", "data.train_subset=1000", "epochs=1", "trainer.device=cpu"]
    )
    trainer = build_trainer(cfg)
    rows = []
    trainer.members[0].hooks = [lambda epoch, row: rows.append(row)]
    trainer.fit()
    assert [r["epoch"] for r in rows] == [0, 1]
    assert math.isfinite(rows[-1]["train/loss"])
    assert 0.0 <= rows[-1]["test/acc"] <= 1.0


def test_lab_preset_keeps_the_labs_initialisation_and_clamp():
    cfg = _compose(["experiment=lab_scratch_relu128"])
    assert cfg.model.init.value == "normal" and cfg.model.init_std == 1.0
    assert cfg.model.prob_floor == pytest.approx(1e-6)


def test_lab_grid_sweeps_its_eight_rows_over_three_seeds():
    cfg = _compose(["experiment=lab_grid"], hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert params.lab_grid == "glob(*)" and params.seed == "0,1,2"
    rows = sorted(p.stem for p in (REPO_ROOT / "conf/lab_grid").glob("*.yaml"))
    assert len(rows) == 8
    reported = {}
    for row in rows:
        c = _compose(["experiment=lab_grid", f"lab_grid={row}"])
        assert c.model._target_ == MODELS["scratch"]
        reported[(c.hidden, c.lr, c.batch_size, c.epochs)] = c.preset.reported_test_acc
    assert reported == {
        (128, 0.01, 64, 30): 0.903,
        (256, 0.01, 64, 30): 0.928,
        (512, 0.01, 64, 30): 0.937,
        (512, 0.001, 32, 30): 0.913,
        (512, 0.02, 32, 20): 0.951,
        (512, 0.05, 16, 20): 0.957,
        (1024, 0.01, 128, 30): 0.938,
        (1024, 0.1, 16, 20): 0.965,
    }


def test_strong_mlp_preset_is_a_regularised_plain_mlp_that_trains():
    cfg = _compose(["experiment=mlp_strong"])
    assert list(cfg.model.hidden_sizes) == [1024, 1024] and not cfg.model.batch_norm
    assert (cfg.model.input_dropout, cfg.model.dropout) == (0.1, 0.3)
    assert (cfg.trainer.label_smoothing, cfg.trainer.max_norm) == (0.1, 3.5)
    assert cfg.optimizer._target_ == "torch.optim.SGD" and cfg.optimizer.nesterov
    assert cfg.scheduler.name.value == "cosine" and cfg.data.val_size > 0
    assert cfg.data.deskew  # preprocessing of every image, not augmentation
    assert "Srivastava" in cfg.preset.source and "Simard" in cfg.preset.source
    trainer = build_trainer(
        _compose(
            ["experiment=mlp_strong", "data.train_subset=1000", "epochs=1", "trainer.device=cpu"]
        )
    )
    rows = []
    trainer.members[0].hooks = [lambda epoch, row: rows.append(row)]
    trainer.fit()
    assert math.isfinite(rows[-1]["train/loss"]) and rows[-1]["test/acc"] > 0.5
    for weight in trainer.learner.constrained:
        assert weight.norm(dim=1).max().item() <= 3.5 * (1 + 1e-5)


def test_regularisation_search_runs_the_strong_preset_over_its_knobs():
    cfg = _compose(["hparams_search=mlp_regularised"], hydra_config=True)
    assert list(cfg.model.hidden_sizes) == [1024, 1024]  # the preset's network
    params = set(cfg.hydra.sweeper.params)
    assert {"model.input_dropout", "model.dropout", "trainer.label_smoothing"} <= params
    assert {"trainer.max_norm", "optimizer.weight_decay", "lr"} <= params
