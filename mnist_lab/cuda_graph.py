"""The training step captured once as a CUDA graph and replayed for every full batch.

Why: a 784-128-10 step is a couple of dozen microsecond-scale kernels, so eager PyTorch spends its
time in Python and kernel launches (about 1.5 s per MNIST epoch on an H100 against about 0.1 s
replayed; see docs/PERFORMANCE.md). Replaying a graph launches the whole step -- batch gather,
forward, loss, backward, optimizer step, metric sums -- with one call and no host-device sync.

What it needs, and what it does about it:
- static shapes: every full batch replays the graph; the last partial batch (when drop_last is
  off) runs as an ordinary eager step on the same parameters, so no sample is dropped or padded;
- device-side state: optimizers that keep their step count on the host get `capturable=True`;
  a learning-rate schedule writes each step's rate into a 0-dim device tensor the graph reads;
- warm-up: the first steps run eagerly on a side stream (real training steps, not discarded), so
  lazily created optimizer state exists before capture;
- few kernels: past launch overhead the time is GPU-side kernel count, so the graph sums the batch
  mean losses and per-position hit counts (one kernel each) and scales/reduces them once per epoch.
Anything that still fails to capture falls back to eager steps with a log line saying why.
"""

from __future__ import annotations

import logging

import torch

from mnist_lab.trainer import Learner, eager_epoch

log = logging.getLogger(__name__)

WARMUP_STEPS = 3


def prepare_optimizer(optimizer) -> None:
    """Make an optimizer capturable before its first step.

    Optimizers that keep their step count on the host get `capturable=True`. SGD runs its
    single-tensor update: for an MLP's few parameter tensors that is fewer GPU-side microseconds
    than the multi-tensor (foreach) kernel (measured in docs/PERFORMANCE.md).
    """
    for group in optimizer.param_groups:
        if "capturable" in optimizer.defaults:
            group["capturable"] = True
        if isinstance(optimizer, torch.optim.SGD) and not group.get("fused"):
            group["foreach"] = False


class GraphEpoch:
    """Runs epochs by replaying one captured step; `failed` holds why it fell back, if it did."""

    def __init__(self, learner: Learner, x_all, y_all, batch_size: int, log_interval: int = 0):
        self.learner = learner
        self.x_all, self.y_all = x_all, y_all
        self.batch_size = batch_size
        self.log_interval = log_interval
        device = x_all.device
        self.idx = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.mean_losses = torch.zeros((), device=device)  # sum over replays of batch means
        self.hits = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.lr = None
        if len(set(learner.lrs)) > 1:
            self.lr = torch.tensor(learner.lrs[0], device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.failed: str | None = None
        self.last_loss = None

    def _body(self):
        y = self.y_all.index_select(0, self.idx)
        loss, pred = self.learner.step(self.x_all.index_select(0, self.idx), y)
        self.mean_losses.add_(loss)
        self.hits.add_(pred == y)
        return loss

    def _eager(self, order, plan, first_step, log_interval=0):
        return eager_epoch(
            self.learner, self.x_all, self.y_all, order, plan, first_step, log_interval
        )

    def _warm_up_and_capture(self, order, plan, first_step):
        """Runs the warm-up steps eagerly, then captures the step; returns (steps run, sums)."""
        n = min(WARMUP_STEPS, len(plan))
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            sums = self._eager(order, plan[:n], first_step)
        torch.cuda.current_stream().wait_stream(side)
        if n == len(plan) or plan[n][1] - plan[n][0] != self.batch_size:
            return n, sums
        if self.lr is not None:
            self.learner.set_lr(self.lr)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.last_loss = self._body()
        except Exception as e:  # an op, optimizer or setting that cannot be captured
            self.failed = f"{type(e).__name__}: {str(e).splitlines()[0]}"
            log.warning("CUDA graph capture failed, training eagerly: %s", self.failed)
            torch.cuda.synchronize()
            return n, sums
        self.graph = graph
        log.info("training step captured as a CUDA graph (batch %d)", self.batch_size)
        return n, sums

    def run_epoch(self, order, plan, first_step):
        """Returns (summed loss, number correct) over the epoch, as device tensors."""
        self.mean_losses.zero_()
        self.hits.zero_()
        start, (loss_sum, correct) = 0, (0.0, 0)
        if self.graph is None and self.failed is None:
            start, (loss_sum, correct) = self._warm_up_and_capture(order, plan, first_step)
        if self.graph is None:  # capture failed or was never possible: the rest is eager
            loss, right = self._eager(order, plan[start:], first_step + start, self.log_interval)
            return loss_sum + loss, correct + right
        for i in range(start, len(plan)):
            begin, end = plan[i]
            if end - begin != self.batch_size:  # the last partial batch: one eager step
                loss, right = self._eager(order, plan[i : i + 1], first_step + i)
                loss_sum, correct = loss_sum + loss, correct + right
                if self.lr is not None:
                    self.learner.set_lr(self.lr)
                continue
            self.idx.copy_(order[begin:end])
            if self.lr is not None:
                self.lr.fill_(self.learner.lrs[first_step + i])
            self.graph.replay()
            if self.log_interval and (i + 1) % self.log_interval == 0:
                log.info("batch %d/%d loss %.4f", i + 1, len(plan), self.last_loss.item())
        return self.mean_losses * self.batch_size + loss_sum, self.hits.sum() + correct
