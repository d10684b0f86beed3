"""The training step captured as CUDA graphs and replayed for every full batch.

Why: a 784-128-10 step is a couple of dozen microsecond-scale kernels, so eager PyTorch spends its
time in Python and kernel launches; replayed, an epoch takes a small fraction of its eager time
(docs/PERFORMANCE.md has the figures). Replaying a graph launches the whole step -- batch gather,
forward, loss, backward, optimizer step, metric sums -- with one call and no host-device sync.

What it needs, and what it does about it:
- static shapes: every full batch replays the graph; the last partial batch (when drop_last is
  off) runs as an ordinary eager step on the same parameters, so no sample is dropped or padded;
- device-side state: optimizers that keep their step count on the host get `capturable=True`;
  a learning-rate schedule copies each step's rate into a device buffer the graph reads;
- warm-up: the first steps run eagerly on a side stream (real training steps, not discarded), so
  lazily created optimizer state exists before capture;
- few kernels: past launch overhead the time is GPU-side kernel count, so the graph sums the batch
  mean losses and per-position hit counts (one kernel each) and scales/reduces them once per epoch.
Anything that still fails to capture falls back to eager steps with a log line saying why.
"""

from __future__ import annotations

import logging

import torch

from mnist_lab.train.epoch import eager_epoch
from mnist_lab.train.learners import Learner

log = logging.getLogger(__name__)

WARMUP_STEPS = 3
# Steps per replay. One replay of 16 captured steps costs one launch and one index copy instead of
# sixteen of each; more steps per replay gained nothing measurable and hold more capture memory
# (docs/PERFORMANCE.md).
STEPS_PER_GRAPH = 16


def prepare_optimizer(optimizer, scheduled: bool) -> None:
    """Make an optimizer capturable before its first step.

    Optimizers that keep their step count on the host get `capturable=True`. SGD runs its
    single-tensor update: for an MLP's few parameter tensors that is fewer GPU-side microseconds
    than the multi-tensor (foreach) kernel (docs/PERFORMANCE.md) -- except under a schedule, where
    its fused kernel is the one that reads the rate from a device tensor (the single-tensor update
    would read it back to the host, which cannot be captured).
    """
    for group in optimizer.param_groups:
        if "capturable" in optimizer.defaults:
            group["capturable"] = True
        if isinstance(optimizer, torch.optim.SGD):
            group["foreach"] = False
            group["fused"] = group.get("fused") or scheduled


class GraphEpoch:
    """Runs epochs by replaying captured steps; `failed` holds why it fell back, if it did.

    Two graphs share one memory pool: STEPS_PER_GRAPH consecutive full batches per replay, and a
    single step for the full batches left over. Batch indices (and per-step learning rates) are
    copied into static device buffers before each replay.
    """

    def __init__(
        self,
        learner: Learner,
        x_all,
        y_all,
        batch_size: int,
        log_interval: int,
        steps_per_graph: int = STEPS_PER_GRAPH,
        members: tuple[int, ...] = (),
    ):
        self.learner = learner
        self.x_all, self.y_all = x_all, y_all
        self.batch_size = batch_size
        self.log_interval = log_interval
        self.steps_per_graph = steps_per_graph
        device = x_all.device
        # `members`: () for one model, (K,) for K stacked ones (mnist_lab.train.stacked), each with its
        # own sample order, loss and hits.
        self.idx = torch.zeros(
            self.steps_per_graph, *members, batch_size, dtype=torch.long, device=device
        )
        self.mean_losses = torch.zeros(members, device=device)  # sum over steps of batch means
        self.hits = torch.zeros(*members, batch_size, dtype=torch.long, device=device)
        self.lr_table = self.lr = None
        if learner.scheduled:
            # (steps,) for one model; a stack's (steps, K) table, K = 1 included, as (steps, *members)
            self.lr_table = torch.as_tensor(learner.lrs, device=device).reshape(-1, *members)
            self.lr = torch.zeros(self.steps_per_graph, *members, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.failed: str | None = None
        self.last_loss = None

    @property
    def graph(self):
        """The many-step graph once captured (None before, or if capture failed)."""
        return self.graphs.get(self.steps_per_graph)

    def _body(self, steps: int):
        for j in range(steps):
            if self.lr is not None:
                self.learner.set_lr(self.lr[j])
            idx = self.idx[j]
            y = self.y_all.index_select(0, idx.flatten()).view(idx.shape)
            x = self.x_all.index_select(0, idx.flatten()).view(*idx.shape, -1)
            loss, pred = self.learner.step(x, y)
            self.mean_losses.add_(loss)
            self.hits.add_(pred == y)
        return loss

    def _eager(self, order, plan, first_step, log_interval=0):
        return eager_epoch(
            self.learner, self.x_all, self.y_all, order, plan, first_step, log_interval
        )

    def _warm_up_and_capture(self, order, plan, first_step):
        """Runs the warm-up steps eagerly, then captures; returns (steps run, their sums)."""
        n = min(WARMUP_STEPS, len(plan))
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            sums = self._eager(order, plan[:n], first_step)
        torch.cuda.current_stream().wait_stream(side)
        if n == len(plan) or plan[n][1] - plan[n][0] != self.batch_size:
            return n, sums
        try:
            one = torch.cuda.CUDAGraph()
            with torch.cuda.graph(one):
                self._body(1)
            many = torch.cuda.CUDAGraph()
            with torch.cuda.graph(many, pool=one.pool()):
                self.last_loss = self._body(self.steps_per_graph)
        except Exception as e:  # an op, optimizer or setting that cannot be captured
            self.failed = f"{type(e).__name__}: {str(e).splitlines()[0]}"
            log.warning("CUDA graph capture failed, training eagerly: %s", self.failed)
            torch.cuda.synchronize()
            return n, sums
        self.graphs = {1: one, self.steps_per_graph: many}
        log.info("training step captured as CUDA graphs (batch %d)", self.batch_size)
        return n, sums

    def _replay(self, steps: int, order, begin: int, step_index: int) -> None:
        b = self.batch_size
        batches = order[..., begin : begin + steps * b].unflatten(-1, (steps, b))
        self.idx[:steps].copy_(batches.movedim(-2, 0))
        if self.lr is not None:
            self.lr[:steps].copy_(self.lr_table[step_index : step_index + steps])
        self.graphs[steps].replay()

    def run_epoch(self, order, plan, first_step):
        """Returns (summed loss, number correct) over the epoch, as device tensors."""
        self.mean_losses.zero_()
        self.hits.zero_()
        i, (loss_sum, correct) = 0, (0.0, 0)
        if not self.graphs and self.failed is None:
            i, (loss_sum, correct) = self._warm_up_and_capture(order, plan, first_step)
        if not self.graphs:  # capture failed or was never possible: the rest is eager
            loss, right = self._eager(order, plan[i:], first_step + i, self.log_interval)
            return loss_sum + loss, correct + right
        full = sum(1 for begin, end in plan if end - begin == self.batch_size)
        logged = i
        while i < full:
            steps = self.steps_per_graph if full - i >= self.steps_per_graph else 1
            self._replay(steps, order, plan[i][0], first_step + i)
            i += steps
            if self.log_interval and i // self.log_interval > logged // self.log_interval:
                log.info("batch %d/%d loss %.4f", i, len(plan), self.last_loss.item())
                logged = i
        if i < len(plan):  # the last partial batch: one eager step on the same parameters
            loss, right = self._eager(order, plan[i:], first_step + i)
            loss_sum, correct = loss_sum + loss, correct + right
        return self.mean_losses * self.batch_size + loss_sum, self.hits.sum(-1) + correct
