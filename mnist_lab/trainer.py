"""The training loop: one step function, batches cut by index, metrics kept on the device.

A step is `step(x, y, lr_index) -> (loss_sum, n_correct)` as device tensors. Metrics are summed on
the device and read once per epoch, so the loop has no host-device synchronisation between steps
(unless `log_interval` asks for it). `mnist_lab.fast_step` builds a CUDA-graph version of the same
step; this module runs whichever step it is handed.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from mnist_lab.data import MnistTensors

log = logging.getLogger(__name__)

EpochHook = Callable[[int, dict], None]
METRIC_KEYS = ("train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc")


class Diverged(Exception):
    """The training loss became NaN or infinite."""


@dataclass
class Learner:
    """What the loop needs from a model: a step, an evaluation loss, and the per-step rates."""

    model: object
    step: Callable  # (x, y, step_index) -> (loss_sum, n_correct) device tensors
    eval_loss: Callable  # (output, y) -> summed loss tensor
    lrs: list[float] = field(default_factory=list)


def autograd_learner(model, optimizer, head: str, lrs: list[float]) -> Learner:
    loss_fn = F.nll_loss if head == "log_softmax" else F.cross_entropy
    constant_lr = len(set(lrs)) <= 1

    def step(x, y, i):
        if not constant_lr:
            for group in optimizer.param_groups:
                group["lr"] = lrs[i]
        out = model(x)
        loss = loss_fn(out, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach() * y.numel(), (out.argmax(1) == y).sum()

    return Learner(model, step, lambda out, y: loss_fn(out, y, reduction="sum"), lrs)


def scratch_learner(model, lrs: list[float]) -> Learner:
    def step(x, y, i):
        logits = model.forward(x)
        loss = model.loss_and_backward(logits, y)
        model.sgd_step(lrs[i])
        return loss * y.numel(), (logits.argmax(1) == y).sum()

    return Learner(model, step, lambda out, y: F.cross_entropy(out, y, reduction="sum"), lrs)


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
    epochs: int
    batch_size: int
    shuffle: bool
    drop_last: bool
    seed: int
    eval_batch_size: int
    eval_every_epoch: bool = True
    log_interval: int = 0
    progress: bool = False


class Trainer:
    def __init__(self, learner: Learner, data: MnistTensors, settings: TrainSettings):
        self.learner = learner
        self.data = data
        self.s = settings
        self.plan = batch_plan(data.n_train, settings.batch_size, settings.drop_last)
        self._order = torch.Generator().manual_seed(settings.seed)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.plan)

    def _evaluate(self) -> dict:
        d, b = self.data, self.s.eval_batch_size
        val_loss, val_acc = evaluate(self.learner, d.val_x, d.val_y, b)
        test_loss, test_acc = evaluate(self.learner, d.test_x, d.test_y, b)
        return {
            "val/loss": val_loss,
            "val/acc": val_acc,
            "test/loss": test_loss,
            "test/acc": test_acc,
        }

    def _epoch_order(self) -> torch.Tensor:
        # The permutation is drawn on the CPU so that a seed means the same order on every device.
        idx = self.data.train_idx
        if not self.s.shuffle:
            return idx
        return idx[torch.randperm(len(idx), generator=self._order).to(idx.device)]

    def train_epoch(self, epoch: int) -> dict:
        d, plan = self.data, self.plan
        order = self._epoch_order()
        device = d.train_x.device
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        first = (epoch - 1) * len(plan)
        bar = _progress(len(plan), epoch, self.s.progress)
        for i, (start, end) in enumerate(plan):
            idx = order[start:end]
            loss, right = self.learner.step(d.train_x[idx], d.train_y[idx], first + i)
            loss_sum += loss
            correct += right
            if self.s.log_interval and (i + 1) % self.s.log_interval == 0:
                log.info(
                    "epoch %d batch %d/%d loss %.4f",
                    epoch,
                    i + 1,
                    len(plan),
                    loss.item() / len(idx),
                )
            if bar is not None:
                bar.update()
        if bar is not None:
            bar.close()
        seen = plan[-1][1]
        return {"train/loss": loss_sum.item() / seen, "train/acc": correct.item() / seen}

    def fit(self, hooks: list[EpochHook]) -> None:
        """Epoch 0 (before training), then each epoch; hooks see every row. Raises Diverged."""
        row = {"epoch": 0, "train/loss": math.nan, "train/acc": math.nan, "lr": math.nan}
        row.update(self._evaluate())
        row["seconds"] = 0.0
        self._emit(row, hooks)
        for epoch in range(1, self.s.epochs + 1):
            start = time.perf_counter()
            row = {"epoch": epoch, **self.train_epoch(epoch)}
            row["lr"] = self.learner.lrs[epoch * self.steps_per_epoch - 1]
            train_seconds = time.perf_counter() - start
            diverged = not math.isfinite(row["train/loss"])
            if self.s.eval_every_epoch or epoch == self.s.epochs or diverged:
                row.update(self._evaluate())
            else:
                row.update(
                    dict.fromkeys(("val/loss", "val/acc", "test/loss", "test/acc"), math.nan)
                )
            row["seconds"] = train_seconds
            self._emit(row, hooks)
            if diverged:
                raise Diverged(f"training loss became {row['train/loss']} in epoch {epoch}")

    @staticmethod
    def _emit(row: dict, hooks: list[EpochHook]) -> None:
        log.info(
            "epoch %d  " + "  ".join(f"{k} %.4f" for k in METRIC_KEYS) + "  %.2fs",
            row["epoch"],
            *(row[k] for k in METRIC_KEYS),
            row["seconds"],
        )
        for hook in hooks:
            hook(row["epoch"], row)


def _progress(total: int, epoch: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=f"epoch {epoch}", leave=False, unit="step")
