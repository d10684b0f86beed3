"""What a run trains (mnist_lab.config.recipe), and the Optuna study that keeps it across resumes."""

from __future__ import annotations

import logging

import optuna
import pytest
from omegaconf import OmegaConf

from hydra_plugins.mnist_lab_optuna_sweeper._errors import SweeperError
from hydra_plugins.mnist_lab_optuna_sweeper._study_setup import keep_recipe
from mnist_lab.config.recipe import default_recipe, is_recipe_key, recipe_of


def config(**changes):
    cfg = OmegaConf.create(
        {
            "hydra": {"sweeper": {"n_trials": 3}},
            "lr": 0.05,
            "epochs": 5,
            "seed": 0,
            "data": {"root": "/somewhere", "deskew": True},
            "model": {"hidden_sizes": ["${hidden}", "${hidden}"], "dropout": 0.3},
            "optimizer": {"lr": "${lr}"},
            "trainer": {"device": "cpu", "seed": "${seed}", "epochs": "${epochs}"},
            "hidden": 1024,
        }
    )
    cfg.merge_with_dotlist([f"{k}={v}" for k, v in changes.items()])
    return cfg


def test_the_recipe_is_what_is_trained_as_written():
    recipe = recipe_of(config(), leave_out=["lr"])
    assert recipe == {
        "epochs": 5,
        "data.deskew": True,
        "model.hidden_sizes": '["${hidden}", "${hidden}"]',
        "model.dropout": 0.3,
        "optimizer.lr": "${lr}",  # follows the searched key: the same text whatever it is
        "trainer.epochs": "${epochs}",
        "hidden": 1024,
    }
    assert not is_recipe_key("trainer.seed") and not is_recipe_key("data.root")
    assert is_recipe_key("data.deskew") and not is_recipe_key("model.dropout", ["model"])


def study():
    return optuna.create_study(direction="maximize")


def test_a_new_study_stores_its_recipe_and_a_resume_with_the_same_one_goes_on():
    s = study()
    keep_recipe(s, config(), {"lr"})
    assert s.user_attrs["recipe"]["data.deskew"] is True
    s.add_trial(optuna.trial.create_trial(value=0.9))
    # Another seed, device or data folder, or another value of a searched key: the same recipe.
    keep_recipe(s, config(seed=3, lr=0.2, **{"trainer.device": "cuda", "data.root": "/x"}), {"lr"})


@pytest.mark.parametrize(
    "change, says",
    [
        ({"data.deskew": False}, "was run with data.deskew=true; this sweep has data.deskew=false"),
        ({"epochs": 15}, "was run with epochs=5; this sweep has epochs=15"),
        (
            {"model.dropout": 0.5, "hidden": 512, "epochs": 1, "data.deskew": False},
            "was run with data.deskew=true, epochs=5, hidden=1024, ...; this sweep has "
            "data.deskew=false, epochs=1, hidden=512, ...:",
        ),
    ],
)
def test_a_resume_under_another_recipe_is_refused_in_one_line(change, says):
    s = study()
    keep_recipe(s, config(), {"lr"})
    with pytest.raises(SweeperError) as refused:
        keep_recipe(s, config(**change), {"lr"})
    message = str(refused.value)
    assert says in message and "\n" not in message
    assert "hydra.sweeper.study_name=NAME" in message


def test_a_key_only_one_sweep_knows_is_not_compared():
    s = study()
    keep_recipe(s, config(), {"lr"})
    keep_recipe(s, config(lr=0.1), set())  # lr searched before, fixed now: not compared
    newer = config()
    newer.data.normalize = "mnist"  # a key this version added
    keep_recipe(s, newer, {"lr"})


def test_a_study_from_a_version_that_stored_no_recipe_is_warned_about(caplog):
    s = study()
    s.add_trial(optuna.trial.create_trial(value=0.9))
    with caplog.at_level(logging.WARNING):
        keep_recipe(s, config(), {"lr"})
    assert "stored no recipe" in caplog.text
    assert "recipe" not in s.user_attrs  # what its trials trained stays unknown, not assumed


@pytest.mark.parametrize(
    "choices",
    [{}, {"model": "resmlp", "optimizer": "adam", "scheduler": "cosine"}, {"model": "scratch"}],
)
def test_the_default_recipe_read_from_the_yaml_files_is_what_hydra_composes(compose, choices):
    composed = recipe_of(compose([f"{g}={o}" for g, o in choices.items()]), resolve=True)
    read = default_recipe(choices)
    assert {k: v for k, v in composed.items() if k in read} == read
    assert {k: v for k, v in composed.items() if k not in read} == {
        k: None for k in composed.keys() - read.keys()
    }  # only what a schema adds with a null default is left out
