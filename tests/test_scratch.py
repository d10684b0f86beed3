"""The from-scratch MLP (mnist_lab/models/scratch.py) checked against autograd, and trained on real MNIST.

Gradients are compared with autograd in float64 on random inputs; the real-MNIST test reruns the
lab report's first epoch (Charles, "Lab 3: 手写数字识别": 784-128-10 ReLU, N(0, 1) init,
pixels /255, SGD lr 0.01, batch 64 -> train loss 3.759, test accuracy 79.76%).
"""

from __future__ import annotations

import ast
import gzip
import inspect
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torchvision.datasets.mnist import read_image_file, read_label_file

from mnist_lab.models import scratch
from mnist_lab.models.scratch import ACTIVATIONS, ScratchMLP, SoftmaxCrossEntropy
from mnist_lab.train.learners import ScratchLearner

REPO = Path(__file__).resolve().parent.parent
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

AUTOGRAD_ACTIVATIONS = {
    "relu": F.relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "gelu": F.gelu,  # exact (erf), as torch.nn.GELU in the autograd MLP
    "leaky_relu": F.leaky_relu,  # slope 0.01
}
LAB_FLOOR = 1e-6
SCRATCH_KEYS = ("activation", "init", "init_std", "prob_floor")


CONF_VALUES = OmegaConf.load(REPO / "conf" / "model" / "scratch.yaml")


def scratch_mlp(in_features, hidden_sizes, out_features, *args, **kwargs) -> ScratchMLP:
    """A ScratchMLP with conf/model/scratch.yaml's values for the keys not given."""
    values = {key: CONF_VALUES[key] for key in SCRATCH_KEYS}
    values.update(zip(SCRATCH_KEYS, args, strict=False), **kwargs)
    return ScratchMLP(in_features, hidden_sizes, out_features, **values)


TRAINER_VALUES = OmegaConf.load(REPO / "conf" / "trainer" / "default.yaml")


def train_step(model, x, y, lr):
    """One step as the trainer takes it (`ScratchLearner.step`, the trainer's default knobs);
    returns its mean loss."""
    knobs = (TRAINER_VALUES.max_norm, TRAINER_VALUES.label_smoothing)
    return ScratchLearner(model, [lr], *knobs).step(x, y)[0]


def autograd_reference(model: ScratchMLP, x, y, prob_floor: float):
    """Loss, logits and parameter gradients of the same network computed by autograd."""
    params = [p.detach().clone().requires_grad_() for p in model.parameters()]
    act = AUTOGRAD_ACTIVATIONS[model.activation]
    h = x
    for i in range(0, len(params), 2):
        if i > 0:
            h = act(h)
        h = F.linear(h, params[i], params[i + 1])
    if prob_floor > 0:  # the lab's clamped loss, differentiated exactly
        loss = -torch.log(torch.softmax(h, 1).gather(1, y[:, None]).clamp_min(prob_floor)).mean()
    else:
        loss = F.cross_entropy(h, y)
    loss.backward()
    return loss.detach(), h.detach(), [p.grad for p in params]


def rel_error(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


@pytest.mark.parametrize("prob_floor", [0.0, LAB_FLOOR], ids=["exact", "floor"])
@pytest.mark.parametrize("hidden", [[16], [16, 12]], ids=["depth1", "depth2"])
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_gradients_match_autograd(activation, hidden, prob_floor):
    g = torch.Generator().manual_seed(0)
    model = scratch_mlp(
        20, hidden, 10, activation, init="normal", init_std=0.3, prob_floor=prob_floor,
        dtype=torch.float64, generator=g,
    )  # fmt: skip
    x = torch.randn(32, 20, dtype=torch.float64, generator=g)
    y = torch.randint(0, 10, (32,), generator=g)

    logits = model.forward(x)
    loss = model.loss_and_backward(logits, y)
    ref_loss, ref_logits, ref_grads = autograd_reference(model, x, y, prob_floor)

    # The lab's backward ignores the clamp; here no true-class probability is clamped, so both
    # must agree (test_prob_floor_clamps_the_loss_but_not_the_gradient covers the clamped case).
    assert torch.softmax(ref_logits, 1).gather(1, y[:, None]).min() > LAB_FLOOR
    assert loss.dim() == 0 and loss.dtype == torch.float64
    assert rel_error(logits, ref_logits) < 1e-12
    assert rel_error(loss, ref_loss) < 1e-12
    assert len(model.grads) == len(ref_grads) == 2 * (len(hidden) + 1)
    for grad, ref, p in zip(model.grads, ref_grads, model.parameters(), strict=True):
        assert grad.shape == p.shape
        assert rel_error(grad, ref) < 1e-5


def test_prob_floor_clamps_the_loss_but_not_the_gradient():
    """Where p_true < floor the lab's loss is -log(floor), and its backward still uses p - onehot."""
    logits = torch.tensor([[30.0, 0.0, 0.0], [0.0, 2.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([1, 1])  # the first row is a confident mistake: p_true = e^-30 < 1e-6
    probs = torch.softmax(logits, 1)
    onehot = F.one_hot(y, 3).double()

    floored = SoftmaxCrossEntropy(LAB_FLOOR)
    loss = floored.forward(logits, y)
    assert loss.item() == pytest.approx((-math.log(LAB_FLOOR) - math.log(probs[1, 1])) / 2)
    torch.testing.assert_close(floored.backward(), (probs - onehot) / 2)

    exact = SoftmaxCrossEntropy(0.0)
    assert exact.forward(logits, y).item() == pytest.approx(F.cross_entropy(logits, y).item())
    torch.testing.assert_close(exact.backward(), floored.backward())


def test_prob_floor_changes_the_reported_loss_never_the_training():
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(64, 30, generator=g), torch.randint(0, 10, (64,), generator=g)
    runs = {}
    for floor in (0.0, LAB_FLOOR):  # N(0, 1) init: logits so large that some p_true < 1e-6
        model = scratch_mlp(
            30, [32], 10, prob_floor=floor, generator=torch.Generator().manual_seed(2)
        )
        runs[floor] = model, [train_step(model, x, y, 0.01) for _ in range(5)]
    (exact, exact_losses), (floored, floored_losses) = runs[0.0], runs[LAB_FLOOR]
    assert exact_losses[0] > floored_losses[0]  # the clamp was active
    for p, q in zip(exact.parameters(), floored.parameters(), strict=True):
        assert torch.equal(p, q)


def test_softmax_is_stable_for_huge_logits():
    logits = torch.tensor([[1000.0, 0.0, -1000.0], [-1e4, -1e4, -1e4]])
    criterion = SoftmaxCrossEntropy()
    loss = criterion.forward(logits, torch.tensor([2, 0]))
    assert torch.isfinite(loss) and loss.item() == pytest.approx((2000 + math.log(3)) / 2)
    assert torch.isfinite(criterion.backward()).all()


@pytest.mark.parametrize("as_tensor", [False, True], ids=["float-lr", "tensor-lr"])
def test_sgd_step_is_p_minus_lr_g_in_place(as_tensor):
    model = scratch_mlp(12, [8, 6], 4, "tanh", generator=torch.Generator().manual_seed(3))
    x, y = torch.randn(16, 12), torch.randint(0, 4, (16,))
    model.loss_and_backward(model.forward(x), y)
    params = model.parameters()
    expected = [p - 0.05 * g for p, g in zip(params, model.grads, strict=True)]
    model.sgd_step(torch.tensor(0.05) if as_tensor else 0.05)
    for before, after, want in zip(params, model.parameters(), expected, strict=True):
        assert after is before  # in place: a captured CUDA graph keeps reading the same memory
        torch.testing.assert_close(after, want, rtol=0, atol=1e-7)


def test_sgd_step_before_backward_is_an_error():
    with pytest.raises(RuntimeError, match="loss_and_backward"):
        scratch_mlp(4, [3], 2).sgd_step(0.1)


def test_train_step_is_forward_backward_step():
    a = scratch_mlp(10, [7], 3, "gelu", generator=torch.Generator().manual_seed(4))
    b = scratch_mlp(10, [7], 3, "gelu", generator=torch.Generator().manual_seed(4))
    x, y = torch.randn(8, 10), torch.randint(0, 3, (8,))
    loss = train_step(a, x, y, 0.1)
    want = b.loss_and_backward(b.forward(x), y)
    b.sgd_step(0.1)
    assert torch.equal(loss, want)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_nothing_builds_an_autograd_graph():
    model = scratch_mlp(6, [5], 3)
    assert not any(p.requires_grad for p in model.parameters())
    x = torch.randn(4, 6, requires_grad=True)  # even a grad-requiring input leaves no graph
    loss = train_step(model, x, torch.tensor([0, 1, 2, 0]), 0.1)
    assert loss.grad_fn is None and not any(p.requires_grad for p in model.parameters())


def test_module_uses_tensor_ops_only():
    """No torch.nn, torch.optim, torch.autograd or torch.func anywhere in scratch.py's code."""
    tree = ast.parse(inspect.getsource(scratch))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            assert not (
                node.value.id == "torch" and node.attr in {"nn", "optim", "autograd", "func"}
            )
    assert imported == {"__future__", "math", "torch"}


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_loss_decreases_on_synthetic_data(activation):
    """Ten separable Gaussian blobs: full-batch steps drive the loss down and fit the labels."""
    g = torch.Generator().manual_seed(5)
    centres = 3 * torch.randn(10, 20, generator=g)
    y = torch.arange(10).repeat(30)
    x = centres[y] + torch.randn(300, 20, generator=g)
    model = scratch_mlp(20, [32], 10, activation, init="default", generator=g)
    losses = [train_step(model, x, y, 0.5).item() for _ in range(150)]
    assert losses[-1] < 0.2 * losses[0]
    assert (model(x).argmax(1) == y).float().mean() > 0.95


def test_default_init_is_torch_nn_linear_init(mlp):
    """Same seed, same numbers: `default` draws exactly what torch.nn.Linear draws."""
    torch.manual_seed(6)
    net = mlp([64, 32], init="default")
    torch.manual_seed(6)
    model = scratch_mlp(784, [64, 32], 10, init="default")
    for key, value in net.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value)


@pytest.mark.parametrize("init", ["normal", "kaiming", "xavier", "default"])
def test_init_distributions(init):
    fan_in, fan_out = 784, 512
    model = scratch_mlp(fan_in, [fan_out], 10, init=init, init_std=0.3)
    w, b = model.parameters()[:2]
    bound = {"xavier": math.sqrt(6 / (fan_in + fan_out)), "default": 1 / math.sqrt(fan_in)}
    std = {"normal": 0.3, "kaiming": math.sqrt(2 / fan_in)}.get(init) or bound[init] / math.sqrt(3)
    assert w.std().item() == pytest.approx(std, rel=0.02)
    assert w.mean().abs() < 0.02 * std
    if init in bound:
        assert w.abs().max() <= bound[init]
    if init in ("kaiming", "xavier"):
        assert torch.equal(b, torch.zeros_like(b))  # as mnist_lab.models._init_linear
    else:
        assert b.std().item() == pytest.approx(std, rel=0.2)


def test_generator_makes_init_reproducible():
    a = scratch_mlp(30, [20], 10, generator=torch.Generator().manual_seed(7))
    b = scratch_mlp(30, [20], 10, generator=torch.Generator().manual_seed(7))
    c = scratch_mlp(30, [20], 10, generator=torch.Generator().manual_seed(8))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.parameters()[0], c.parameters()[0])


def test_state_dict_moves_weights_to_the_autograd_mlp_and_back(mlp):
    g = torch.Generator().manual_seed(9)
    model = scratch_mlp(784, [32, 16], 10, "leaky_relu", dtype=torch.float64, generator=g)
    net = mlp([32, 16], activation="leaky_relu").double()
    net.load_state_dict(model.state_dict())
    x = torch.rand(5, 784, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(x))

    other = scratch_mlp(784, [32, 16], 10, "leaky_relu", dtype=torch.float64)
    before = other.parameters()
    other.load_state_dict(net.state_dict())
    assert all(p is q for p, q in zip(before, other.parameters(), strict=True))  # copied in place
    torch.testing.assert_close(other(x), model(x))
    with pytest.raises(KeyError):
        other.load_state_dict({"0.weight": before[0]})
    with pytest.raises(ValueError, match="shape"):
        scratch_mlp(784, [8, 16], 10).load_state_dict(model.state_dict())


def test_module_conveniences():
    model = scratch_mlp(784, [128], 10, prob_floor=LAB_FLOOR)
    assert sum(p.numel() for p in model.parameters()) == 784 * 128 + 128 + 128 * 10 + 10
    assert repr(model) == "ScratchMLP(784-128-10, relu, init=normal(1.0), prob_floor=1e-06)"
    assert model.eval() is model and not model.training
    assert model.train() is model and model.training
    moved = model.to("cpu", torch.float64)
    assert moved is model and all(p.dtype == torch.float64 for p in model.parameters())
    assert scratch_mlp(784, [], 10).forward(torch.rand(2, 784)).shape == (2, 10)  # depth 0 works


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(activation="swish"),
        dict(init="orthogonal"),
        dict(prob_floor=-0.1),
        dict(prob_floor=1.0),
    ],
)
def test_bad_arguments_are_rejected(kwargs):
    with pytest.raises(ValueError):
        scratch_mlp(4, [3], 2, **kwargs)


def _read_mnist(tmp_path, name, reader):
    """The shipped gzip IDX file, unpacked into tmp_path and read with torchvision's reader."""
    raw = tmp_path / name
    with gzip.open(REPO / "data" / "mnist" / f"{name}.gz", "rb") as src, open(raw, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return reader(str(raw))


def test_lab_first_epoch_on_real_mnist(tmp_path):
    """One epoch of the lab's recipe on all 60k images lands on the lab's epoch-1 numbers.

    The lab reports train loss 3.759 and 79.76% test accuracy after epoch 1; eight seeds measured
    here gave 3.73-4.01 and 79.9-81.0%. (A 10k-image epoch only reaches 48-57%: with N(0, 1)
    weights and lr 0.01 the lab's model needs the whole epoch.) About 1 s of training on 2 cores.
    """
    train_x = _read_mnist(tmp_path, "train-images-idx3-ubyte", read_image_file)
    train_y = _read_mnist(tmp_path, "train-labels-idx1-ubyte", read_label_file)
    test_x = _read_mnist(tmp_path, "t10k-images-idx3-ubyte", read_image_file)
    test_y = _read_mnist(tmp_path, "t10k-labels-idx1-ubyte", read_label_file)
    assert train_x.shape == (60000, 28, 28) and test_x.shape == (10000, 28, 28)
    x, y = train_x.flatten(1).float() / 255, train_y.long()
    xt, yt = test_x.flatten(1).float() / 255, test_y.long()

    g = torch.Generator().manual_seed(0)
    model = scratch_mlp(
        784, [128], 10, init="normal", init_std=1.0, prob_floor=LAB_FLOOR, generator=g
    )
    order = torch.randperm(len(y), generator=g)
    losses = torch.stack([train_step(model, x[idx], y[idx], 0.01) for idx in order.split(64)])
    accuracy = (model(xt).argmax(1) == yt).float().mean().item()

    assert 3.2 < losses.mean().item() < 4.6  # the lab's floored loss, 3.759
    assert losses[-100:].mean() < 0.5 * losses[:100].mean()
    assert accuracy > 0.75  # the lab's 79.76%


@pytest.mark.gpu
@needs_cuda
@pytest.mark.filterwarnings("ignore:Synchronization debug mode is a prototype")
def test_train_step_captures_as_a_cuda_graph_without_syncs():
    """The lead's trainer captures the step once and replays it; it must equal eager steps."""
    device = torch.device("cuda")
    g = torch.Generator().manual_seed(10)
    x = torch.rand(512, 784, generator=g).to(device)
    y = torch.randint(0, 10, (512,), generator=g).to(device)
    eager = scratch_mlp(784, [128, 64], 10, "gelu", init_std=0.1, device=device, generator=g)
    graphed = scratch_mlp(784, [128, 64], 10, "gelu", init_std=0.1, device=device)
    graphed.load_state_dict(eager.state_dict())
    lr = torch.tensor(0.01, device=device)
    static_x, static_y = x[:64].clone(), y[:64].clone()

    torch.cuda.set_sync_debug_mode("error")  # any host-device sync in the step raises
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            train_step(graphed, static_x, static_y, lr)  # warm-up step, also taken by `eager`
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_loss = train_step(graphed, static_x, static_y, lr)
    finally:
        torch.cuda.set_sync_debug_mode("default")

    train_step(eager, x[:64], y[:64], 0.01)
    for i, idx in enumerate(torch.arange(64, 512, device=device).split(64)):
        lr.fill_(0.01 / (1 + i))
        static_x.copy_(x[idx])
        static_y.copy_(y[idx])
        graph.replay()
        want = train_step(eager, x[idx], y[idx], 0.01 / (1 + i))
        torch.testing.assert_close(static_loss, want)
    for p, q in zip(graphed.parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(p, q)
