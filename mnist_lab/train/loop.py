"""The training loop: one step function, batches cut by index, metrics kept on the device.

Metrics are summed on the device and read once per epoch, so the loop has no host-device
synchronisation between steps (unless `log_interval` asks for it). On CUDA the epoch runs through
`mnist_lab.train.cuda_graph` (the same step captured once and replayed); elsewhere, or when the step
cannot be captured, through `eager_epoch`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from mnist_lab.data.dataset import DataTensors
from mnist_lab.records.format import EVAL_KEYS, METRIC_KEYS
from mnist_lab.signals import raise_pending
from mnist_lab.train.learners import Learner

log = logging.getLogger(__name__)

EpochHook = Callable[[int, dict], None]


class Diverged(Exception):
    """The training loss, validation loss or validation accuracy became NaN or infinite."""


def eager_epoch(learner: Learner, x_all, y_all, order, plan, first_step, log_interval=0, bar=None):
    """One epoch of eager steps; returns (summed loss, number correct) as device tensors.

    `order` is one model's sample order, or (K, n) for K stacked models (`mnist_lab.train.stacked`), each
    with its own: then the sums have shape (K,).
    """
    stacked = order.dim() > 1
    loss_sum = torch.zeros(order.shape[:-1], device=x_all.device)
    correct = torch.zeros(order.shape[:-1], device=x_all.device, dtype=torch.long)
    for i, (start, end) in enumerate(plan):
        raise_pending()
        if learner.scheduled:
            learner.set_lr(learner.lrs[first_step + i])
        idx = order[..., start:end]
        # index_select, not x_all[idx]: a third of the time for a batch of 32 rows on a CPU.
        if stacked:
            y = y_all.index_select(0, idx.flatten()).view(idx.shape)
            x = x_all.index_select(0, idx.flatten()).view(*idx.shape, -1)
        else:
            x, y = x_all.index_select(0, idx), y_all.index_select(0, idx)
        loss, pred = learner.step(x, y)
        loss_sum.add_(loss, alpha=end - start)
        correct += (pred == y).sum(-1)
        if log_interval and (i + 1) % log_interval == 0:
            log.info("batch %d/%d loss %.4f", i + 1, len(plan), loss.item())
        if bar is not None:
            bar.update()
    return loss_sum, correct


@torch.no_grad()
def evaluate(learner: Learner, x: torch.Tensor, y: torch.Tensor, batch: int) -> tuple[float, float]:
    """Mean loss and accuracy over (x, y), in chunks, with one sync at the end."""
    if len(y) == 0:
        return math.nan, math.nan
    model = learner.model
    model.eval()
    loss = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for start in range(0, len(y), batch):
        out = model(x[start : start + batch])
        target = y[start : start + batch]
        loss += learner.eval_loss(out, target)
        correct += (out.argmax(1) == target).sum()
    model.train()
    return loss.item() / len(y), correct.item() / len(y)


def batch_plan(n: int, batch_size: int, drop_last: bool) -> list[tuple[int, int]]:
    """(start, end) of each batch; the last partial batch is kept unless drop_last."""
    stops = n - n % batch_size if drop_last else n
    return [(s, min(s + batch_size, n)) for s in range(0, stops, batch_size)]


@dataclass
class TrainSettings:
    """The loop's settings, from `data` and `trainer` in the config (their values live in conf/)."""

    epochs: int
    batch_size: int
    shuffle: bool
    drop_last: bool
    seed: int
    eval_batch_size: int
    patience: int | None  # early stopping: epochs without val/acc gain; None = off
    min_delta: float  # the gain over the best val/acc so far that counts as improvement
    eval_every_epoch: bool
    log_interval: int
    progress: bool


class EarlyStopping:
    """Stops once val/acc has not beaten its best by more than `min_delta` for `patience` epochs.

    Fed the host float the evaluation already returned: it adds no device synchronisation.
    """

    def __init__(self, patience: int, min_delta: float):
        self.patience, self.min_delta = patience, min_delta
        self.best, self.best_epoch, self.waited = -math.inf, 0, 0

    def update(self, epoch: int, val_acc: float) -> str | None:
        """None to go on, else why training stops after this epoch."""
        if val_acc > self.best + self.min_delta:
            self.best, self.best_epoch, self.waited = val_acc, epoch, 0
            return None
        self.waited += 1
        if self.waited < self.patience:
            return None
        return (
            f"val/acc did not improve by more than {self.min_delta:g} for {self.patience} "
            f"epoch(s) after epoch {self.best_epoch} ({self.best:.4f})"
        )


class Trainer:
    def __init__(self, learner: Learner, data: DataTensors, settings: TrainSettings, graph=None):
        self.learner = learner
        self.data = data
        self.settings = settings
        self.graph = graph  # a mnist_lab.train.cuda_graph.GraphEpoch, or None for eager steps
        self.plan = batch_plan(data.n_train, settings.batch_size, settings.drop_last)
        self._order = torch.Generator().manual_seed(settings.seed)
        self.stopped_early: dict | None = None  # {"epoch", "reason"} once early stopping ends it

    @property
    def has_val(self) -> bool:
        return len(self.data.val_y) > 0

    @property
    def steps_per_epoch(self) -> int:
        return len(self.plan)

    def _evaluate(self) -> dict:
        d, b = self.data, self.settings.eval_batch_size
        val_loss, val_acc = evaluate(self.learner, d.val_x, d.val_y, b)
        test_loss, test_acc = evaluate(self.learner, d.test_x, d.test_y, b)
        return dict(zip(EVAL_KEYS, (val_loss, val_acc, test_loss, test_acc), strict=True))

    def epoch_order(self) -> torch.Tensor:
        # The permutation is drawn on the CPU so that a seed means the same order on every device.
        idx = self.data.train_idx
        if not self.settings.shuffle:
            return idx
        return idx[torch.randperm(len(idx), generator=self._order).to(idx.device)]

    def train_epoch(self, epoch: int) -> dict:
        d, plan = self.data, self.plan
        order = self.epoch_order()
        first = (epoch - 1) * len(plan)
        if self.graph is not None:
            loss_sum, correct = self.graph.run_epoch(order, plan, first)
        else:
            bar = _progress(len(plan), epoch, self.settings.progress)
            loss_sum, correct = eager_epoch(
                self.learner,
                d.train_x,
                d.train_y,
                order,
                plan,
                first,
                self.settings.log_interval,
                bar,
            )
            if bar is not None:
                bar.close()
        seen = plan[-1][1]
        return {"train/loss": loss_sum.item() / seen, "train/acc": correct.item() / seen}

    def fit(self, hooks: list[EpochHook]) -> None:
        """Epoch 0 (before training), then each epoch; hooks see every row. Raises Diverged.

        The row of the last epoch that runs (the configured last, a diverged one, or the one
        early stopping ends on) carries `last_epoch: True`, so a hook never acts on a next epoch
        (the Optuna reporter does not prune a trial that is ending anyway).
        """
        row = {"epoch": 0, "train/loss": math.nan, "train/acc": math.nan, "lr": math.nan}
        row.update(self._timed_evaluate())
        row["seconds"] = 0.0
        self._emit(row, hooks)
        stopper = None
        if self.settings.patience is not None:
            stopper = EarlyStopping(self.settings.patience, self.settings.min_delta)
        for epoch in range(1, self.settings.epochs + 1):
            raise_pending()  # a CUDA-graph epoch has no step loop here
            start = time.perf_counter()
            row = {"epoch": epoch, **self.train_epoch(epoch)}
            row["lr"] = self.learner.lr_at(epoch * self.steps_per_epoch - 1)
            row["seconds"] = time.perf_counter() - start
            diverged = not math.isfinite(row["train/loss"])
            evaluated = self.settings.eval_every_epoch or epoch == self.settings.epochs or diverged
            if evaluated:
                row.update(self._timed_evaluate())
            else:
                row.update(dict.fromkeys(EVAL_KEYS, math.nan))
            why = divergence(row, evaluated, self.has_val)
            stop = None if stopper is None or why else stopper.update(epoch, row["val/acc"])
            row["last_epoch"] = epoch == self.settings.epochs or why is not None or stop is not None
            try:
                self._emit(row, hooks)
            except Exception:
                if why is None:
                    raise  # else a hook judging the epoch (a pruner) must not hide the divergence
            if why is not None:
                raise Diverged(why)
            if stop is not None:
                self.stopped_early = {"epoch": epoch, "reason": stop}
                log.info("early stopping after epoch %d: %s", epoch, stop)
                return

    def _timed_evaluate(self) -> dict:
        start = time.perf_counter()
        metrics = self._evaluate()
        metrics["eval_seconds"] = time.perf_counter() - start
        return metrics

    @staticmethod
    def _emit(row: dict, hooks: list[EpochHook]) -> None:
        log_epoch(row)
        for hook in hooks:
            hook(row["epoch"], row)


def divergence(row: dict, evaluated: bool, has_val: bool) -> str | None:
    """Why an epoch's row means the run diverged, or None: a non-finite training loss, or a
    non-finite validation loss or accuracy where they were measured. One rule for every loop."""
    checked = ["train/loss"] + (["val/loss", "val/acc"] if evaluated and has_val else [])
    bad = [k for k in checked if not math.isfinite(row[k])]
    return f"{bad[0]} became {row[bad[0]]} in epoch {row['epoch']}" if bad else None


def log_epoch(row: dict) -> None:
    """The epoch's line in the job's log."""
    log.info(
        "epoch %d  " + "  ".join(f"{k} %.4f" for k in METRIC_KEYS) + "  %.2fs",
        row["epoch"],
        *(row[k] for k in METRIC_KEYS),
        row["seconds"],
    )


def _progress(total: int, epoch: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=f"epoch {epoch}", leave=False, unit="step")
