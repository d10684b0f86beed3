"""The short knobs, written once: what a user types, which config key each feeds, how a table names it.

A knob is a top-level value of conf/config.yaml that the config groups read by interpolation
(`lr: ${lr}` in every optimizer file), so `hidden=512 lr=0.05` is enough on a command line. Three
places need to know them and read this table only: `config.knobs` (a knob set while nothing reads
it is refused, naming the key to set instead), `config.recipe` (the seed knob and the key it
feeds make replicates, not recipes) and the results layer (a knob is one column, named as typed,
holding the value the run used; the keys it feeds are not shown beside it).

Older records need no alias here: `mnist_lab.records.reading` reads them in today's form.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


@dataclass(frozen=True)
class Knob:
    name: str  # the top-level key, as typed (`hidden=512`) and as a table's column
    feeds: tuple[str, ...]  # the keys that read it, one per kind of config that has it
    help: str  # one line: what it sets

    def value(self, config: Mapping[str, Any]) -> Any:
        """The value a run used, from its flat config (dotted keys): the first key it feeds that
        the config has (a list's first item: the first layer), else the knob itself."""
        for key in self.feeds:
            used = config.get(key)
            if not _missing(used):
                return used[0] if isinstance(used, list | tuple) and used else used
        value = config.get(self.name)
        return None if _missing(value) else value

    def covers(self, key: str, value: Any) -> bool:
        """Whether the knob's column says all that `key` holds: the knob itself, or a key it feeds
        holding one value (a list of several layers says more: `model.hidden_sizes=[128, 256]`)."""
        if key == self.name:
            return True
        return key in self.feeds and not (isinstance(value, list | tuple) and len(value) > 1)


KNOBS = (
    Knob("hidden", ("model.hidden_sizes", "model.width"), "width of the first hidden layer"),
    Knob("lr", ("optimizer.lr",), "learning rate"),
    Knob("batch_size", ("data.batch_size",), "training batch size"),
    Knob("epochs", ("trainer.epochs",), "epochs to train"),
    Knob("seed", ("trainer.seed",), "seed of the model's initialisation and the batch order"),
)
BY_NAME = {knob.name: knob for knob in KNOBS}
SEED = BY_NAME["seed"]


def knob_feeding(key: str) -> Knob | None:
    """The knob that `key` is, or that feeds it."""
    return next((k for k in KNOBS if key == k.name or key in k.feeds), None)
