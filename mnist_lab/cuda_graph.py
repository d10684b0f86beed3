"""The training step captured once as a CUDA graph and replayed for every full batch.

Why: a 784-128-10 step is a dozen microsecond kernels, so eager PyTorch spends its time in Python
and kernel launches (about 2 s per MNIST epoch on an H100 against 0.16 s replayed; see
docs/PERFORMANCE.md). Replaying a graph launches the whole step -- batch gather, forward, loss,
backward, optimizer step, metric sums -- with one call and no host-device synchronisation.

What it needs, and what it does about it:
- static shapes: every full batch replays the graph; the last partial batch (when drop_last is
  off) runs as an ordinary eager step on the same parameters, so no sample is dropped or padded;
- device-side state: optimizers that keep their step count on the host get `capturable=True`;
  a learning-rate schedule writes each step's rate into a 0-dim device tensor the graph reads;
- warm-up: the first steps run eagerly on a side stream (real training steps, not discarded), so
  lazily created optimizer state exists before capture.
Anything that still fails to capture falls back to eager steps with a log line saying why.
"""

from __future__ import annotations

import logging

import torch

from mnist_lab.trainer import Learner, eager_epoch

log = logging.getLogger(__name__)

WARMUP_STEPS = 3


def prepare_optimizer(optimizer) -> None:
    """Ask optimizers that support it to keep their state on the device (before any step)."""
    if optimizer is not None and "capturable" in optimizer.defaults:
        for group in optimizer.param_groups:
            group["capturable"] = True


class GraphEpoch:
    """Runs epochs by replaying one captured step; `failed` holds why it fell back, if it did."""

    def __init__(self, learner: Learner, x_all, y_all, batch_size: int, log_interval: int = 0):
        self.learner = learner
        self.x_all, self.y_all = x_all, y_all
        self.batch_size = batch_size
        self.log_interval = log_interval
        device = x_all.device
        self.idx = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.long, device=device)
        self.constant_lr = len(set(learner.lrs)) <= 1
        self.lr = None
        if not self.constant_lr:
            self.lr = torch.tensor(learner.lrs[0], device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.failed: str | None = None
        self.last_loss = None

    def _body(self):
        x = self.x_all.index_select(0, self.idx)
        y = self.y_all.index_select(0, self.idx)
        loss, right = self.learner.step(x, y)
        self.loss_sum.add_(loss)
        self.correct.add_(right)
        return loss

    def _warm_up_and_capture(self, order, plan, first_step) -> int:
        """Runs the warm-up steps eagerly and captures the next one; returns the steps run."""
        n = min(WARMUP_STEPS, len(plan))
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            loss, right = eager_epoch(
                self.learner, self.x_all, self.y_all, order, plan[:n], first_step
            )
            self.loss_sum.add_(loss)
            self.correct.add_(right)
        torch.cuda.current_stream().wait_stream(side)
        if n == len(plan) or plan[n][1] - plan[n][0] != self.batch_size:
            return n
        if self.lr is not None:
            self.lr.fill_(self.learner.lrs[first_step + n])
            self.learner.set_lr(self.lr)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.last_loss = self._body()
        except Exception as e:  # an op, optimizer or setting that cannot be captured
            self.failed = f"{type(e).__name__}: {str(e).splitlines()[0]}"
            log.warning("CUDA graph capture failed, training eagerly: %s", self.failed)
            torch.cuda.synchronize()
            if self.lr is not None:
                self.learner.set_lr(self.learner.lrs[first_step + n])
            return n
        self.graph = graph
        log.info("training step captured as a CUDA graph (batch %d)", self.batch_size)
        return n

    def run_epoch(self, order, plan, first_step):
        self.loss_sum.zero_()
        self.correct.zero_()
        start = 0
        if self.graph is None and self.failed is None:
            start = self._warm_up_and_capture(order, plan, first_step)
        if self.graph is None:  # capture failed or never possible: the rest of the run is eager
            loss, right = eager_epoch(
                self.learner,
                self.x_all,
                self.y_all,
                order,
                plan[start:],
                first_step + start,
                self.log_interval,
            )
            return self.loss_sum + loss, self.correct + right
        for i in range(start, len(plan)):
            begin, end = plan[i]
            if end - begin != self.batch_size:  # the last partial batch: one eager step
                if self.lr is not None:
                    self.learner.set_lr(self.learner.lrs[first_step + i])
                loss, right = self.learner.step(
                    self.x_all[order[begin:end]], self.y_all[order[begin:end]]
                )
                if self.lr is not None:
                    self.learner.set_lr(self.lr)
                self.loss_sum.add_(loss)
                self.correct.add_(right)
                continue
            self.idx.copy_(order[begin:end])
            if self.lr is not None:
                self.lr.fill_(self.learner.lrs[first_step + i])
            self.graph.replay()
            if self.log_interval and (i + 1) % self.log_interval == 0:
                log.info("batch %d/%d loss %.4f", i + 1, len(plan), self.last_loss.item())
        return self.loss_sum.clone(), self.correct.clone()
