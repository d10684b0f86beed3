"""A job built from its config: checked, its data loaded, its model, learner and member of the loop.

The one way a config becomes something that trains: the job lifecycle (`mnist_lab.job.task`)
builds every job with `build` and `trainer_for`, alone or stacked, and so do the saved-run
evaluation, the benchmarks and the tests (`build_trainer`: a job as a group of one).
"""

from __future__ import annotations

import logging
import os
import platform
import sys
from dataclasses import dataclass

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from mnist_lab.config.checks import parse_switch
from mnist_lab.data.dataset import DataTensors, load_data
from mnist_lab.errors import ConfigError
from mnist_lab.job.checks import check_config
from mnist_lab.job.worker_share import place
from mnist_lab.models.build import build_model, count_parameters
from mnist_lab.records.objective import Objective
from mnist_lab.train.epoch import batch_plan
from mnist_lab.train.learners import AutogradLearner, Learner, OwnBackward, ScratchLearner
from mnist_lab.train.loop import EarlyStopping, Member, Trainer, TrainSettings
from mnist_lab.train.schedule import lr_table
from mnist_lab.train.stacked import stack

log = logging.getLogger(__name__)


@dataclass
class Built:
    """One job, ready to train: its config, data, member of the loop and the loop's settings."""

    cfg: DictConfig
    data: DataTensors
    member: Member
    settings: TrainSettings
    capture: bool  # the step is replayed as a CUDA graph
    objective: Objective


def _set_determinism(seed: int, deterministic: bool) -> None:
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if torch.are_deterministic_algorithms_enabled() != deterministic:
        torch.use_deterministic_algorithms(deterministic)  # a slow call: only when it changes
    torch.manual_seed(seed)


def _use_cuda_graph(cfg: DictConfig, device: torch.device) -> bool:
    """Whether the device and `trainer.cuda_graph` allow capturing the step."""
    mode = parse_switch("trainer.cuda_graph", cfg.trainer.cuda_graph)
    if mode is True and device.type != "cuda":
        log.warning("trainer.cuda_graph=on needs a CUDA device; training eagerly on %s", device)
    return mode is not False and device.type == "cuda"


def build_learner(cfg: DictConfig, model, steps_per_epoch: int, capture: bool) -> Learner:
    """How the model trains follows from what it is: a torch.nn.Module by autograd and
    torch.optim, a model with its own backward (`OwnBackward`) by its own update."""
    lrs = lr_table(cfg.scheduler, cfg.optimizer.lr, steps_per_epoch, cfg.trainer.epochs)
    if not isinstance(model, nn.Module):
        if not isinstance(model, OwnBackward):
            raise ConfigError(
                "model",
                cfg.model._target_,
                "builds neither an nn.Module nor a model with its own backward",
            )
        if cfg.trainer.compile:
            log.warning(
                "trainer.compile applies to torch.nn models only; %s runs as is",
                type(model).__name__,
            )
        return ScratchLearner(model, lrs, cfg.trainer.max_norm, cfg.trainer.label_smoothing)
    try:
        optimizer = instantiate(cfg.optimizer, params=model.parameters())
    except Exception as e:  # torch.optim refuses unknown or out-of-range settings
        cause = e.__cause__ or e
        raise ConfigError("optimizer", cfg.optimizer._target_, f"{cause}") from e
    compile_batch = cfg.data.batch_size if cfg.trainer.compile else None
    learner = AutogradLearner(
        model, optimizer, lrs, cfg.trainer.max_norm, cfg.trainer.label_smoothing, compile_batch
    )
    if capture:
        from mnist_lab.train.cuda_graph import prepare_optimizer

        prepare_optimizer(optimizer, scheduled=learner.scheduled)
    return learner


def train_settings(cfg: DictConfig, multirun: bool) -> TrainSettings:
    progress = parse_switch("trainer.progress", cfg.trainer.progress)
    return TrainSettings(
        epochs=cfg.trainer.epochs,
        batch_size=cfg.data.batch_size,
        shuffle=cfg.data.shuffle,
        drop_last=cfg.data.drop_last,
        eval_batch_size=cfg.data.eval_batch_size,
        eval_every_epoch=cfg.trainer.eval_every_epoch,
        log_interval=cfg.trainer.log_interval,
        progress=(sys.stderr.isatty() and not multirun) if progress == "auto" else progress,
    )


def build(cfg: DictConfig, multirun: bool = False) -> Built:
    """Check the config, load the data, build the model and its own learner on the device."""
    check_config(cfg)
    device = place(cfg.trainer.device)  # a sweep worker's device and threads
    _set_determinism(cfg.trainer.seed, cfg.trainer.deterministic)
    torch.set_float32_matmul_precision(cfg.trainer.matmul_precision.value)
    data = load_data(cfg.data, device)
    model = build_model(cfg.model, device, data.facts.in_features, data.facts.n_classes)
    # nn.Dropout draws its masks from the global generator after the model was built; the stacked
    # step on the CPU continues that stream in a generator of the member's own: the same masks.
    rng = torch.Generator().set_state(torch.get_rng_state()) if device.type == "cpu" else None
    settings = train_settings(cfg, multirun)
    capture = _use_cuda_graph(cfg, device)
    steps = len(batch_plan(data.n_train, settings.batch_size, settings.drop_last))
    learner = build_learner(cfg, model, steps, capture)
    objective = Objective.of(cfg.objective)
    stopping = cfg.trainer.early_stopping
    stopper = None
    if stopping.patience is not None:
        stopper = EarlyStopping(stopping.patience, stopping.min_delta, objective)
    member = Member(learner, cfg.trainer.seed, stopper=stopper, rng=rng)
    return Built(cfg, data, member, settings, capture, objective)


def choose_backward(built: Built) -> Learner:
    """`trainer.backward` for a job trained alone: its own learner, or its model trained by the
    hand-written step of `mnist_lab.train.stacked` as a stack of one (the same maths, faster per
    CPU epoch for small MLPs: docs/PERFORMANCE.md). `auto` takes it on the CPU only: on CUDA the
    autograd step captured as a CUDA graph is the measured fast path."""
    cfg, learner = built.cfg, built.member.learner
    mode = cfg.trainer.backward.value
    if mode == "manual" and built.capture:
        raise ConfigError(
            "trainer.backward",
            mode,
            "is not captured as a CUDA graph yet; add trainer.cuda_graph=off, or use auto",
        )
    if mode == "autograd" or not isinstance(learner, AutogradLearner):
        return learner  # a model with its own backward (scratch) keeps it
    if mode == "auto" and built.data.train_x.device.type != "cpu":
        return learner
    lean = stack([learner], _rngs([built]))
    if lean is None and mode == "manual":
        raise ConfigError(
            "trainer.backward",
            mode,
            "the hand-written step covers Linear/activation/Dropout MLPs with SGD, Adam or AdamW, "
            "without input dropout, max_norm, label smoothing or compile; use auto or autograd",
        )
    return lean or learner


def _rngs(built: list[Built]) -> list | None:
    """The members' dropout generators for the stacked step (None off the CPU: the device's own)."""
    found = [b.member.rng for b in built]
    return None if any(r is None for r in found) else found


def trainer_for(built: list[Built], stacked: bool = False) -> Trainer:
    """The loop for built jobs: a stack of them all (the batched launcher's), or one job alone
    with the step `trainer.backward` chooses."""
    if stacked:
        step = stack([b.member.learner for b in built], _rngs(built))
        if step is None:
            raise ValueError("these jobs cannot be stacked")
    else:
        (alone,) = built
        step = choose_backward(alone)
    first = built[0]
    return Trainer([b.member for b in built], first.data, first.settings, step, first.capture)


def build_trainer(cfg: DictConfig, multirun: bool = False) -> Trainer:
    """One job as a group of one, without hooks: for evaluation, tests and benchmarks."""
    return trainer_for([build(cfg, multirun)])


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def model_facts(model, data: DataTensors) -> dict:
    """What the record knows once the model is built."""
    device = data.train_x.device
    return {
        "param_count": count_parameters(model),
        "device": str(device),
        "device_name": _device_name(device),
        "threads": torch.get_num_threads(),  # torch's CPU threads while it trained
        "n_train": data.n_train,
        "n_val": len(data.val_y),
        "data": data.fingerprint,  # what the run read: per-file SHA-256 and counts, and an id
    }
