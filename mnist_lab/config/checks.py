"""Checks of values that types alone cannot refuse, run before any data is loaded or step taken."""

from __future__ import annotations

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
