"""Learning-rate schedules as one precomputed value per training step.

torch.optim.lr_scheduler computes the values (no hand-written formulas), stepped once on a
throw-away optimizer. A table serves all three places that need the rate: eager autograd steps (set
on the param groups), the from-scratch model (which has no torch optimizer), and CUDA-graph replays
(copied into a device tensor outside the graph, no host sync inside it).
"""

from __future__ import annotations

import torch


def lr_table(sched_cfg, base_lr: float, steps_per_epoch: int, epochs: int) -> list[float]:
    name = sched_cfg.name.value
    total = steps_per_epoch * epochs
    if name == "none":
        return [base_lr] * total
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)
    sched = torch.optim.lr_scheduler
    if name == "cosine":
        scheduler = sched.CosineAnnealingLR(opt, T_max=total, eta_min=sched_cfg.eta_min)
    elif name == "onecycle":
        scheduler = sched.OneCycleLR(
            opt,
            max_lr=base_lr * sched_cfg.max_lr_factor,
            total_steps=total,
            pct_start=sched_cfg.pct_start,
        )
    else:  # step: every step_epochs epochs, counted in batches
        scheduler = sched.StepLR(
            opt, step_size=sched_cfg.step_epochs * steps_per_epoch, gamma=sched_cfg.gamma
        )
    values = []
    for _ in range(total):
        values.append(opt.param_groups[0]["lr"])
        opt.step()  # no gradients: a no-op, but keeps the scheduler's order check quiet
        scheduler.step()
    return values
