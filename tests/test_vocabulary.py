"""The short knobs are written once, in mnist_lab.config.vocabulary: the knob check, the recipe
and the results layer read that table, and the results layer knows no model's keys."""

from __future__ import annotations

import ast
import json

import pytest
from omegaconf import OmegaConf

from mnist_lab.config import knobs, recipe, vocabulary
from mnist_lab.config.schema import REPO_ROOT
from mnist_lab.errors import ConfigError
from mnist_lab.results import recipes
from mnist_lab.results.runs import build_runs

READERS = [
    *sorted((REPO_ROOT / "mnist_lab" / "results").glob("*.py")),
    REPO_ROOT / "mnist_lab" / "config" / "knobs.py",
    REPO_ROOT / "mnist_lab" / "config" / "recipe.py",
    REPO_ROOT / "mnist_lab" / "app" / "callbacks.py",
    REPO_ROOT / "experiments" / "summarize.py",
]


def strings(path) -> set[str]:
    """The string constants of a module, docstrings left out."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
    }
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        if id(node) not in docstrings
    }


def model_keys() -> set[str]:
    keys = set()
    for path in (REPO_ROOT / "conf" / "model").glob("*.yaml"):
        keys |= set(OmegaConf.load(path)) - {"defaults", "_target_"}
    return keys


def test_the_short_names_and_model_keys_are_spelled_in_the_table_only():
    names = {k.name for k in vocabulary.KNOBS} | {f for k in vocabulary.KNOBS for f in k.feeds}
    models = model_keys()
    assert {"hidden_sizes", "width", "activation"} <= models  # the check sees real keys
    forbidden = (
        names | models | {f"model.{k}" for k in models} | {f"config.model.{k}" for k in models}
    )
    found = {
        (p.relative_to(REPO_ROOT).as_posix(), s) for p in READERS for s in strings(p) & forbidden
    }
    assert not found


def test_the_recipe_leaves_out_the_seed_the_table_names():
    assert {vocabulary.SEED.name, *vocabulary.SEED.feeds} <= set(recipe.NOT_RECIPE)
    assert not recipe.is_recipe_key("trainer.seed") and recipe.is_recipe_key("optimizer.lr")


@pytest.fixture
def dropout_knob(monkeypatch):
    """A sixth knob added to the table alone: `dropout`, feeding model.dropout."""
    knob = vocabulary.Knob("dropout", ("model.dropout",), "dropout after each hidden layer")
    monkeypatch.setattr(vocabulary, "KNOBS", (*vocabulary.KNOBS, knob))
    monkeypatch.setitem(vocabulary.BY_NAME, "dropout", knob)
    return knob


def test_a_knob_added_to_the_table_is_checked_and_shown(dropout_knob, compose):
    # the knob check: nothing in conf/ interpolates ${dropout}, so setting it is refused
    cfg = compose()
    with pytest.raises(ConfigError, match=r"^dropout=.*set model.dropout instead$"):
        OmegaConf.set_struct(cfg, False)
        cfg.dropout = 0.5
        knobs.check_knobs(cfg, ["dropout=0.5"])
    # the results layer: a column named as typed, holding the value used, model.dropout not beside
    records = [
        {
            "status": "completed",
            "run_dir": f"/r/{i}",
            "config": {"model": {"dropout": d, "hidden_sizes": [64]}, "seed": 0},
            "final": {"val/acc": 0.9},
        }
        for i, d in enumerate((0.1, 0.3))
    ]
    runs = build_runs(records, _no_epochs(), 3, 0.97)
    assert runs["dropout"].tolist() == [0.1, 0.3]
    assert recipes.section_keys(runs).columns == ["dropout"]


def _no_epochs():
    import pandas as pd

    return pd.DataFrame(columns=["run_dir", "epoch", "test/acc"])


def test_a_knob_column_holds_the_value_used_and_a_layer_list_only_where_it_says_more():
    def record(i, model):
        return {"status": "completed", "run_dir": f"/r/{i}", "config": {"model": model}}

    runs = build_runs(
        [
            record(0, {"hidden_sizes": [128]}),
            record(1, {"hidden_sizes": [128, 256]}),
            record(2, {"width": 64}),  # resmlp: the residual width
        ],
        _no_epochs(),
        3,
        0.97,
    )
    assert runs["hidden"].tolist() == [128, 128, 64]
    keys = recipes.section_keys(runs).columns
    assert keys == ["hidden", "config.model.hidden_sizes"]  # model.width says no more than hidden
    assert json.loads(runs["config.model.hidden_sizes"][1]) == [128, 256]
