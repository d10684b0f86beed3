"""The short knobs (`mnist_lab.config.vocabulary`) take effect or are refused.

A knob is a top-level value the config groups read through interpolation (`lr: ${lr}` in every
optimizer file). Once the key that reads it is set directly (`model.hidden_sizes=[64,64]`, or
`optimizer.lr=0.1`), the knob feeds nothing: a value given for it would be recorded but never
used. So a knob set on the command line or by a sweeper while nothing reads it stops the run with
one line naming the key to set instead.
"""

from __future__ import annotations

import re

from omegaconf import DictConfig, OmegaConf

from mnist_lab.config.vocabulary import BY_NAME
from mnist_lab.errors import ConfigError


def _strings(node):
    """Every string value of a plain container (interpolations are strings before resolving)."""
    if isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    elif isinstance(node, str):
        yield node


def unused_knobs(cfg: DictConfig) -> list[str]:
    """The knobs no value of the config's groups interpolates."""
    container = OmegaConf.to_container(cfg, resolve=False)
    groups = {k: v for k, v in container.items() if k not in BY_NAME}
    text = "\n".join(s for s in _strings(groups) if "${" in s)
    return [k for k in BY_NAME if not re.search(r"\$\{\s*" + re.escape(k) + r"\s*\}", text)]


def overridden(overrides: list[str]) -> set[str]:
    """The keys a list of Hydra overrides sets (`hidden=512`, `+lr=0.1`, `++seed=3`)."""
    return {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o}


def check_knobs(cfg: DictConfig, overrides: list[str]) -> None:
    """Refuse a knob given in `overrides` that nothing reads."""
    for knob in unused_knobs(cfg):
        if knob in overridden(overrides):
            feeds = BY_NAME[knob].feeds
            target = next((k for k in feeds if OmegaConf.select(cfg, k) is not None), feeds[0])
            value = OmegaConf.select(cfg, target, throw_on_missing=False)
            if OmegaConf.is_config(value):
                value = OmegaConf.to_container(value, resolve=True)
            raise ConfigError(
                knob,
                cfg[knob],
                f"has no effect: {target}={value} is set directly and does not read it; "
                f"set {target} instead",
            )
