"""The epoch loop, written once, for K >= 1 members trained by one step: a single run is a group of one.

Whatever step trains the members -- a model's own learner (autograd + torch.optim, or the model's
own backward), the hand-written step of `mnist_lab.train.stacked` for a stack of K (a stack of one
for a single run on the CPU), or any of them captured as a CUDA graph (`mnist_lab.train.cuda_graph`)
-- this loop makes each member's epoch rows, evaluates each member's own model
(`mnist_lab.train.evaluation`), applies the divergence rule and early stopping, flags the last
epoch and runs the member's hooks. A member stops alone: a hook raised (a pruned trial, a failing
write), it diverged, or early stopping ended it; it leaves the stack, its numbers stay as they
were, and no other member's numbers change (members never mix: every product is per member).

Training metrics are summed on the device and read once per epoch, so there is no host-device
synchronisation between steps (unless `log_interval` asks for it).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch

from mnist_lab.data.dataset import DataTensors
from mnist_lab.records.objective import Objective
from mnist_lab.signals import raise_pending
from mnist_lab.train import evaluation
from mnist_lab.train.cuda_graph import GraphEpoch
from mnist_lab.train.epoch import batch_plan, eager_epoch
from mnist_lab.train.learners import Learner

log = logging.getLogger(__name__)

EpochHook = Callable[[int, dict], None]


class Diverged(Exception):
    """The training loss, or a validation metric, became NaN or infinite."""


@dataclass
class TrainSettings:
    """What the members of one loop share, from `data` and `trainer` (their values live in conf/)."""

    epochs: int
    batch_size: int
    shuffle: bool
    drop_last: bool
    eval_batch_size: int
    eval_every_epoch: bool
    log_interval: int
    progress: bool


class EarlyStopping:
    """Stops once the objective's metric has not beaten its best by more than `min_delta` for
    `patience` epochs. Fed the host floats the evaluation already read: no device sync."""

    def __init__(self, patience: int, min_delta: float, objective: Objective):
        self.patience, self.min_delta, self.objective = patience, min_delta, objective
        self.best, self.best_epoch, self.waited = None, 0, 0

    def update(self, epoch: int, row: dict) -> str | None:
        """None to go on, else why training stops after this epoch."""
        value = row.get(self.objective.metric)
        if self.objective.better(value, self.best, self.min_delta):
            self.best, self.best_epoch, self.waited = value, epoch, 0
            return None
        self.waited += 1
        if self.waited < self.patience:
            return None
        shown = "none" if self.best is None else f"{self.best:.4f}"
        return (
            f"{self.objective.metric} did not improve by more than {self.min_delta:g} for "
            f"{self.patience} epoch(s) after epoch {self.best_epoch} ({shown})"
        )


@dataclass(eq=False)
class Member:
    """One model of the loop and what is its own: its learner (model, rates, evaluation loss), the
    seed of its batch order, its dropout generator for the stacked step on the CPU, its epoch
    hooks, early stopping, and the context its hooks and log lines run in (its job's).

    After `Trainer.fit`: `error` says why it stopped (None: it completed), `stopped_early` when
    and why early stopping ended it.
    """

    learner: Learner
    seed: int
    hooks: list[EpochHook] = field(default_factory=list)
    stopper: EarlyStopping | None = None
    rng: torch.Generator | None = None
    context: Callable[[], AbstractContextManager] = nullcontext
    error: BaseException | None = None
    stopped_early: dict | None = None

    def __post_init__(self):
        # Drawn on the CPU so that a seed means the same order on every device.
        self.order = torch.Generator().manual_seed(self.seed)


class Trainer:
    """The members' epochs, every step taken by `learner`: the one member's own learner by
    default, else one that trains them all (`stacked.StackedLearner`). `capture`: replay the step
    as a CUDA graph (on CUDA only). `on_stop(member)` is called as soon as a member stops on its
    own (an error, early stopping), so that its job can end while the others train on."""

    def __init__(
        self,
        members: list[Member],
        data: DataTensors,
        settings: TrainSettings,
        learner: Learner | None = None,
        capture: bool = False,
        on_stop: Callable[[Member], None] | None = None,
    ):
        if learner is None and len(members) > 1:
            raise ValueError("several members need a learner that steps them all")
        self.members, self.alive = members, list(members)
        self.data, self.settings = data, settings
        self.learner = learner or members[0].learner
        self.plan = batch_plan(data.n_train, settings.batch_size, settings.drop_last)
        self.capture, self.on_stop = capture, on_stop
        self.graph = self._graph()

    @property
    def captured(self) -> bool | None:
        """Whether the step runs as a captured CUDA graph (None: no capture was tried)."""
        return None if self.graph is None else self.graph.graph is not None

    def _graph(self) -> GraphEpoch | None:
        if not self.capture:
            return None
        d, s = self.data, self.settings
        shape = () if len(self.alive) == 1 else (len(self.alive),)
        return GraphEpoch(
            self.learner, d.train_x, d.train_y, s.batch_size, s.log_interval, members=shape
        )

    def _order(self, member: Member) -> torch.Tensor:
        idx = self.data.train_idx
        if not self.settings.shuffle:
            return idx
        return idx[torch.randperm(len(idx), generator=member.order).to(idx.device)]

    def train_epoch(self, epoch: int) -> list[tuple[float, float]]:
        """One epoch of steps: each live member's mean training loss and accuracy.

        One member trains on its (n,) sample order, several on a (K, n) stack of theirs.
        """
        d, s, plan = self.data, self.settings, self.plan
        orders = [self._order(m) for m in self.alive]
        order = orders[0] if len(orders) == 1 else torch.stack(orders)
        first = (epoch - 1) * len(plan)
        if self.graph is not None:
            loss_sum, correct = self.graph.run_epoch(order, plan, first)
        else:
            bar = _progress(len(plan), epoch, s.progress)
            loss_sum, correct = eager_epoch(
                self.learner, d.train_x, d.train_y, order, plan, first, s.log_interval, bar
            )
            if bar is not None:
                bar.close()
        seen = plan[-1][1]
        losses, hits = loss_sum.view(-1).tolist(), correct.view(-1).tolist()
        return [(loss / seen, right / seen) for loss, right in zip(losses, hits, strict=True)]

    def fit(self) -> None:
        """Epoch 0 (the untrained models), then each epoch, until every member has stopped.

        Each member's hooks see each of its rows; the row of its last epoch (the configured
        last, a diverged one, the one early stopping ends on) carries `last_epoch: True`, so a
        hook never acts on a next epoch (the Optuna reporter does not prune a trial that is
        ending anyway). A member's own end is its `error` or `stopped_early`; a fault of the
        shared step, or a signal, propagates.
        """
        self._close_epoch(0, [(math.nan, math.nan)] * len(self.alive), 0.0)
        for epoch in range(1, self.settings.epochs + 1):
            if not self.alive:
                return
            raise_pending()  # a CUDA-graph epoch has no step loop here
            start = time.perf_counter()
            trained = self.train_epoch(epoch)
            self._close_epoch(epoch, trained, time.perf_counter() - start)

    def _close_epoch(self, epoch: int, trained: list[tuple[float, float]], seconds: float) -> None:
        """Each live member's row: evaluated, judged, handed to its hooks."""
        s = self.settings
        step = epoch * len(self.plan) - 1
        kept = []
        for i, (member, (loss, acc)) in enumerate(zip(self.alive, trained, strict=True)):
            row = {"epoch": epoch, "train/loss": loss, "train/acc": acc}
            diverged = epoch > 0 and not math.isfinite(loss)
            evaluated = epoch == 0 or s.eval_every_epoch or epoch == s.epochs or diverged
            if evaluated:
                row.update(self._evaluate(member))
            else:
                row.update(dict.fromkeys(evaluation.keys(), math.nan))
            row["lr"] = member.learner.lr_at(step) if epoch else math.nan
            row["seconds"] = seconds
            why = divergence(row, evaluated, len(self.data.val_y) > 0) if epoch else None
            stop = None
            if epoch and why is None and member.stopper is not None:
                stop = member.stopper.update(epoch, row)
            row["last_epoch"] = epoch == s.epochs or why is not None or stop is not None
            if self._emit(member, row, why, stop):
                kept.append(i)
            elif self.on_stop is not None:
                self.on_stop(member)
        if len(kept) < len(self.alive):
            self.alive = [self.alive[i] for i in kept]
            if self.alive:  # a stack goes on without the members that stopped
                self.learner.keep_only(kept)
                self.graph = self._graph()

    def _evaluate(self, member: Member) -> dict:
        start = time.perf_counter()
        lrn = member.learner
        row = evaluation.evaluate(
            lrn.model, lrn.eval_loss, self.data, self.settings.eval_batch_size
        )
        row["eval_seconds"] = time.perf_counter() - start
        return row

    @staticmethod
    def _emit(member: Member, row: dict, why: str | None, stop: str | None) -> bool:
        """Logs the row and runs the member's hooks, in its context; False once it stops."""
        try:
            with member.context():
                try:
                    log_epoch(row)
                    for hook in member.hooks:
                        hook(row["epoch"], row)
                except Exception:
                    if why is None:
                        raise  # else a hook judging the epoch (a pruner) must not hide it
                if why is not None:
                    raise Diverged(why)
                if stop is not None:
                    log.info("early stopping after epoch %d: %s", row["epoch"], stop)
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # pruned, diverged, or a hook that failed: this member only
            member.error = e
            return False
        if stop is not None:
            member.stopped_early = {"epoch": row["epoch"], "reason": stop}
        return stop is None


def divergence(row: dict, evaluated: bool, has_val: bool) -> str | None:
    """Why an epoch's row means the run diverged, or None: a non-finite training loss, or a
    non-finite validation metric where they were measured."""
    checked = ["train/loss"]
    if evaluated and has_val:
        checked += [k for k in row if k.startswith("val/")]
    bad = [k for k in checked if not math.isfinite(row[k])]
    return f"{bad[0]} became {row[bad[0]]} in epoch {row['epoch']}" if bad else None


def log_epoch(row: dict) -> None:
    """The epoch's line in the job's log: every metric of the row."""
    metrics = [k for k in row if "/" in k]
    log.info(
        "epoch %d  " + "  ".join(f"{k} %.4f" for k in metrics) + "  %.2fs",
        row["epoch"],
        *(row[k] for k in metrics),
        row["seconds"],
    )


def _progress(total: int, epoch: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=f"epoch {epoch}", leave=False, unit="step")
