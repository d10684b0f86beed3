"""K MLPs of one shape trained as one: parameters stacked along a leading dimension, bmm steps.

Why: a sweep's small MLPs leave most of the machine idle one job at a time. Stacking K of them
turns K small matrix products into one batched product (`torch.baddbmm`/`bmm`), so K trials train
for little more than the price of one. Each member keeps everything that makes it its own run: its
initialisation (its model is built by the single-run path and its parameters become views into the
stack), its batch order (a (K, n) index tensor, one row per member), its dropout masks, learning
rate and schedule, and its optimizer settings, held as tensors with one entry per member.

Why forward and backward by hand: for these small steps on a CPU, autograd and torch.optim cost
more than the maths itself (docs/PERFORMANCE.md, section 1, has the measured epochs); functorch's vmap over torch.optim does not exist. The layers' backward is short and
reuses `mnist_lab.models.scratch` (activations, softmax + cross-entropy); tests/test_stacked.py checks
every gradient and every optimizer update against autograd + torch.optim in float64. The updates
follow torch.optim's single-tensor SGD, Adam and AdamW step for step.

The step has no host-device synchronisation and branches only on host-known facts, so on CUDA
`mnist_lab.train.cuda_graph.GraphEpoch` captures and replays it like the single-model step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mnist_lab.models import scratch
from mnist_lab.train.learners import AutogradLearner, Learner, ScratchLearner

# torch.nn activation classes the stacked engine reproduces (mnist_lab.models.scratch's layers).
NN_ACTIVATIONS = {
    nn.ReLU: "relu",
    nn.Sigmoid: "sigmoid",
    nn.Tanh: "tanh",
    nn.GELU: "gelu",
    nn.LeakyReLU: "leaky_relu",
}


@dataclass(frozen=True)
class Shape:
    """What members of one stack must share: layer sizes, activation, output and loss."""

    sizes: tuple[int, ...]
    activation: str
    log_probs: bool  # the model ends in LogSoftmax (its loss is NLL: the same maths as CE)
    prob_floor: float  # the scratch model's reported loss clamps probabilities at this floor
    optimizer: str  # sgd | adam (AdamW is Adam with decoupled weight decay)


@dataclass
class Member:
    """One model of a stack: its parameters [W1, b1, W2, b2, ...] and per-member settings."""

    shape: Shape
    params: list[torch.Tensor]
    dropout: float
    hyper: dict  # optimizer settings: momentum, dampening, nesterov, weight_decay, betas, eps, ...
    rebind: object  # callable(list of tensors): make the model's parameters these tensors


def _sequential_member(model: nn.Module) -> tuple | None:
    """(sizes, activation, dropout, log_probs, params, rebind) of Linear/act[/Dropout] blocks."""
    if not isinstance(model, nn.Sequential):
        return None
    layers, linears, acts, dropouts, log_probs = list(model), [], set(), set(), False
    for i, layer in enumerate(layers):
        if type(layer) is nn.Linear and layer.bias is not None:
            linears.append(layer)
        elif type(layer) in NN_ACTIVATIONS:
            if isinstance(layer, nn.LeakyReLU) and layer.negative_slope != scratch.LEAKY_SLOPE:
                return None
            if isinstance(layer, nn.GELU) and layer.approximate != "none":
                return None
            acts.add(NN_ACTIVATIONS[type(layer)])
        elif type(layer) is nn.Dropout and i > 0 and type(layers[i - 1]) in NN_ACTIVATIONS:
            dropouts.add(layer.p)  # after a hidden activation (input dropout is not stacked)
        elif type(layer) is nn.LogSoftmax and i == len(layers) - 1 and layer.dim in (1, -1):
            log_probs = True
        else:  # batch norm, layer norm, anything else: not this engine's maths
            return None
    if len(acts) != 1 or len(dropouts) > 1 or len(linears) < 2:
        return None
    sizes = (linears[0].in_features, *(lin.out_features for lin in linears))
    params = [p for lin in linears for p in (lin.weight, lin.bias)]

    def rebind(tensors):
        for p, t in zip(params, tensors, strict=True):
            p.data = t

    return sizes, acts.pop(), dropouts.pop() if dropouts else 0.0, log_probs, params, rebind


def member_of(learner: Learner) -> Member | None:
    """The learner's model and optimizer as a stack member; None if the engine cannot train it."""
    model = learner.model
    if learner.max_norm is not None:
        return None
    if isinstance(learner, ScratchLearner) and isinstance(model, scratch.ScratchMLP):
        if model.criterion.label_smoothing:
            return None
        linears = model.linears

        def rebind(tensors):
            for i, lin in enumerate(linears):
                lin.weight, lin.bias = tensors[2 * i], tensors[2 * i + 1]

        shape = Shape(tuple(model.sizes), model.activation, False, model.prob_floor, "sgd")
        hyper = dict(momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0)
        return Member(shape, model.parameters(), 0.0, hyper, rebind)
    if not isinstance(learner, AutogradLearner) or learner.compile_batch:
        return None
    if learner.loss_fn is not learner.eval_fn:  # label smoothing
        return None
    described = _sequential_member(model)
    optimizer = learner.optimizer
    if described is None or len(optimizer.param_groups) != 1:
        return None
    group = optimizer.param_groups[0]
    if group.get("maximize") or group.get("amsgrad") or group.get("differentiable"):
        return None
    sizes, activation, dropout, log_probs, params, rebind = described
    if type(optimizer) is torch.optim.SGD:
        kind = "sgd"
        hyper = {k: group[k] for k in ("momentum", "dampening", "nesterov", "weight_decay")}
    elif type(optimizer) in (torch.optim.Adam, torch.optim.AdamW):
        kind = "adam"
        hyper = {k: group[k] for k in ("betas", "eps", "weight_decay")}
        hyper["decoupled"] = bool(group.get("decoupled_weight_decay", False))
    else:
        return None
    return Member(Shape(sizes, activation, log_probs, 0.0, kind), params, dropout, hyper, rebind)


class CrossEntropy:
    """Mean softmax cross-entropy per member, forward with torch's fused log-softmax, backward by
    hand: dL/dz = (softmax(z) - onehot) / B. Five kernels where `scratch.SoftmaxCrossEntropy`
    (the lab's loss, kept for the scratch model's probability floor) takes fifteen, which roughly
    halves the loss's share of a small step on a CPU (docs/PERFORMANCE.md). The same maths as
    F.cross_entropy."""

    def forward(self, logits, targets):
        log_probs = torch.log_softmax(logits, -1)
        self.probs = log_probs.exp()
        self.index = targets.unsqueeze(-1)
        return log_probs.gather(-1, self.index).mean((-2, -1)).neg()

    def backward(self):
        minus_one = torch.full(
            self.index.shape, -1.0, dtype=self.probs.dtype, device=self.probs.device
        )
        return self.probs.scatter_add_(-1, self.index, minus_one).div_(self.probs.shape[-2])


def _column(values, like: torch.Tensor, dtype=None) -> torch.Tensor:
    """Per-member values as a (K, 1, 1) tensor that broadcasts over a stacked weight."""
    return torch.tensor(values, dtype=dtype or like.dtype, device=like.device).view(-1, 1, 1)


class StackedLearner(Learner):
    """K members trained as one (the step of `mnist_lab.train.loop` for a stack).

    `step(x, y)` takes x (K, B, in) and y (K, B) -- or (B, in) and (B,) when K is 1 -- and returns
    the K mean losses and the (K, B) predictions. `lrs` is a (steps, K) tensor on the device;
    `set_lr` takes one row of it. The members' own models hold views into the stack as their
    parameters, so each is evaluated, saved or drawn as after a single run, through its own learner.
    """

    backward = "manual"

    def __init__(self, learners: list[Learner], members: list[Member], rngs: list | None = None):
        shapes = {m.shape for m in members}
        if len(shapes) != 1:
            raise ValueError(f"members of a stack need one shape, got {shapes}")
        self.shape = shapes.pop()
        self.members = members
        ref = members[0].params[0]
        self.device, self.dtype = ref.device, ref.dtype
        lrs = torch.tensor([list(lrn.lrs) for lrn in learners], dtype=self.dtype).T.contiguous()
        super().__init__(learners[0].model, lrs.to(self.device), None)  # max_norm: not stacked
        self.scheduled = any(lrn.scheduled for lrn in learners)
        self.lr = self.lrs[0].clone()
        self.params = [
            torch.stack([m.params[i].detach() for m in members])
            for i in range(len(members[0].params))
        ]
        for k, m in enumerate(members):
            m.rebind([p[k] for p in self.params])
        self.acts = [scratch.ACTIVATIONS[self.shape.activation]() for _ in self.params[2::2]]
        floor = self.shape.prob_floor
        self.criterion = scratch.SoftmaxCrossEntropy(floor) if floor > 0 else CrossEntropy()
        self.dropout = [m.dropout for m in members]
        # Dropout masks on the CPU come from each member's generator, continuing its seed's stream
        # exactly as nn.Dropout draws from the global one in a single run: the same masks.
        self.rngs = rngs
        self.step_count = torch.zeros((), dtype=torch.float64, device=self.device)
        self.state: dict[str, list[torch.Tensor]] = {}
        self._hyper()

    # -- per-member settings as tensors ------------------------------------------------------

    def _hyper(self) -> None:
        hyper, w = [m.hyper for m in self.members], self.params[0]
        self.keep = _column([1 - p for p in self.dropout], w)
        if self.shape.optimizer == "sgd":
            momentum = [h["momentum"] for h in hyper]
            self.momentum = _column(momentum, w)
            # torch ignores dampening without momentum
            self.one_minus_damp = _column(
                [1 - h["dampening"] if mo else 1.0 for h, mo in zip(hyper, momentum, strict=True)],
                w,
            )
            self.nesterov = _column([h["nesterov"] for h in hyper], w, torch.bool)
            self.all_nesterov = all(h["nesterov"] for h in hyper)
            self.any_nesterov = any(h["nesterov"] for h in hyper)
            self.weight_decay = _column([h["weight_decay"] for h in hyper], w)
            self.has_momentum = any(momentum)
            self.plain = not self.has_momentum and not any(h["weight_decay"] for h in hyper)
        else:
            betas = [h["betas"] for h in hyper]
            # Bias corrections in float64, as torch computes them in Python floats.
            f64 = torch.float64
            self.beta1 = torch.tensor([b[0] for b in betas], dtype=f64, device=w.device)
            self.beta2 = torch.tensor([b[1] for b in betas], dtype=f64, device=w.device)
            self.one_minus_beta1 = _column([1 - b[0] for b in betas], w)
            self.keep_beta2 = _column([b[1] for b in betas], w)
            self.one_minus_beta2 = _column([1 - b[1] for b in betas], w)
            self.eps = _column([h["eps"] for h in hyper], w)
            decay = [h["weight_decay"] for h in hyper]
            decoupled = [h["decoupled"] for h in hyper]
            self.coupled_decay = _column(
                [0.0 if d else wd for wd, d in zip(decay, decoupled, strict=True)], w
            )
            self.decoupled_decay = _column(
                [wd if d else 0.0 for wd, d in zip(decay, decoupled, strict=True)], w
            )
            self.plain = False

    def set_lr(self, lr) -> None:
        self.lr.copy_(lr)

    def keep_only(self, alive: list[int]) -> None:
        """Drop every member not in `alive` (indices into the current stack) from the stack.

        The dropped members' models keep views of the old storage: their numbers stay frozen.
        """
        index = torch.tensor(alive, device=self.device)
        pick = lambda t: t.index_select(0, index)  # noqa: E731
        self.params = [pick(p).contiguous() for p in self.params]
        self.state = {k: [pick(t) for t in ts] for k, ts in self.state.items()}
        self.members = [self.members[i] for i in alive]
        self.dropout = [self.dropout[i] for i in alive]
        self.rngs = [self.rngs[i] for i in alive] if self.rngs is not None else None
        self.lrs = self.lrs[:, index].contiguous()
        self.lr = pick(self.lr)
        for k, m in enumerate(self.members):
            m.rebind([p[k] for p in self.params])
        self._hyper()

    # -- forward and backward ------------------------------------------------------------------

    def _noise(self, h: torch.Tensor) -> torch.Tensor:
        """Inverted-dropout multipliers, one mask per member (ones where a member has none)."""
        if self.rngs is not None:  # nn.Dropout's CPU recipe: bernoulli_(1 - p), then / (1 - p)
            masks = []
            for hk, p, rng in zip(h, self.dropout, self.rngs, strict=True):
                if p > 0:
                    masks.append(torch.empty_like(hk).bernoulli_(1 - p, generator=rng).div_(1 - p))
                else:
                    masks.append(torch.ones_like(hk))
            return torch.stack(masks)
        # Elsewhere (CUDA: graph-capturable default generator) the same distribution.
        return (torch.rand_like(h) < self.keep).to(h.dtype) / self.keep

    def forward(self, x: torch.Tensor, train: bool) -> tuple[torch.Tensor, list, list]:
        """Logits (K, B, C), each layer's input, and the dropout masks (training only)."""
        inputs, masks, h = [x], [], x
        n_hidden = len(self.acts)
        for i in range(n_hidden + 1):
            w, b = self.params[2 * i], self.params[2 * i + 1]
            z = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            if i == n_hidden:
                return z, inputs, masks
            h = self.acts[i].forward(z)
            if train and any(self.dropout):
                masks.append(self._noise(h))
                h = h * masks[-1]
            inputs.append(h)
        raise AssertionError("unreachable")

    @torch.no_grad()
    def step(self, x, y):
        single = x.dim() == 2
        if single:
            x, y = x.unsqueeze(0), y.unsqueeze(0)
        logits, inputs, masks = self.forward(x, train=True)
        loss = self.criterion.forward(logits, y)
        g = self.criterion.backward()
        grads: list[torch.Tensor | None] = [None] * len(self.params)
        if self.plain:
            # SGD without momentum or decay: each update is -lr x gradient, fused into the
            # weight-gradient product. Backward is linear in g, so scaling g by -lr once here
            # scales every layer's gradient by it.
            g = g * -self.lr.view(-1, 1, 1)
        for i in reversed(range(len(inputs))):
            w, b = self.params[2 * i], self.params[2 * i + 1]
            g_in = torch.bmm(g, w) if i > 0 else None  # the data needs no gradient
            if self.plain:
                w.baddbmm_(g.transpose(1, 2), inputs[i])
                b.add_(g.sum(1))
            else:
                grads[2 * i] = torch.bmm(g.transpose(1, 2), inputs[i])
                grads[2 * i + 1] = g.sum(1)
            if i > 0:
                if masks:
                    g_in = g_in * masks[i - 1]
                g = self.acts[i - 1].backward(g_in)
        if not self.plain:
            self._update(grads)
        pred = logits.argmax(-1)
        return (loss[0], pred[0]) if single else (loss, pred)

    # -- optimizer updates: torch.optim's single-tensor recipes with per-member settings ----------

    def _update(self, grads: list[torch.Tensor]) -> None:
        self.step_count += 1
        first = not self.state
        for i, (p, g) in enumerate(zip(self.params, grads, strict=True)):
            col = (lambda t: t) if p.dim() == 3 else (lambda t: t.view(-1, 1))  # noqa: E731
            lr = self.lr.view(-1, *([1] * (p.dim() - 1)))
            if self.shape.optimizer == "sgd":
                self._sgd(i, p, g, lr, col, first)
            else:
                self._adam(i, p, g, lr, col, first)

    def _sgd(self, i, p, g, lr, col, first) -> None:
        d = g.addcmul(p, col(self.weight_decay))  # torch: grad + weight_decay * param
        if self.has_momentum:
            if first:
                self.state.setdefault("momentum", []).append(d.clone())
            buf = self.state["momentum"][i]
            if not first:
                buf.mul_(col(self.momentum)).addcmul_(d, col(self.one_minus_damp))
            if self.all_nesterov:
                d = d.addcmul(buf, col(self.momentum))
            elif not self.any_nesterov:
                d = buf
            else:  # mixed: torch.where is far slower than addcmul on a CPU; only when members differ
                d = torch.where(col(self.nesterov), d.addcmul(buf, col(self.momentum)), buf)
        p.addcmul_(d, lr, value=-1)

    def _adam(self, i, p, g, lr, col, first) -> None:
        if first:
            self.state.setdefault("exp_avg", []).append(torch.zeros_like(p))
            self.state.setdefault("exp_avg_sq", []).append(torch.zeros_like(p))
        m, v = self.state["exp_avg"][i], self.state["exp_avg_sq"][i]
        p.mul_(1 - lr * col(self.decoupled_decay))  # AdamW: param *= 1 - lr * weight_decay
        g = g.addcmul(p, col(self.coupled_decay))  # Adam: grad + weight_decay * param
        m.lerp_(g, col(self.one_minus_beta1))
        v.mul_(col(self.keep_beta2)).addcmul_(g, g * col(self.one_minus_beta2))
        bias1 = 1 - self.beta1**self.step_count  # float64, as torch's Python-float arithmetic
        bias2_sqrt = (1 - self.beta2**self.step_count).sqrt()
        step_size = col((lr.flatten().double() / bias1).view(-1, 1, 1)).to(p.dtype)
        denom = (v.sqrt() / col(bias2_sqrt.view(-1, 1, 1)).to(p.dtype)).add_(col(self.eps))
        p.addcdiv_(m * step_size, denom, value=-1)


def stack(learners: list[Learner], rngs: list | None = None) -> StackedLearner | None:
    """The learners' models stacked into one `StackedLearner`, or None if any cannot join."""
    members = [member_of(lrn) for lrn in learners]
    if any(m is None for m in members) or len({m.shape for m in members}) != 1:
        return None
    return StackedLearner(learners, members, rngs)
