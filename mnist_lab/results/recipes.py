"""Which keys tell a section's recipes apart, and what all its runs share that the defaults do not.

A recipe is what a run trains (`mnist_lab.config.recipe.is_recipe_key`: seeds, paths, devices and
display settings aside) on which data (the fingerprint `data.id`). For the completed runs of one
section:

- every key whose value differs is a row key of the section's grid, named as typed: a short knob
  (`lr`: the value the run used, from `mnist_lab.config.vocabulary`), a group's option
  (`optimizer`), any other key (`model.dropout`). Left out are only keys that say nothing more
  than a shown one: a key a knob feeds with the knob's own value (`optimizer.lr` beside `lr`), and
  a key of a group whose option differs that changes only with it (Adam's `optimizer.betas` beside
  `optimizer`) unless the runs' overrides set it. A study's searched parameters are always shown;
- every key shared by all of them whose value is not the default config's (`default_recipe`, with
  the group options they share) is listed on its "same in every run" line, so a study on
  `data.train_subset=3000` never reads like full MNIST; the data's fingerprint always is.
"""

from __future__ import annotations

import json
import numbers
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from mnist_lab.config import vocabulary
from mnist_lab.config.recipe import default_choices, default_recipe, is_recipe_key
from mnist_lab.results.columns import missing, short
from mnist_lab.results.runs import knob_names, overridden_columns

DATA_ID = "data.id"
STUDY_FILE = "optimization_results.yaml"  # the Optuna sweeper's report, beside the trials


def value_key(value) -> str:
    """A value in one spelling, for telling values apart exactly (0 == 0.0, JSON lists compact)."""
    if missing(value):
        return ""
    if isinstance(value, bool | np.bool_):
        return str(bool(value)).lower()
    if isinstance(value, numbers.Number):
        number = float(value)
        return str(int(number)) if number.is_integer() else repr(number)
    return (
        json.dumps(parsed(value), separators=(",", ":")) if isinstance(value, str) else str(value)
    )


def parsed(value):
    """A list the table holds as JSON text, as a list again; anything else as it is."""
    if isinstance(value, str) and value.startswith("["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def groups(runs: pd.DataFrame) -> list[str]:
    """The config groups whose option the records name (`model`, `optimizer`, ...)."""
    return sorted(c.removeprefix("choices.") for c in runs.columns if c.startswith("choices."))


def config_columns(runs: pd.DataFrame) -> list[str]:
    """The recipe keys of the config, except the knobs (their columns hold what the run used)."""
    return sorted(
        c
        for c in runs.columns
        if c.startswith("config.") and is_recipe_key(short(c)) and short(c) not in knob_names()
    )


def knob_columns() -> list[str]:
    """The knobs that make recipes (not the seed: it makes replicates)."""
    return [name for name in knob_names() if is_recipe_key(name)]


def identity(runs: pd.DataFrame) -> list[str]:
    """The columns whose values together are one recipe."""
    return [*knob_columns(), *config_columns(runs), DATA_ID]


def candidates(runs: pd.DataFrame) -> list[str]:
    """Every column a section may be keyed by, in the order they are shown."""
    return [
        c for c in (*knob_columns(), *groups(runs), *config_columns(runs), DATA_ID) if c in runs
    ]


def column_of(key: str, runs: pd.DataFrame) -> str:
    """The column an override's key sets: a knob's, a group's option, else the config key's."""
    if key in knob_names() or f"choices.{key}" in runs:
        return key
    return f"config.{key}"


def study_parameters(runs: pd.DataFrame) -> set[str]:
    """The columns an Optuna study searched, as its sweeper's report names them (`best_params`
    of optimization_results.yaml in each sweep folder); none where there is no report."""
    found = set()
    for sweep in runs.loc[runs["study"].notna(), "sweep"].dropna().unique():
        try:
            report = yaml.safe_load((Path(sweep) / STUDY_FILE).read_text())
        except (OSError, yaml.YAMLError):
            continue
        params = report.get("best_params") if isinstance(report, dict) else None
        found |= {column_of(str(k), runs) for k in params or {}}
    return found


@dataclass
class Keys:
    columns: list[str]  # the section's row keys: what differs among its completed runs
    same: dict  # column -> value every completed run shares and the defaults do not


def _said_by_a_knob(column: str, values: pd.Series) -> bool:
    if not column.startswith("config.") or (knob := vocabulary.knob_feeding(short(column))) is None:
        return False
    return all(knob.covers(short(column), parsed(v)) for v in values)


def baseline(done: pd.DataFrame, shared_groups: dict) -> dict:
    """The default config's value of each candidate column, with the groups' shared options."""
    recipe = default_recipe(shared_groups)
    flat = {k: parsed(v) for k, v in recipe.items()}
    values = {f"config.{k}": v for k, v in recipe.items()}
    values |= {k.name: k.value(flat) for k in vocabulary.KNOBS}
    return values | default_choices()


def keyed(runs: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The columns' values in one spelling each (`value_key`), for telling them apart."""
    return runs[columns].map(value_key) if columns else pd.DataFrame(index=runs.index)


def section_keys(done: pd.DataFrame, spelled: pd.DataFrame | None = None) -> Keys:
    """What tells the recipes among `done` (one section's completed runs) apart, and what they
    share beyond the defaults. `spelled`: `keyed(done, candidates(done))`, when already made."""
    present = candidates(done)
    spelled = keyed(done, present) if spelled is None else spelled
    counts = spelled.nunique()
    differ = {c for c in present if counts[c] > 1}
    searched = study_parameters(done) & set(present)
    chosen = overridden_columns(done) | searched
    hidden = {c for c in present if _said_by_a_knob(c, done[c])}
    for group in differ & set(groups(done)):
        for column in (c for c in differ if c.startswith(f"config.{group}.")):
            pairs = spelled[[group, column]].drop_duplicates()
            if pairs[group].is_unique and column not in chosen:
                hidden.add(column)  # changes only with the group's option
    columns = [c for c in present if (c in differ and c not in hidden) or c in searched]
    shared = {
        g: done[g].iloc[0] for g in groups(done) if g not in differ and not missing(done[g].iloc[0])
    }
    default = baseline(done, shared)
    same = {
        c: done[c].iloc[0]
        for c in present
        if len(done)
        and c not in differ
        and c not in hidden
        and c not in columns
        and spelled[c].iloc[0] != ""
        and (c == DATA_ID or spelled[c].iloc[0] != value_key(default.get(c)))
    }
    return Keys(columns, same)
