"""What a saved run may name as `_target_`: a run folder is data, never code.

Rebuilding a run instantiates the classes its record names, and instantiating imports their
modules, so a folder someone sent you could run anything (`config.model._target_: this.s` imports
`this`). Before anything is built, each `_target_` of the config is checked against an allow-list
for its place: `model` one of the project's models (the `_target_` of each `conf/model/*.yaml`,
and the earlier paths `records.reading.MOVED_TARGETS` maps), `optimizer` a `torch.optim` optimizer
class, `data.dataset` one of the project's dataset loaders (each `conf/data/*.yaml`'s). The lists
come from reading the YAML files, never from importing what a record names.
"""

from __future__ import annotations

import functools

import torch
from omegaconf import OmegaConf

from mnist_lab.config.checks import leaves
from mnist_lab.config.schema import CONF_DIR
from mnist_lab.errors import LabError
from mnist_lab.records.reading import MOVED_TARGETS


class TargetRefused(LabError):
    """A saved run names a class outside the allow-list."""


def _yaml_targets(group: str, key: str) -> set[str]:
    targets = set()
    for path in sorted((CONF_DIR / group).glob("*.yaml")):
        target = OmegaConf.select(OmegaConf.load(path), key, default=None)
        if isinstance(target, str):
            targets.add(target)
    return targets


@functools.cache
def allowed_targets() -> dict[str, frozenset[str]]:
    """The allow-list: config node -> the `_target_`s a saved run may name there."""
    optimizers = {
        f"torch.optim.{name}"
        for name, value in vars(torch.optim).items()
        if isinstance(value, type)
        and issubclass(value, torch.optim.Optimizer)
        and value is not torch.optim.Optimizer
    }
    models = _yaml_targets("model", "_target_") | set(MOVED_TARGETS) | set(MOVED_TARGETS.values())
    return {
        "model": frozenset(models),
        "optimizer": frozenset(optimizers),
        "data.dataset": frozenset(_yaml_targets("data", "dataset._target_")),
    }


def check_targets(config: dict) -> None:
    """Refuse, in one line, a `_target_` anywhere in `config` (a plain container) that is not
    on the allow-list for its node."""
    allowed = allowed_targets()
    for key, value in leaves(config):
        node, _, leaf = key.rpartition(".")
        if leaf != "_target_":
            continue
        if value not in allowed.get(node, ()):
            what = {
                "model": "one of the project's models",
                "optimizer": "a torch.optim optimizer",
                "data.dataset": "one of the project's dataset loaders",
            }.get(node, "no class at all")
            raise TargetRefused(
                f"{key}={value!r}: a saved run is data; here it may name {what}, so it is not "
                f"loaded (nothing it names was imported)"
            )
