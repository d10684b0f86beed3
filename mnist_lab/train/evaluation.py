"""What an evaluation measures, in one table, and the one evaluation that measures it.

`METRICS` maps a metric's name to its sum over a chunk of outputs and targets; the evaluation
divides by the number of images. Every split (`val`, `test`) gets every metric as a
`<split>/<name>` key of the epoch row, and the run record, its log line, `result.json`'s
`initial`/`final`/`best` and the summary follow from the rows: a new metric is one entry here.
Sums stay on the device and are read once per evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

# name -> sum over a chunk, given (outputs, targets, the learner's summed loss).
METRICS: dict[str, Callable] = {
    "loss": lambda out, y, loss: loss(out, y),
    "acc": lambda out, y, loss: (out.argmax(1) == y).sum(),
}
SPLITS = ("val", "test")


def keys() -> list[str]:
    """The epoch row's evaluated keys, in column order: val/loss, val/acc, test/loss, ..."""
    return [f"{split}/{name}" for split in SPLITS for name in METRICS]


@torch.no_grad()
def measure(model, loss: Callable, x: torch.Tensor, y: torch.Tensor, batch: int) -> dict:
    """Every metric's mean over (x, y), in chunks of `batch`; NaN for an empty split."""
    if len(y) == 0:
        return dict.fromkeys(METRICS, math.nan)
    model.eval()
    sums = dict.fromkeys(METRICS, 0)
    for start in range(0, len(y), batch):
        out, target = model(x[start : start + batch]), y[start : start + batch]
        for name, metric in METRICS.items():
            sums[name] = sums[name] + metric(out, target, loss)
    model.train()
    return {name: float(total) / len(y) for name, total in sums.items()}


def evaluate(model, loss: Callable, data, batch: int) -> dict:
    """The model on the data's validation and test splits: every key of `keys()`."""
    row = {}
    for split in SPLITS:
        x, y = getattr(data, f"{split}_x"), getattr(data, f"{split}_y")
        row.update({f"{split}/{k}": v for k, v in measure(model, loss, x, y, batch).items()})
    return row
