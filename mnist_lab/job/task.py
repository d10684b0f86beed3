"""The Hydra task: composed config in, trained model and run record out, validation accuracy back.

Failure policy (see docs/ARCHITECTURE.md): every run leaves a record. In a single run a bad value
ends the process with one line naming the key; in a multirun the job is recorded `failed` (or
`diverged`) and returns NaN, so the other jobs of the sweep still run and a sweeper sees a failure.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from mnist_lab.config.checks import parse_switch
from mnist_lab.config.knobs import check_knobs
from mnist_lab.data.dataset import load_data
from mnist_lab.errors import ConfigError, LabError, OutputError
from mnist_lab.job import trial_reporting, worker_share
from mnist_lab.job.checks import check_config
from mnist_lab.job.weights import WeightKeeper, resolve_mode
from mnist_lab.models.build import build_model, count_parameters
from mnist_lab.records.run_record import RunRecord
from mnist_lab.signals import install_in_worker, stop_status
from mnist_lab.train.learners import AutogradLearner, OwnBackward, ScratchLearner
from mnist_lab.train.loop import Diverged, Trainer, TrainSettings, batch_plan
from mnist_lab.train.schedule import lr_table
from mnist_lab.train.stacked import stack

log = logging.getLogger(__name__)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def _is_pruned(error: BaseException) -> bool:
    optuna = sys.modules.get("optuna")
    return optuna is not None and isinstance(error, optuna.TrialPruned)


def _set_determinism(seed: int, deterministic: bool) -> None:
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if torch.are_deterministic_algorithms_enabled() != deterministic:
        torch.use_deterministic_algorithms(deterministic)  # ~0.3 s a call: only when it changes
    torch.manual_seed(seed)


def _use_cuda_graph(cfg: DictConfig, device: torch.device) -> bool:
    """Whether the device and `trainer.cuda_graph` allow capturing the step."""
    mode = parse_switch("trainer.cuda_graph", cfg.trainer.cuda_graph)
    if mode is True and device.type != "cuda":
        log.warning("trainer.cuda_graph=on needs a CUDA device; training eagerly on %s", device)
    return mode is not False and device.type == "cuda"


def build_learner(cfg: DictConfig, model, steps_per_epoch: int, capture: bool):
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


def choose_backward(cfg: DictConfig, learner, device: torch.device, capture: bool):
    """`trainer.backward`: the learner itself, or its model trained by the hand-written step of
    `mnist_lab.train.stacked` as a stack of one (same maths; about 1.6x faster per CPU epoch for small
    MLPs, docs/PERFORMANCE.md). `auto` takes it on the CPU only: on CUDA the autograd step
    captured as a CUDA graph is the measured fast path."""
    mode = cfg.trainer.backward.value
    if mode == "manual" and capture:
        raise ConfigError(
            "trainer.backward",
            mode,
            "is not captured as a CUDA graph yet; add trainer.cuda_graph=off, or use auto",
        )
    if mode == "autograd" or not isinstance(learner, AutogradLearner):
        return learner  # a model with its own backward (scratch) keeps it
    if mode == "auto" and device.type != "cpu":
        return learner
    # On the CPU, dropout masks come from the global generator, as nn.Dropout draws them.
    lean = stack([learner], [torch.default_generator] if device.type == "cpu" else None)
    if lean is None and mode == "manual":
        raise ConfigError(
            "trainer.backward",
            mode,
            "the hand-written step covers Linear/activation/Dropout MLPs with SGD, Adam or AdamW, "
            "without input dropout, max_norm, label smoothing or compile; use auto or autograd",
        )
    return lean or learner


def train_settings(cfg: DictConfig, multirun: bool) -> TrainSettings:
    progress = parse_switch("trainer.progress", cfg.trainer.progress)
    return TrainSettings(
        epochs=cfg.trainer.epochs,
        batch_size=cfg.data.batch_size,
        shuffle=cfg.data.shuffle,
        drop_last=cfg.data.drop_last,
        seed=cfg.trainer.seed,
        eval_batch_size=cfg.data.eval_batch_size,
        patience=cfg.trainer.early_stopping.patience,
        min_delta=cfg.trainer.early_stopping.min_delta,
        eval_every_epoch=cfg.trainer.eval_every_epoch,
        log_interval=cfg.trainer.log_interval,
        progress=(sys.stderr.isatty() and not multirun) if progress == "auto" else progress,
    )


def build_trainer(cfg: DictConfig, multirun: bool = False, stackable: bool = False) -> Trainer:
    """Validate the config, load the data, build model, learner and (on CUDA) the graph runner.

    `stackable`: keep the model's own learner (the batched launcher stacks the members' learners
    itself), whatever `trainer.backward` says.
    """
    check_config(cfg)
    device = worker_share.place(cfg.trainer.device)  # a sweep worker's device and threads
    _set_determinism(cfg.trainer.seed, cfg.trainer.deterministic)
    torch.set_float32_matmul_precision(cfg.trainer.matmul_precision.value)
    data = load_data(cfg.data, device)
    model = build_model(cfg.model, device, data.facts.in_features, data.facts.n_classes)
    settings = train_settings(cfg, multirun)
    steps = len(batch_plan(data.n_train, settings.batch_size, settings.drop_last))
    capture = _use_cuda_graph(cfg, device)
    learner = build_learner(cfg, model, steps, capture)
    if not stackable:
        learner = choose_backward(cfg, learner, device, capture)
    graph = None
    if capture:
        from mnist_lab.train.cuda_graph import GraphEpoch

        graph = GraphEpoch(
            learner, data.train_x, data.train_y, settings.batch_size, settings.log_interval
        )
    return Trainer(learner, data, settings, graph)


def epoch_hooks(cfg: DictConfig, record: RunRecord) -> list:
    """What sees every epoch's row: the record and, inside an Optuna trial, its reporter."""
    hooks = [record.add_epoch]
    reporter = trial_reporting.epoch_reporter(cfg.trainer.epochs)
    if reporter is not None:
        hooks.append(reporter)
    return hooks


def train(cfg: DictConfig, record: RunRecord, multirun: bool) -> float:
    """Build, fit with the record and the pruning reporter as hooks; returns final val accuracy."""
    check_knobs(cfg, record.facts.get("overrides", []))
    trainer = build_trainer(cfg, multirun)
    model, data = trainer.learner.model, trainer.data
    record.facts.update(model_facts(model, data))
    record.facts["backward"] = trainer.learner.backward
    keeper = WeightKeeper(model, resolve_mode(cfg.trainer.save_weights.value, multirun))
    trainer.fit([*epoch_hooks(cfg, record), keeper])
    record.facts["stopped_early"] = trainer.stopped_early
    # Written before the record says `completed`, so a record never names a missing file.
    record.facts["weights"] = keeper.save(record.run_dir, record.summary()["epochs_run"])
    if trainer.graph is not None:
        record.facts["cuda_graph"] = trainer.graph.graph is not None
    figures = parse_switch("trainer.save_figures", cfg.trainer.save_figures)
    if figures is True or (figures == "auto" and not multirun):
        from mnist_lab.job.figures import save_figures

        save_figures(model, data, record.run_dir)
    return record.summary()["final"]["val/acc"]


def run_facts(cfg: DictConfig, hydra_cfg) -> dict:
    """What the record knows before training: where and how the job was launched, its config."""
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    return {
        "run_dir": str(Path(hydra_cfg.runtime.output_dir)),
        "job": {
            "name": hydra_cfg.job.name,
            "num": hydra_cfg.job.get("num") if multirun else None,
            "sweep_dir": str(Path(hydra_cfg.sweep.dir).resolve()) if multirun else None,
            "multirun": multirun,
        },
        "trial": trial_reporting.trial_identity(),
        "worker": worker_share.identity(),  # {index, workers} in a sweep's worker process
        "overrides": list(hydra_cfg.overrides.task),
        # The option picked in each config group (model=resmlp, optimizer=adam, ...).
        "choices": {
            group: option
            for group, option in hydra_cfg.runtime.choices.items()
            if not group.startswith("hydra/")
        },
        "config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        "torch_version": torch.__version__,
        # Known once the model is built (model_facts); null in the record of a run that failed before.
        "param_count": None,
        "device": None,
        "device_name": None,
        "threads": None,
        "backward": None,  # autograd | manual (mnist_lab.train.stacked's step) | own (the model's)
        "stopped_early": None,
        "weights": None,  # {"best", "final"}: the weight files a completed run wrote
    }


def model_facts(model, data) -> dict:
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


class RecordedRun:
    """One job's record from its start to its outcome, for the current Hydra job.

    `conclude` applies the failure policy (docs/ARCHITECTURE.md) to how the training ended: it
    returns the value the task returns, or raises what the job must raise. The batched launcher
    (mnist_lab.job.group) gives each member of a stack one, so members follow the same policy.
    """

    def __init__(self, cfg: DictConfig, **facts):
        hydra_cfg = HydraConfig.get()
        self.multirun = hydra_cfg.mode == RunMode.MULTIRUN
        self.run_dir = Path(hydra_cfg.runtime.output_dir)
        self.record = RunRecord(self.run_dir, {**run_facts(cfg, hydra_cfg), **facts})
        self.started = time.perf_counter()

    def conclude(self, error: BaseException | None = None, value: float = math.nan) -> float:
        record, run_dir, multirun = self.record, self.run_dir, self.multirun
        wall = time.perf_counter() - self.started
        if error is None:
            record.finish("completed", wall_seconds=wall)
            return value
        if isinstance(error, Diverged):
            record.finish("diverged", str(error), wall_seconds=wall)
            log.error("run diverged: %s (record in %s)", error, run_dir)
            if not multirun:  # docs/ARCHITECTURE.md: a single run that diverges exits non-zero
                raise SystemExit(3) from None
            return math.nan
        e = error
        reason = str(e) if isinstance(e, LabError) else f"{type(e).__name__}: {e}"
        status = "pruned" if _is_pruned(e) else "failed"
        if isinstance(e, KeyboardInterrupt):
            status, _ = stop_status(e)
            reason = f"stopped by {e}" if str(e) else status
        # Bad input found before epoch 0: `refused`, never a result; the results tables skip it.
        refused = isinstance(e, LabError) and not record.rows
        try:
            record.finish(status, reason, wall_seconds=wall, refused=refused)
        except OutputError:
            if not isinstance(e, KeyboardInterrupt):
                raise
        if status == "pruned" or isinstance(e, KeyboardInterrupt):
            raise e
        if multirun:  # bad input: one line; anything else is a bug worth its traceback in run.log
            exc_info = (type(e), e, e.__traceback__) if not isinstance(e, LabError) else False
            log.error("job failed: %s (record in %s)", reason, run_dir, exc_info=exc_info)
            return math.nan
        if isinstance(e, LabError):
            log.error("%s", reason)
            raise SystemExit(2) from None
        raise e


def run_task(cfg: DictConfig) -> float:
    install_in_worker()
    try:
        run = RecordedRun(cfg)
        try:
            value = train(cfg, run.record, run.multirun)
        except BaseException as e:
            return run.conclude(e)
        return run.conclude(None, value)
    except OutputError as e:  # the record cannot be written: one line; a sweep goes on
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            log.error("%s", e)
            raise SystemExit(2) from None
        log.error("job failed: %s", e)
        return math.nan
