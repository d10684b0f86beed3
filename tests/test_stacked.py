"""The stacked engine (mnist_lab/train/stacked.py) against autograd + torch.optim, one model at a time.

In float64 every member of a stack must follow its own single model step for step (1e-10):
SGD with and without momentum, Nesterov, dampening and weight decay, Adam, AdamW, each activation,
a per-step schedule, and dropout (on the CPU each member draws its masks from its own generator,
continuing its seed's stream exactly as nn.Dropout does from the global one: the same masks).
Dropping a member from the stack leaves the others' numbers unchanged.
"""

from __future__ import annotations

import pytest
import torch

from mnist_lab.models.mlp import MLP
from mnist_lab.models.scratch import ScratchMLP
from mnist_lab.train import stacked
from mnist_lab.train.learners import AutogradLearner, ScratchLearner

SGD, ADAM, ADAMW = torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW
SETTINGS = {
    "sgd": (SGD, [dict(lr=0.1), dict(lr=0.05)]),
    "sgd_momentum": (
        SGD,
        [
            dict(lr=0.1, momentum=0.9),
            dict(lr=0.05, momentum=0.5, nesterov=True),
            dict(lr=0.02, weight_decay=0.01),
            dict(lr=0.03, momentum=0.8, dampening=0.3, weight_decay=0.1),
        ],
    ),
    "adam": (ADAM, [dict(lr=0.01), dict(lr=0.001, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01)]),
    "adamw": (
        ADAMW,
        [dict(lr=0.01), dict(lr=0.001, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)],
    ),
}
STEPS = 4


def learner(seed, opt, kw, activation="relu", dropout=0.0, head="logits", lrs=None):
    torch.manual_seed(seed)
    model = MLP(784, 10, [16, 12], activation, dropout, 0.0, False, "default", 0.01, head).double()
    return AutogradLearner(
        model, opt(model.parameters(), **kw), lrs or [kw["lr"]] * STEPS, None, 0.0
    )


def batches(k, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(STEPS, k, 8, 784, generator=g, dtype=torch.float64)
    return x, torch.randint(0, 10, (STEPS, k, 8), generator=g)


def max_diff(a, b) -> float:
    return max(
        (p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters(), strict=True)
    )


@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh", "sigmoid", "leaky_relu"])
@pytest.mark.parametrize("name", list(SETTINGS))
def test_each_member_follows_its_own_single_model(name, activation):
    opt, kws = SETTINGS[name]
    singles = [learner(k, opt, kw, activation) for k, kw in enumerate(kws)]
    members = [learner(k, opt, kw, activation) for k, kw in enumerate(kws)]
    assert (
        max(max_diff(a.model, b.model) for a, b in zip(singles, members, strict=True)) == 0
    )  # same init
    stack = stacked.stack(members)
    x, y = batches(len(kws))
    for s in range(STEPS):
        single_losses = torch.stack(
            [lrn.step(x[s, k], y[s, k])[0] for k, lrn in enumerate(singles)]
        )
        losses, _ = stack.step(x[s], y[s])
        assert torch.allclose(losses, single_losses, rtol=0, atol=1e-12)
    for single, member in zip(singles, members, strict=True):
        assert max_diff(single.model, member.model) < 1e-10  # the member's model is a view


def test_schedule_dropout_and_log_softmax_head():
    kws = [dict(lr=0.1, momentum=0.9), dict(lr=0.05)]
    lrs = [[0.1, 0.05, 0.02, 0.01], [0.05, 0.05, 0.01, 0.2]]
    make = lambda k: learner(  # noqa: E731
        k, SGD, kws[k], dropout=[0.3, 0.0][k], head="log_softmax", lrs=lrs[k]
    )
    singles, members = [make(0), make(1)], []
    rngs = []
    for k in range(2):
        members.append(make(k))  # built after manual_seed(k): the rng state a single run has
        rngs.append(torch.Generator().set_state(torch.get_rng_state()))
    stack = stacked.stack(members, rngs)
    assert stack.scheduled
    x, y = batches(2, seed=1)
    for k, single in enumerate(singles):
        torch.manual_seed(k)
        make(k)  # the same draws as building it: the global stream is where a single run has it
        for s in range(STEPS):
            single.set_lr(lrs[k][s])
            single.step(x[s, k], y[s, k])
    for s in range(STEPS):
        stack.set_lr(stack.lrs[s])
        stack.step(x[s], y[s])
    for single, member in zip(singles, members, strict=True):
        assert max_diff(single.model, member.model) < 1e-10


def test_scratch_model_joins_with_its_floor():
    def make(seed, lr):
        torch.manual_seed(seed)
        model = ScratchMLP(784, [16], 10, "relu", "normal", 1.0, 1e-6, dtype=torch.float64)
        return ScratchLearner(model, [lr] * STEPS, None, 0.0)

    singles, members = [make(0, 0.01), make(1, 0.02)], [make(0, 0.01), make(1, 0.02)]
    stack = stacked.stack(members)
    x, y = batches(2, seed=2)
    for s in range(STEPS):
        single = torch.stack([lrn.step(x[s, k], y[s, k])[0] for k, lrn in enumerate(singles)])
        losses, _ = stack.step(x[s], y[s])
        assert torch.allclose(losses, single, rtol=0, atol=1e-12)  # the floored loss reported
    for a, b in zip(singles, members, strict=True):
        assert (
            max(
                (p - q).abs().max()
                for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True)
            )
            < 1e-10
        )


def test_a_dropped_member_freezes_and_the_others_are_unchanged():
    opt, kws = SETTINGS["adam"]
    kws = [*kws, dict(lr=1e6)]  # a third member that diverges at once
    singles = [learner(k, opt, kw) for k, kw in enumerate(kws)]
    members = [learner(k, opt, kw) for k, kw in enumerate(kws)]
    stack = stacked.stack(members)
    x, y = batches(3, seed=3)
    stack.step(x[0], y[0])
    frozen = [p.clone() for p in members[2].model.parameters()]
    stack.keep_only([0, 1])
    for s in range(1, STEPS):
        stack.step(x[s, :2], y[s, :2])
    for k in range(2):
        for s in range(STEPS):
            singles[k].step(x[s, k], y[s, k])
        assert max_diff(singles[k].model, members[k].model) < 1e-10
    assert all(
        torch.equal(a, b) for a, b in zip(frozen, members[2].model.parameters(), strict=True)
    )


def test_what_cannot_join_is_refused():
    torch.manual_seed(0)
    bn = MLP(784, 10, [16], "relu", 0.0, 0.0, True, "default", 0.01, "logits")
    plain = MLP(784, 10, [16], "relu", 0.0, 0.0, False, "default", 0.01, "logits")
    assert (
        stacked.member_of(AutogradLearner(bn, SGD(bn.parameters(), lr=0.1), [0.1], None, 0.0))
        is None
    )
    for opt in (torch.optim.RMSprop(plain.parameters()), ADAM(plain.parameters(), amsgrad=True)):
        assert stacked.member_of(AutogradLearner(plain, opt, [0.1], None, 0.0)) is None
    assert stacked.member_of(
        AutogradLearner(plain, SGD(plain.parameters(), lr=0.1), [0.1], None, 0.0)
    )
