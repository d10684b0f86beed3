"""The objective (`conf/objective/`): the metrics a run is judged by, each maximised or minimised.

The first metric is the one that chooses: the record's `best` epoch, early stopping, the
best-weights copy and pruning reports all use it, through `better` -- one rule for "which epoch is
best". Every metric is returned by the task (a float for one objective, a tuple for several) and
read by a sweeper. A record written before objectives existed has none: `val/acc`, maximised.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT = {"metrics": ["val/acc"], "directions": ["maximize"]}


@dataclass(frozen=True)
class Objective:
    metrics: tuple[str, ...]
    directions: tuple[str, ...]

    @classmethod
    def of(cls, node: Mapping | None) -> Objective:
        """From a config's `objective` node (a record's, or a job's); the default when absent."""
        node = node or DEFAULT
        directions = tuple(str(getattr(d, "value", d)) for d in node["directions"])
        return cls(tuple(node["metrics"]), directions)

    @property
    def metric(self) -> str:
        """The metric that chooses the best epoch."""
        return self.metrics[0]

    @property
    def maximize(self) -> bool:
        return self.directions[0] == "maximize"

    @property
    def maximizes(self) -> tuple[bool, ...]:
        """For each metric, whether it is maximised."""
        return tuple(d == "maximize" for d in self.directions)

    def __str__(self) -> str:
        return ", ".join(f"{m} ({d})" for m, d in zip(self.metrics, self.directions, strict=True))

    def better(self, value, than, min_delta: float = 0.0) -> bool:
        """Whether `value` (a finite number) beats `than` (None: nothing yet) by more than
        `min_delta`; a tie is no improvement, so the first of equal epochs stays the best."""
        if value is None or not math.isfinite(value):
            return False
        if than is None:
            return True
        return value > than + min_delta if self.maximize else value < than - min_delta

    def best(self, rows: list[dict]) -> dict | None:
        """The first row whose first metric is best; None when no row has a finite value."""
        found = None
        for row in rows:
            if self.better(row.get(self.metric), None if found is None else found[self.metric]):
                found = row
        return found

    def values(self, record: Mapping) -> tuple:
        """Each metric's value for the run: its last epoch's, or a fact of the record
        (`param_count`) for a metric no epoch measures."""
        final = record.get("final") or {}
        return tuple(final[m] if m in final else record.get(m) for m in self.metrics)
