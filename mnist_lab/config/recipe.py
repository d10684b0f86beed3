"""What a run trains, as opposed to where, on which device, with which seed or how it is shown.

One definition for the two places that must put like with like: the summary groups runs into
recipes by it (mnist_lab.results), and an Optuna study refuses to resume under another recipe
(hydra_plugins/mnist_lab_optuna_sweeper), so a study's trials always answer the same question.
`default_recipe` is what a run is compared with to say what it changed (a table's "same in every
run" line).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mnist_lab.config.vocabulary import SEED

# Config keys that do not change what is trained, so they never make two recipes: the seed knob
# and the key it feeds (they make replicates), the preset's notes, where the files are and how
# they are described (the data's fingerprint says what they held; `data.normalize` which of the
# dataset's statistics were used), the device (recorded beside) and what is shown.
NOT_RECIPE = (
    SEED.name,
    *SEED.feeds,
    "preset",
    "data.dataset",
    "data.root",
    "data.cache_dir",
    "data.download",
    "data.eval_batch_size",
    "trainer.device",
    "trainer.progress",
    "trainer.log_interval",
    "trainer.save_figures",
)


def is_recipe_key(key: str, leave_out: Iterable[str] = ()) -> bool:
    """False for a NOT_RECIPE key, one of `leave_out`, or a key below one of them."""
    return not any(key == n or key.startswith(f"{n}.") for n in (*NOT_RECIPE, *leave_out))


def recipe_of(
    cfg: DictConfig, leave_out: Iterable[str] = (), resolve: bool = False
) -> dict[str, Any]:
    """The job config's recipe keys (dotted) with their values as written, not resolved.

    Unresolved, an interpolation (`optimizer.lr: ${lr}`) stays the same text whatever `lr` is, so
    keys that only follow a searched one never differ, and resolvers (paths, times) never run.
    Lists are JSON text; the `hydra` node is not part of what is trained. `resolve` gives the
    values a run would use instead (only the recipe keys are resolved).
    """
    container = OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)
    container.pop("hydra", None)
    leave_out = tuple(leave_out)
    flat: dict[str, Any] = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if not is_recipe_key(name, leave_out):
                continue
            if isinstance(value, dict):
                walk(value, f"{name}.")
                continue
            if resolve:
                value = OmegaConf.select(cfg, name)
                if OmegaConf.is_config(value):
                    value = OmegaConf.to_container(value, resolve=True, enum_to_str=True)
            flat[name] = json.dumps(value) if isinstance(value, list) else value

    walk(container, "")
    return flat


# --- the default config, read without composing it ------------------------------------------------

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
GLOBAL_PACKAGE = (
    "# @package _global_"  # presets and searches: changes to the defaults, not defaults
)


@cache
def default_choices() -> dict[str, str | None]:
    """The option conf/config.yaml picks in each config group (`model: mlp`, `experiment: null`)."""
    entries = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "config.yaml"))["defaults"]
    choices = {}
    for entry in entries:
        if isinstance(entry, dict):
            ((group, option),) = entry.items()
            choices[group.removeprefix("optional ").strip()] = option
    return choices


@cache
def _default_recipe(choices: tuple[tuple[str, str | None], ...]) -> dict[str, Any]:
    container = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "config.yaml"))
    del container["defaults"], container["hydra"]
    for group, option in choices:
        path = CONF_DIR / group / f"{option}.yaml"
        if option is None or not path.is_file() or path.read_text().startswith(GLOBAL_PACKAGE):
            continue
        values = OmegaConf.to_container(OmegaConf.load(path))
        values.pop("defaults", None)
        container[group] = values
    return recipe_of(OmegaConf.create(container), resolve=True)


def default_recipe(choices: Mapping[str, str | None] = {}) -> dict[str, Any]:
    """The recipe (resolved) of conf/config.yaml with these options in its groups (the others as
    config.yaml picks them; presets and searches, `@package _global_` files, are left out).

    Read from the YAML files rather than composed by Hydra: composing imports every model's schema,
    and so torch, which the summary never loads. The files' values are merged as Hydra merges them
    for the default config (tests/test_recipe.py compares the two); a key a schema adds with a
    null default is absent here.
    """
    picked = {**default_choices(), **{g: o for g, o in choices.items() if g in default_choices()}}
    return _default_recipe(tuple(sorted(picked.items())))
