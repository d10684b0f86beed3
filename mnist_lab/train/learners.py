"""Learners: what the epoch loop needs from a model -- a step, a settable rate and an evaluation
loss -- for torch.nn models (autograd + torch.optim) and models with their own backward."""

from __future__ import annotations

import functools
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from mnist_lab.models.build import linear_weights


class Learner:
    """What the loop needs from a model: a step, a settable rate, and an evaluation loss.

    `step(x, y)` returns (mean loss, predicted classes) as device tensors. The rate may be a float
    or a 0-dim device tensor (the CUDA-graph path updates that tensor between replays).

    `max_norm` (or None) bounds the L2 norm of every row of every linear weight matrix after each
    update (Srivastava et al. 2014), in place and on the device, so a captured step includes it.
    """

    backward: str  # who computes the gradients (the record's `backward`)

    def __init__(self, model, lrs: list[float], max_norm: float | None):
        self.model = model
        self.lrs = lrs
        self.lr = lrs[0]
        self.scheduled = len(set(lrs)) > 1  # the rate changes between steps
        self.max_norm = max_norm
        self.constrained = linear_weights(model) if max_norm is not None else []

    @torch.no_grad()
    def constrain(self) -> None:
        for weight in self.constrained:
            weight.renorm_(2, 0, self.max_norm)

    def set_lr(self, lr) -> None:
        self.lr = lr

    def lr_at(self, step: int) -> float:
        """The rate of a step as the record shows it: the configured host float."""
        return float(self.lrs[step])

    def step(self, x, y):
        raise NotImplementedError

    def eval_loss(self, out, y):
        return F.cross_entropy(out, y, reduction="sum")


class AutogradLearner(Learner):
    """torch.nn model + torch.optim optimizer: forward, loss, backward, step.

    With `compile_batch`, forward and loss for batches of that size go through `torch.compile`
    (fused kernels: a faster captured step on a GPU, for seconds of compilation per process and
    shape -- worth it only for long runs; docs/PERFORMANCE.md has the figures). Other batch sizes
    (the last partial batch) stay uncompiled rather than trigger a second compilation.
    """

    backward = "autograd"

    def __init__(
        self,
        model,
        optimizer,
        lrs: list[float],
        max_norm: float | None,
        label_smoothing: float,
        compile_batch=None,
    ):
        super().__init__(model, lrs, max_norm)
        self.optimizer = optimizer
        # A model whose outputs are log-probabilities says so (mnist_lab.models.mlp.MLP.log_probs).
        self.eval_fn = F.nll_loss if getattr(model, "log_probs", False) else F.cross_entropy
        # Smoothing needs cross_entropy; on log-probabilities it equals NLL (log_softmax is
        # idempotent), so it serves both heads. Evaluation stays plain, comparable across runs.
        self.loss_fn = (
            functools.partial(F.cross_entropy, label_smoothing=label_smoothing)
            if label_smoothing > 0
            else self.eval_fn
        )
        self.compile_batch = compile_batch
        self._compiled = torch.compile(self._forward_loss, dynamic=False) if compile_batch else None

    def set_lr(self, lr) -> None:
        self.lr = lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _forward_loss(self, x, y):
        out = self.model(x)
        return self.loss_fn(out, y), out

    def step(self, x, y):
        compiled = self._compiled is not None and len(y) == self.compile_batch
        loss, out = (self._compiled if compiled else self._forward_loss)(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.constrain()
        return loss.detach(), out.argmax(1)

    def eval_loss(self, out, y):
        return self.eval_fn(out, y, reduction="sum")


@runtime_checkable
class OwnBackward(Protocol):
    """A model that computes its own gradients and updates itself (no autograd, no torch.optim),
    such as `mnist_lab.models.scratch.ScratchMLP`: trained by `ScratchLearner`."""

    def forward(self, x): ...

    def loss(self, logits, targets): ...

    def loss_and_backward(self, logits, targets): ...

    def sgd_step(self, lr) -> None: ...


class ScratchLearner(Learner):
    """A model with its own backward (`OwnBackward`): forward, backward, in-place SGD update."""

    backward = "own"

    def __init__(self, model, lrs: list[float], max_norm: float | None, label_smoothing: float):
        super().__init__(model, lrs, max_norm)
        model.criterion.label_smoothing = label_smoothing

    def eval_loss(self, out, y):
        return self.model.loss(out, y) * len(y)  # the lab's loss, its probability floor included

    def step(self, x, y):
        logits = self.model.forward(x)
        loss = self.model.loss_and_backward(logits, y)
        self.model.sgd_step(self.lr)
        self.constrain()
        return loss, logits.argmax(1)
