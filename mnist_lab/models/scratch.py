"""The lab report's MLP with hand-written forward and backward: tensor ops only, no autograd.

Source: Charles, "Lab 3: 手写数字识别", a lab report (MyLinear, ReLU, Softmax + cross-entropy,
`w -= lr * grad`). Each layer below keeps its forward and its backward side by side, as in micrograd, and
tests/test_scratch.py checks every backward against autograd in float64.

Nothing here touches autograd, torch.nn or torch.optim: parameters never require grad and every
public method also runs under `torch.no_grad()`. The step is pure tensor ops with no host-device
synchronisation (no `.item()`, no branching on tensor values, no boolean-mask indexing) and updates
the parameter tensors in place, so the trainer can capture it as one CUDA graph.
"""

from __future__ import annotations

import math

import torch

LEAKY_SLOPE = 0.01  # torch.nn.LeakyReLU's default, which the autograd MLP uses
INITS = ("normal", "kaiming", "xavier", "default")


# --- layers: forward caches what backward needs; backward maps dL/d(output) to dL/d(input) -------


class Linear:
    """y = x W^T + b, with W stored (out, in) like the lab's MyLinear and torch.nn.Linear."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        self.weight, self.bias = weight, bias
        self.grad_weight = self.grad_bias = None

    def forward(self, x):
        self.x = x
        return x @ self.weight.T + self.bias

    def backward(self, grad_out, input_grad: bool = True):
        # y[n, j] = sum_i x[n, i] W[j, i] + b[j], summed over the batch n for the parameters.
        self.grad_weight = grad_out.T @ self.x
        self.grad_bias = grad_out.sum(0)
        # The first layer's input is the data: skipping its gradient saves a third of backward.
        return grad_out @ self.weight if input_grad else None


class ReLU:
    def forward(self, z):
        self.z = z
        return z.clamp_min(0)

    def backward(self, grad_out):
        # Slope 1 where z > 0, else 0 (also at z == 0): autograd's own ReLU backward kernel. Not
        # g[z <= 0] = 0 (a data-dependent write no CUDA graph captures), nor torch.where (many
        # times slower on a CPU for small stacks).
        return torch.ops.aten.threshold_backward(grad_out, self.z, 0)


class LeakyReLU:
    def forward(self, z):
        self.z = z
        return torch.ops.aten.leaky_relu(z, LEAKY_SLOPE)  # elementwise kernels, as for ReLU

    def backward(self, grad_out):
        return torch.ops.aten.leaky_relu_backward(grad_out, self.z, LEAKY_SLOPE, False)


class Sigmoid:
    def forward(self, z):
        self.s = torch.sigmoid(z)
        return self.s

    def backward(self, grad_out):
        return grad_out * self.s * (1 - self.s)  # s' = s (1 - s): the output is all backward needs


class Tanh:
    def forward(self, z):
        self.t = torch.tanh(z)
        return self.t

    def backward(self, grad_out):
        return grad_out * (1 - self.t * self.t)  # tanh' = 1 - tanh^2


class GELU:
    """Exact GELU, z * Phi(z) with Phi the normal CDF: torch.nn.GELU's default (not the tanh fit)."""

    def forward(self, z):
        self.z = z
        self.cdf = 0.5 * (1 + torch.erf(z * math.sqrt(0.5)))
        return z * self.cdf

    def backward(self, grad_out):
        # (z Phi(z))' = Phi(z) + z phi(z), phi the normal density.
        pdf = torch.exp(-0.5 * self.z * self.z) / math.sqrt(2 * math.pi)
        return grad_out * (self.cdf + self.z * pdf)


ACTIVATIONS = {
    "relu": ReLU,
    "sigmoid": Sigmoid,
    "tanh": Tanh,
    "gelu": GELU,
    "leaky_relu": LeakyReLU,
}


class SoftmaxCrossEntropy:
    """Mean cross-entropy of softmax(logits) against integer targets, as one layer.

    Fused because the pair's backward is short and stable: with dL/dp_k = -onehot_k / (B p_k) and
    the softmax Jacobian dp_k/dz_i = p_k (delta_ki - p_i), the 1/p cancels and dL/dz = (p - onehot)/B
    (B, the batch size, from the mean). No division by a probability that may underflow to 0.

    Logits may carry leading dimensions (a stack of models, `mnist_lab.train.stacked`): classes are the
    last dimension, the batch the one before it, and the loss has one value per leading index.

    `prob_floor` > 0 is the lab's loss: probabilities clamped at the floor before the log, so one
    confident mistake costs at most -log(floor) (13.8 for the lab's 1e-6). As in the lab, backward
    ignores the clamp: where p_true < floor the true gradient of the clamped loss is 0, but the step
    still uses (p - onehot)/B. So the floor changes the reported loss, never the training.

    `label_smoothing` e > 0 replaces the one-hot target by (1 - e) onehot + e / K, as
    torch.nn.functional.cross_entropy does; the gradient keeps its form, (p - target)/B.
    """

    def __init__(self, prob_floor: float = 0.0, label_smoothing: float = 0.0):
        self.prob_floor = prob_floor
        self.label_smoothing = label_smoothing

    def forward(self, logits, targets):
        # Subtracting the row max leaves softmax unchanged and keeps exp() from overflowing.
        shifted = logits - logits.amax(-1, keepdim=True)
        exp = shifted.exp()
        total = exp.sum(-1, keepdim=True)
        self.probs = exp / total
        classes = torch.arange(logits.shape[-1], device=logits.device)
        self.onehot = (targets[..., None] == classes).to(logits.dtype)
        if self.label_smoothing > 0:  # the target (1 - e) onehot + e / K; backward is unchanged
            e = self.label_smoothing
            self.onehot = self.onehot * (1 - e) + e / logits.shape[-1]
        if self.prob_floor > 0:
            log_probs = self.probs.clamp_min(self.prob_floor).log()
        else:  # log-softmax: exact even where a probability underflows to 0
            log_probs = shifted - total.log()
        return -(self.onehot * log_probs).sum(-1).mean(-1)

    def backward(self):
        return (self.probs - self.onehot) / self.probs.shape[-2]


# --- initialisation, mirroring mnist_lab.models.layers.init_linear ----------------------------------------


def init_linear(fan_in, fan_out, init, std, dtype, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight (fan_out, fan_in), bias (fan_out,)) drawn on the CPU.

    Drawing on the CPU makes a seed give the same network on every device, and lets one CPU
    generator serve a CUDA model.
    """
    w = torch.empty(fan_out, fan_in, dtype=dtype)
    b = torch.zeros(fan_out, dtype=dtype)
    if init == "normal":  # the lab: N(0, std^2) for weights and biases alike (std 1)
        w.normal_(0.0, std, generator=generator)
        b.normal_(0.0, std, generator=generator)
    elif init == "default":  # torch.nn.Linear's: U(+-1/sqrt(fan_in)) for weights and biases
        bound = 1 / math.sqrt(fan_in)
        w.uniform_(-bound, bound, generator=generator)
        b.uniform_(-bound, bound, generator=generator)
    elif init == "kaiming":  # kaiming_normal_, fan_in, gain sqrt(2); zero bias
        w.normal_(0.0, math.sqrt(2 / fan_in), generator=generator)
    elif init == "xavier":  # xavier_uniform_, gain 1; zero bias
        bound = math.sqrt(6 / (fan_in + fan_out))
        w.uniform_(-bound, bound, generator=generator)
    else:
        raise ValueError(f"init must be one of {', '.join(INITS)}, not {init!r}")
    return w, b


# --- the model -------------------------------------------------------------------------------------


class ScratchMLP:
    """in -> hidden_sizes... -> out MLP trained by its own backward and plain SGD (the lab's model).

    Its config side (schema, the rules it puts on the optimizer) is
    `mnist_lab.models.scratch_config.ScratchMLPConfig`; the trainer's `ScratchLearner` runs its steps.

    Layers alternate Linear and activation, ending in a Linear that gives logits; the loss layer
    is separate (`loss_and_backward`). `state_dict` keys follow the autograd MLP built by
    `mnist_lab.models.mlp.MLP` (an nn.Sequential without batch norm or dropout: Linear layers at
    even indices), so weights move between the two models.
    """

    def __init__(
        self,
        in_features: int,
        hidden_sizes: list[int],
        out_features: int,
        activation: str,
        init: str,
        init_std: float,
        prob_floor: float,
        device=None,
        dtype=torch.float32,
        generator: torch.Generator | None = None,
    ):
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {', '.join(ACTIVATIONS)}, not {activation!r}"
            )
        prob_floor = prob_floor or 0.0
        if not 0 <= prob_floor < 1:
            raise ValueError(f"prob_floor must be in [0, 1), not {prob_floor}")
        sizes = [in_features, *hidden_sizes, out_features]
        if any(size < 1 for size in sizes):
            raise ValueError(f"layer sizes must be positive, not {sizes}")
        self.sizes, self.activation, self.init, self.init_std = sizes, activation, init, init_std
        self.layers: list = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            if i > 0:
                self.layers.append(ACTIVATIONS[activation]())
            w, b = init_linear(fan_in, fan_out, init, init_std, dtype, generator)
            self.layers.append(Linear(w.to(device), b.to(device)))
        self.criterion = SoftmaxCrossEntropy(prob_floor)
        self.grads: list[torch.Tensor] = []
        self.training = True

    @property
    def linears(self) -> list[Linear]:
        return self.layers[::2]

    @property
    def prob_floor(self) -> float:
        return self.criterion.prob_floor

    def parameters(self) -> list[torch.Tensor]:
        """[W1, b1, W2, b2, ...]: the live tensors, updated in place by `sgd_step`."""
        return [p for linear in self.linears for p in (linear.weight, linear.bias)]

    def to(self, device=None, dtype=None) -> ScratchMLP:
        for linear in self.linears:
            linear.weight = linear.weight.to(device, dtype)
            linear.bias = linear.bias.to(device, dtype)
        self.grads = []
        return self

    @torch.no_grad()
    def forward(self, x) -> torch.Tensor:
        """Logits; each layer caches what its backward needs."""
        for layer in self.layers:
            x = layer.forward(x)
        return x

    __call__ = forward

    @torch.no_grad()
    def loss(self, logits, targets) -> torch.Tensor:
        """The mean loss alone (with the floor, if any), e.g. to report it on held-out data."""
        return SoftmaxCrossEntropy(self.prob_floor).forward(logits, targets)

    @torch.no_grad()
    def loss_and_backward(self, logits, targets) -> torch.Tensor:
        """Mean loss of the last `forward`'s logits; fills `self.grads` (aligned with parameters)."""
        loss = self.criterion.forward(logits, targets)
        grad = self.criterion.backward()
        for layer in reversed(self.layers[1:]):
            grad = layer.backward(grad)
        self.layers[0].backward(grad, input_grad=False)
        self.grads = [g for linear in self.linears for g in (linear.grad_weight, linear.grad_bias)]
        return loss

    @torch.no_grad()
    def sgd_step(self, lr: float | torch.Tensor) -> None:
        """The lab's `w = w - lr * grad`, in place so that a captured CUDA graph sees the update.

        `lr` may be a 0-dim device tensor that the trainer rewrites between graph replays.
        """
        if not self.grads:
            raise RuntimeError("sgd_step needs gradients: call loss_and_backward first")
        for p, g in zip(self.parameters(), self.grads, strict=True):
            p.sub_(lr * g)

    def train(self, mode: bool = True) -> ScratchMLP:
        self.training = mode  # nothing behaves differently: kept for symmetry with nn.Module
        return self

    def eval(self) -> ScratchMLP:
        return self.train(False)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The parameters themselves (not copies), as nn.Module.state_dict returns them."""
        state = {}
        for i, linear in enumerate(self.linears):
            state[f"{2 * i}.weight"], state[f"{2 * i}.bias"] = linear.weight, linear.bias
        return state

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Copies into the existing tensors, keeping the addresses a captured graph reads."""
        own = self.state_dict()
        if set(state) != set(own):
            raise KeyError(f"state_dict keys {sorted(state)} do not match {sorted(own)}")
        for key, p in own.items():
            if state[key].shape != p.shape:
                raise ValueError(f"{key}: shape {tuple(state[key].shape)} != {tuple(p.shape)}")
            p.copy_(state[key])

    def __repr__(self) -> str:
        init = f"normal({self.init_std})" if self.init == "normal" else self.init
        floor = f", prob_floor={self.prob_floor}" if self.prob_floor else ""
        shape = "-".join(map(str, self.sizes))
        return f"ScratchMLP({shape}, {self.activation}, init={init}{floor})"
