"""Checks of values that types alone cannot refuse, run before any data is loaded or step taken."""

from __future__ import annotations

import math

from omegaconf import OmegaConf

from mnist_lab.errors import ConfigError

SWITCH = {"auto": "auto", "on": True, "true": True, "off": False, "false": False}


def parse_switch(key: str, value) -> str | bool:
    """`auto`, or True/False from on/off/true/false (Hydra may hand a bool)."""
    word = str(value).lower()
    if word not in SWITCH:
        raise ConfigError(key, value, "one of auto, on, off")
    return SWITCH[word]


def check_positive(key: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):  # untyped groups
        raise ConfigError(key, value, "must be a number > 0")
    if value <= 0:
        raise ConfigError(key, value, "must be > 0")


def check_fraction(key: str, value) -> None:
    """A probability such as a dropout rate: in [0, 1)."""
    if not 0.0 <= value < 1.0:
        raise ConfigError(key, value, "must be in [0, 1)")


def check_layer_sizes(key: str, sizes) -> None:
    if not sizes:
        raise ConfigError(key, list(sizes), "at least one layer")
    for i, size in enumerate(sizes):
        check_positive(f"{key}[{i}]", size)


def check_finite(cfg) -> None:
    """Every float in the config is a finite number: `inf` and `nan` parse as floats but would
    train a diverging run. Named where it was written (`lr=inf`, not `optimizer.lr` that
    interpolates it); then, for a value a resolver made, where it was read."""
    for resolve in (False, True):
        container = OmegaConf.to_container(cfg, resolve=resolve, enum_to_str=True)
        for key, value in leaves(container):
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(key, value, "must be a finite number")


def leaves(node, prefix: str = ""):
    """(dotted key, value) of every leaf of a container, list items as `key[i]`."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaves(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from leaves(value, f"{prefix}[{i}]")
    else:
        yield prefix, node
