"""One epoch of eager steps: batches cut by index from resident tensors, sums kept on the device.

The loop (`mnist_lab.train.loop`) runs it, and so does `mnist_lab.train.cuda_graph` for the steps
it does not replay (warm-up, the last partial batch, a step that cannot be captured).
"""

from __future__ import annotations

import logging

import torch

from mnist_lab.signals import raise_pending
from mnist_lab.train.learners import Learner

log = logging.getLogger(__name__)


def batch_plan(n: int, batch_size: int, drop_last: bool) -> list[tuple[int, int]]:
    """(start, end) of each batch; the last partial batch is kept unless drop_last."""
    stops = n - n % batch_size if drop_last else n
    return [(s, min(s + batch_size, n)) for s in range(0, stops, batch_size)]


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
        # index_select, not x_all[idx]: cheaper for the small batches of these models on a CPU.
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
