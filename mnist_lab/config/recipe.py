"""What a run trains, as opposed to where, on which device, with which seed or how it is shown.

One definition for the two places that must put like with like: the summary groups runs into
recipes by it (mnist_lab.results.summary), and an Optuna study refuses to resume under another recipe
(hydra_plugins/mnist_lab_optuna_sweeper), so a study's trials always answer the same question.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mnist_lab.config.vocabulary import SEED

# Config keys that do not change what is trained, so they never make two recipes: the seed knob
# and the key it feeds (they make replicates), the preset's notes, where the files are (the data's
# fingerprint says what they held), the device (recorded beside) and what is shown.
NOT_RECIPE = (
    SEED.name,
    *SEED.feeds,
    "preset",
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


def recipe_of(cfg: DictConfig, leave_out: Iterable[str] = ()) -> dict[str, Any]:
    """The job config's recipe keys (dotted) with their values as written, not resolved.

    Unresolved, an interpolation (`optimizer.lr: ${lr}`) stays the same text whatever `lr` is, so
    keys that only follow a searched one never differ, and resolvers (paths, times) never run.
    Lists are JSON text; the `hydra` node is not part of what is trained.
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
            else:
                flat[name] = json.dumps(value) if isinstance(value, list) else value

    walk(container, "")
    return flat
