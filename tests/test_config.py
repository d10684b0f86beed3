"""Composition of every option of every config group; refusal of every bad input, key named."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import IN_FEATURES, N_CLASSES
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from torch import nn

from mnist_lab.config.checks import parse_switch
from mnist_lab.config.schema import REPO_ROOT
from mnist_lab.errors import ConfigError
from mnist_lab.job.checks import check_config
from mnist_lab.models.build import build_model, count_parameters
from mnist_lab.train.device import resolve_device
from mnist_lab.train.schedule import lr_table

CONF_DIR = REPO_ROOT / "conf"
TRAIN_SIZE = 60_000  # MNIST's training items (conf/data/mnist.yaml)


def group_options(group: str) -> set[str]:
    return {p.stem for p in (CONF_DIR / group).glob("*.yaml")}


OPTIMIZERS = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
    "adadelta": torch.optim.Adadelta,
}
ACTIVATIONS = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
}


# ---------------------------------------------------------------------------------------------
# composition


def test_default_config_is_the_tutorial_recipe(compose):
    cfg = compose()
    check_config(cfg)
    assert list(cfg.model.hidden_sizes) == [128]
    assert cfg.model._target_ == "mnist_lab.models.mlp.MLP"
    assert cfg.model.activation.value == "relu"
    assert cfg.optimizer._target_ == "torch.optim.SGD"
    assert cfg.optimizer.lr == 0.01
    assert cfg.data.batch_size == 32
    assert cfg.trainer.epochs == 10
    assert cfg.trainer.seed == 0
    assert cfg.trainer.device == "auto"
    assert cfg.data.normalize == "mnist"
    assert cfg.data.deskew is False
    assert cfg.data.val_size == 5000
    assert cfg.scheduler.name.value == "none"


def test_every_group_option_is_covered_here():
    """A new option file in conf/ must be added to these tests."""
    assert group_options("data") == {"mnist"}
    assert group_options("model") == {"mlp", "scratch", "resmlp"}
    assert group_options("optimizer") == set(OPTIMIZERS)
    assert group_options("scheduler") == {"none", "cosine", "onecycle", "step"}
    assert group_options("trainer") == {"default"}


@pytest.mark.parametrize("normalize", ["mnist", "half", "none"])
def test_data_normalize_options(compose, normalize):
    cfg = compose([f"data.normalize={normalize}"])
    check_config(cfg)
    assert cfg.data.normalize == normalize


def test_data_settings(compose):
    cfg = compose(
        [
            "data.val_size=0",
            "data.split_seed=7",
            "data.shuffle=false",
            "data.drop_last=true",
            "data.train_subset=1000",
            "data.eval_batch_size=500",
        ]
    )
    check_config(cfg)
    assert (cfg.data.val_size, cfg.data.split_seed, cfg.data.train_subset) == (0, 7, 1000)
    assert cfg.data.shuffle is False and cfg.data.drop_last is True
    assert cfg.data.eval_batch_size == 500
    # the data files are found wherever the process runs
    assert (CONF_DIR.parent / "data" / "mnist").samefile(cfg.data.root)


def test_model_scratch_option(compose):
    cfg = compose(["model=scratch", "hidden=64"])
    check_config(cfg)
    assert cfg.model._target_ == "mnist_lab.models.scratch.ScratchMLP"
    assert list(cfg.model.hidden_sizes) == [64]
    assert cfg.model.init.value == "normal"
    assert cfg.model.init_std == 1.0
    assert cfg.optimizer._target_ == "torch.optim.SGD"
    model = build_model(cfg.model, torch.device("cpu"), IN_FEATURES, N_CLASSES)
    assert not isinstance(model, nn.Module)  # the hand-written one, no torch.nn
    assert count_parameters(model) == 784 * 64 + 64 + 64 * 10 + 10
    assert model.forward(torch.zeros(2, 784)).shape == (2, 10)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_every_activation_builds(compose, activation):
    cfg = compose([f"model.activation={activation}", "hidden=16"])
    check_config(cfg)
    model = build_model(cfg.model, torch.device("cpu"), IN_FEATURES, N_CLASSES)
    kinds = [type(m) for m in model.modules()]
    assert ACTIVATIONS[activation] in kinds
    assert model(torch.zeros(2, 784)).shape == (2, 10)


@pytest.mark.parametrize("init", ["default", "kaiming", "xavier", "normal"])
@pytest.mark.parametrize("head", ["logits", "log_softmax"])
def test_every_init_and_head_builds(compose, init, head):
    cfg = compose([f"model.init={init}", f"model.head={head}", "hidden=16"])
    check_config(cfg)
    model = build_model(cfg.model, torch.device("cpu"), IN_FEATURES, N_CLASSES)
    assert isinstance(model[-1], nn.LogSoftmax) == (head == "log_softmax")
    out = model(torch.randn(3, 784))
    assert out.shape == (3, 10) and torch.isfinite(out).all()


def test_model_dropout_and_batch_norm(compose):
    cfg = compose(["model.dropout=0.2", "model.batch_norm=true", "model.hidden_sizes=[32,16]"])
    check_config(cfg)
    model = build_model(cfg.model, torch.device("cpu"), IN_FEATURES, N_CLASSES)
    assert sum(isinstance(m, nn.BatchNorm1d) for m in model) == 2
    assert [m.p for m in model if isinstance(m, nn.Dropout)] == [0.2, 0.2]


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_instantiates_and_steps(compose, name, mlp):
    cfg = compose([f"optimizer={name}", "lr=0.0375"])
    check_config(cfg)
    model = mlp([8])
    optimizer = instantiate(cfg.optimizer, params=model.parameters())
    assert type(optimizer) is OPTIMIZERS[name]
    assert optimizer.param_groups[0]["lr"] == 0.0375
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.randn(4, 784)).square().mean().backward()
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_sgd_fields(compose, mlp):
    cfg = compose(
        ["optimizer.momentum=0.9", "optimizer.nesterov=true", "optimizer.weight_decay=1e-4"]
    )
    optimizer = instantiate(cfg.optimizer, params=mlp([4]).parameters())
    group = optimizer.param_groups[0]
    assert (group["momentum"], group["nesterov"], group["weight_decay"]) == (0.9, True, 1e-4)


def test_scheduler_none_is_constant(compose):
    cfg = compose(["scheduler=none", "lr=0.1"])
    assert lr_table(cfg.scheduler, cfg.optimizer.lr, 10, 3) == [0.1] * 30


def test_scheduler_cosine(compose):
    cfg = compose(["scheduler=cosine", "lr=0.1", "scheduler.eta_min=0.001"])
    lrs = lr_table(cfg.scheduler, cfg.optimizer.lr, 10, 4)
    assert len(lrs) == 40
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[20] == pytest.approx((0.1 + 0.001) / 2)
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))
    assert lrs[-1] == pytest.approx(0.001, abs=1e-3)


def test_scheduler_onecycle(compose):
    cfg = compose(["scheduler=onecycle", "lr=0.1"])
    factor, pct = cfg.scheduler.max_lr_factor, cfg.scheduler.pct_start
    lrs = lr_table(cfg.scheduler, cfg.optimizer.lr, 10, 10)
    assert len(lrs) == 100
    peak = max(range(100), key=lrs.__getitem__)
    assert lrs[peak] == pytest.approx(0.1 * factor)
    assert abs(peak - pct * 100) <= 1
    assert lrs[0] < lrs[peak] / 10 and lrs[-1] < lrs[0]


def test_scheduler_step(compose):
    cfg = compose(["scheduler=step", "lr=0.1", "scheduler.step_epochs=2", "scheduler.gamma=0.5"])
    lrs = lr_table(cfg.scheduler, cfg.optimizer.lr, 10, 5)
    assert lrs[:20] == pytest.approx([0.1] * 20)
    assert lrs[20:40] == pytest.approx([0.05] * 20)
    assert lrs[40:] == pytest.approx([0.025] * 10)


def test_trainer_settings(compose):
    cfg = compose(
        [
            "trainer.device=cpu",
            "trainer.deterministic=true",
            "trainer.eval_every_epoch=false",
            "trainer.log_interval=50",
            "trainer.progress=off",
            "trainer.cuda_graph=off",
            "trainer.save_figures=true",
            "trainer.matmul_precision=highest",
        ]
    )
    check_config(cfg)
    t = cfg.trainer
    assert t.matmul_precision.value == "highest"
    assert compose().trainer.matmul_precision.value == "high"
    assert (t.device, t.deterministic, t.eval_every_epoch, t.log_interval) == (
        "cpu",
        True,
        False,
        50,
    )
    # Hydra hands `true` to a str field as "True": the switches accept both spellings
    assert [parse_switch(k, t[k]) for k in ("progress", "cuda_graph", "save_figures")] == [
        False,
        False,
        True,
    ]


def test_top_level_knobs_propagate(compose):
    cfg = compose(["hidden=512", "lr=0.05", "batch_size=64", "epochs=5", "seed=3"])
    check_config(cfg)
    assert list(cfg.model.hidden_sizes) == [512]
    assert cfg.optimizer.lr == 0.05
    assert cfg.data.batch_size == 64
    assert cfg.trainer.epochs == 5
    assert cfg.trainer.seed == 3


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_lr_knob_reaches_every_optimizer(compose, name):
    assert compose([f"optimizer={name}", "lr=0.2"]).optimizer.lr == 0.2


def test_issue_example_command_composes(compose):
    cfg = compose(
        "hidden=512 lr=0.05 batch_size=64 epochs=5 optimizer=adam model.activation=tanh "
        "trainer.device=cpu seed=3".split()
    )
    check_config(cfg)
    assert resolve_device(cfg.trainer.device) == torch.device("cpu")
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == 0.05
    assert cfg.model.activation.value == "tanh"


def test_output_dirs_are_dated_and_unique(compose):
    """Single runs and sweeps in separate dated folders; the name carries pid + microseconds."""
    a = compose(return_hydra_config=True).hydra
    b = compose(return_hydra_config=True).hydra
    assert a.run.dir.startswith("results/runs/") and a.sweep.dir.startswith("results/multiruns/")
    assert a.run.dir != b.run.dir
    assert a.sweep.dir != b.sweep.dir


# ---------------------------------------------------------------------------------------------
# refusal of bad values (in-process)


def assert_refused(cfg, key: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        check_config(cfg)
    message = str(info.value)
    assert info.value.key == key
    assert message.startswith(f"{key}=")
    assert "\n" not in message
    assert "not allowed" in message
    return info.value


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["hidden=0"], "model.hidden_sizes[0]"),
        (["hidden=-4"], "model.hidden_sizes[0]"),
        (["model.hidden_sizes=[64,0]"], "model.hidden_sizes[1]"),
        (["model.hidden_sizes=[]"], "model.hidden_sizes"),
        (["lr=0"], "optimizer.lr"),
        (["lr=-0.1"], "optimizer.lr"),
        (["optimizer=adam", "lr=-1"], "optimizer.lr"),
        (["batch_size=0"], "batch_size"),
        (["batch_size=-1"], "batch_size"),
        ([f"batch_size={TRAIN_SIZE - 5000 + 1}"], "batch_size"),
        (["data.train_subset=100", "batch_size=101"], "batch_size"),
        (["data.val_size=0", f"batch_size={TRAIN_SIZE + 1}"], "batch_size"),
        (["data.val_size=-1"], "data.val_size"),
        ([f"data.val_size={TRAIN_SIZE}"], "data.val_size"),
        (["data.train_subset=0"], "data.train_subset"),
        ([f"data.train_subset={TRAIN_SIZE - 5000 + 1}"], "data.train_subset"),
        (["epochs=0"], "trainer.epochs"),
        (["model.dropout=1.0"], "model.dropout"),
        (["model.dropout=-0.1"], "model.dropout"),
        (["model.init_std=0"], "model.init_std"),
        (["trainer.log_interval=-1"], "trainer.log_interval"),
        (["trainer.progress=maybe"], "trainer.progress"),
        (["trainer.save_figures=sometimes"], "trainer.save_figures"),
        (["data.eval_batch_size=0"], "data.eval_batch_size"),
        (["model=scratch", "optimizer=adam"], "optimizer"),
        (["data.normalize=zscore"], "data.normalize"),
        # floats must be finite, named where they were written
        (["lr=inf"], "lr"),
        (["lr=nan"], "lr"),
        (["optimizer.lr=-inf"], "optimizer.lr"),
        (["optimizer=adam", "optimizer.weight_decay=nan"], "optimizer.weight_decay"),
        (["model.dropout=nan"], "model.dropout"),
        (["trainer.max_norm=inf"], "trainer.max_norm"),
        (["data.dataset.normalization.mnist=[0.1307,inf]"], "data.dataset.normalization.mnist[1]"),
        # the dataset's description, checked by its loader
        (["data.dataset.image_shape=[784]"], "data.dataset.image_shape"),
        (["data.dataset.image_shape=[28,0]"], "data.dataset.image_shape[1]"),
        (["data.dataset.classes=[digit]"], "data.dataset.classes"),
        (["data.dataset.train_items=0"], "data.dataset.train_items"),
        (["data.dataset.normalization.mnist=[0.1307,0]"], "data.dataset.normalization.mnist[1]"),
        (["data.dataset._target_=mnist_lab.data.idx.Nothing"], "data.dataset"),
    ],
)
def test_bad_values_are_refused_with_the_key(compose, overrides, key):
    assert_refused(compose(overrides), key)


def test_allowed_range_is_stated(compose):
    error = assert_refused(compose([f"data.val_size={TRAIN_SIZE}"]), "data.val_size")
    assert f"[0, {TRAIN_SIZE})" in str(error)
    error = assert_refused(compose(["batch_size=0"]), "batch_size")
    assert f"[1, {TRAIN_SIZE - 5000}]" in str(error)


@pytest.mark.parametrize(
    "overrides",
    [
        ["data.val_size=0"],
        [f"data.val_size={TRAIN_SIZE - 1}", "batch_size=1"],
        [f"batch_size={TRAIN_SIZE - 5000}"],
        ["data.train_subset=100", "batch_size=100"],
        ["data.val_size=0", f"data.train_subset={TRAIN_SIZE}"],
    ],
)
def test_boundary_values_are_accepted(compose, overrides):
    check_config(compose(overrides))


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["model.activation=swish"], ["model.activation", "leaky_relu"]),
        (["optimizer=sgdd"], ["optimizer/sgdd", "adamw"]),
        (["model=resnet"], ["model/resnet", "scratch"]),
        (["scheduler=linear"], ["scheduler/linear", "onecycle"]),
        (["model.init=orthogonal"], ["model.init", "xavier"]),
        (["model.head=softmax"], ["model.head", "log_softmax"]),
        (["trainer.matmul_precision=low"], ["trainer.matmul_precision", "highest"]),
        (["hidden=abc"], ["hidden", "abc"]),
        (["lr=fast"], ["lr", "fast"]),
        (["epochs=1.5"], ["epochs"]),
        (["data.shuffle=maybe"], ["data.shuffle"]),
        (["lrr=0.1"], ["lrr"]),
        (["model.hiden_sizes=[3]"], ["hiden_sizes"]),
        # each model takes only its own keys: the scratch MLP has no batch norm, dropout or head
        (["model=scratch", "model.batch_norm=true"], ["model.batch_norm"]),
        (["model=scratch", "model.head=log_softmax"], ["model.head"]),
        (["model.prob_floor=1e-6"], ["model.prob_floor"]),
        (["trainer.epoch=3"], ["epoch"]),
    ],
)
def test_hydra_refuses_at_composition(compose, overrides, named):
    with pytest.raises(ConfigCompositionException) as info:
        compose(overrides)
    text = str(info.value) + str(info.value.__cause__ or "")
    for word in named:
        assert word in text


# ---------------------------------------------------------------------------------------------
# devices


def test_device_cpu_and_auto_without_accelerators(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")


def test_device_auto_prefers_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda"


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:1"])
def test_cuda_without_gpu_is_refused(monkeypatch, spec):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError) as info:
        resolve_device(spec)
    assert info.value.key == "trainer.device"
    assert "no CUDA device" in str(info.value) and "\n" not in str(info.value)


def test_missing_cuda_index_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError) as info:
        resolve_device("cuda:3")
    assert info.value.key == "trainer.device"


def test_mps_without_mps_is_refused(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError) as info:
        resolve_device("mps")
    assert info.value.key == "trainer.device"


@pytest.mark.parametrize("spec", ["gpu", "tpu", "xla", "cuda:x", ""])
def test_unknown_device_is_refused(spec):
    with pytest.raises(ConfigError) as info:
        resolve_device(spec)
    assert info.value.key == "trainer.device"
    assert "auto, cpu, cuda" in str(info.value)


# ---------------------------------------------------------------------------------------------
# refusal through the real CLI: non-zero exit, the key named, no traceback


def assert_clean_refusal(proc, *named: str, one_line: bool) -> None:
    assert proc.returncode != 0, proc.output
    assert "Traceback" not in proc.output, proc.output
    for word in named:
        assert word in proc.output, proc.output
    if one_line:
        lines = [line for line in proc.output.splitlines() if line.strip()]
        assert len(lines) == 1, proc.output


def test_cli_refuses_hidden_zero_and_records_the_failure(run_cli):
    proc = run_cli(["hidden=0", "trainer.device=cpu"])
    assert_clean_refusal(proc, "model.hidden_sizes[0]", "must be > 0", one_line=True)
    result = json.loads((proc.run_dir / "result.json").read_text())
    assert result["status"] == "failed"
    assert result["reason"].startswith("model.hidden_sizes[0]=0")
    assert result["epochs_run"] == 0


def test_cli_refuses_cuda_without_gpu(run_cli):
    proc = run_cli(["trainer.device=cuda"], env={"CUDA_VISIBLE_DEVICES": ""})
    assert_clean_refusal(proc, "trainer.device", "no CUDA device", one_line=True)


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("hidden=abc", ["hidden", "abc"]),
        ("lrr=0.1", ["lrr"]),
        ("model.activation=swish", ["model.activation", "relu, sigmoid, tanh, gelu, leaky_relu"]),
        ("optimizer=foo", ["optimizer=foo", "adadelta", "rmsprop"]),
    ],
)
def test_cli_refuses_at_composition(run_cli, override, named):
    proc = run_cli([override])
    assert_clean_refusal(proc, *named, one_line=False)
    assert not proc.run_dir.exists()  # refused before any run directory or training


@pytest.mark.parametrize(
    "override", ["optimizer.momentum=0.9", "optimizer.weight_decay=0.01", "optimizer.nesterov=true"]
)
def test_scratch_model_refuses_sgd_settings_it_cannot_apply(compose, override):
    cfg = compose(["model=scratch", override])
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=key):
        check_config(cfg)
