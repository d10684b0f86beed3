"""Sweep jobs trained together: a group of jobs shares one stacked step, each stays its own job.

The batched launcher (`hydra/launcher=batched`) composes a sweep's jobs, asks `group_key` which of
them can share a step, and hands each group to `train_group` with one `Job` per member: the job's
config and a context manager that makes it the current Hydra job (its HydraConfig, log file and
environment). Everything a single run does per job happens here per member, inside its context,
through the task's own functions: its record (`RecordedRun`), its trainer as `build_trainer` makes
it (model, seed, optimizer, schedule, batch order), its epoch hooks (record, Optuna reporter), its
outcome (`RecordedRun.conclude`). Only the step is shared: `mnist_lab.train.stacked` trains the members'
models as one, and the epoch loop below runs it, with per-member rows, hooks and stops.

A member whose hook raises (Optuna prunes it), whose loss becomes NaN or infinite, or whose hook
fails stops alone at the end of that epoch: it is dropped from the stack, its numbers stay as they
were, and no other member's numbers change (members never mix: every product is per member).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf

from mnist_lab.config.checks import parse_switch
from mnist_lab.config.knobs import check_knobs
from mnist_lab.data.dataset import dataset_facts
from mnist_lab.job.checks import check_config
from mnist_lab.job.task import (
    RecordedRun,
    build_learner,
    build_trainer,
    epoch_hooks,
    model_facts,
)
from mnist_lab.job.weights import WeightKeeper, resolve_mode
from mnist_lab.models.build import build_model
from mnist_lab.records.format import EVAL_KEYS
from mnist_lab.signals import raise_pending
from mnist_lab.train import stacked
from mnist_lab.train.cuda_graph import GraphEpoch
from mnist_lab.train.device import resolve_device
from mnist_lab.train.loop import Diverged, Trainer, divergence, eager_epoch, log_epoch

log = logging.getLogger(__name__)

FLOAT_BYTES = 4


@dataclass
class Job:
    """A member as the launcher hands it over: its task config and its job context."""

    cfg: DictConfig
    context: Callable[[], AbstractContextManager]


def _probe(cfg: DictConfig) -> stacked.Member | None:
    """The job's model and optimizer as a stack member (built on the CPU: only shapes matter)."""
    check_config(cfg)
    trainer = cfg.trainer
    if (
        trainer.compile
        or trainer.log_interval
        or parse_switch("trainer.progress", trainer.progress) is True
    ):
        return None  # per-step output or compilation: features of the single-model loop
    if parse_switch("trainer.save_figures", trainer.save_figures) is True:
        return None
    if trainer.label_smoothing or trainer.max_norm is not None:
        return None  # not in the stacked maths
    if trainer.early_stopping.patience is not None:
        return None  # a per-member stop rule the group loop does not apply
    facts = dataset_facts(cfg.data)
    model = build_model(cfg.model, torch.device("cpu"), facts.in_features, facts.n_classes)
    return stacked.member_of(build_learner(cfg, model, 1, capture=False))


def group_key(cfg: DictConfig) -> str | None:
    """Jobs with equal keys can be trained as one stack; None: this job runs on its own.

    Equal: model shape and loss, optimizer class, device, epochs, every data setting (batch size
    included) and every trainer setting but the seed. Free to differ: seed (initialisation, batch
    order, dropout masks), learning rate and schedule, optimizer settings, dropout rate.
    """
    try:
        member = _probe(cfg)
        device = str(resolve_device(cfg.trainer.device))
    except Exception:  # the job's own run reports what is wrong with it
        return None
    if member is None:
        return None
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True, enum_to_str=True)
    trainer.pop("seed")
    data = OmegaConf.to_container(cfg.data, resolve=True, enum_to_str=True)
    key = {"shape": member.shape.__dict__, "device": device, "trainer": trainer, "data": data}
    return json.dumps(key, sort_keys=True, default=str)


def bytes_per_member(cfg: DictConfig) -> int:
    """Memory one more member of a stack needs: parameters, gradients, optimizer state and the
    activations of a training step and of an evaluation chunk (float32)."""
    member = _probe(cfg)
    sizes = member.shape.sizes
    params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    state = 2 if member.shape.optimizer == "adam" else 1  # momentum buffer, or Adam's two moments
    hidden = sum(sizes[1:])
    train = cfg.data.batch_size * (sizes[0] + 4 * hidden)  # inputs, pre/post activation, grads
    evaluation = cfg.data.eval_batch_size * 2 * hidden
    return FLOAT_BYTES * (params * (2 + state) + train + evaluation)


class GroupTrainer:
    """The trainer's epoch loop for the members' trainers at once, through one stacked learner."""

    def __init__(self, trainers: list[Trainer], rngs: list | None):
        first = trainers[0]
        self.trainers = trainers
        self.data, self.plan = first.data, first.plan
        self.settings = first.settings
        self.learner = stacked.stack([t.learner for t in trainers], rngs)
        if self.learner is None:
            raise ValueError("these jobs cannot be stacked")
        self.capture = first.graph is not None  # build_trainer decided: CUDA and cuda_graph
        self.alive = list(range(len(trainers)))  # members still training, in stack order
        self.graph = self._graph()

    def _graph(self) -> GraphEpoch | None:
        if not self.capture:
            return None
        d = self.data
        b = self.settings.batch_size
        return GraphEpoch(self.learner, d.train_x, d.train_y, b, 0, members=(len(self.alive),))

    def train_epoch(self, epoch: int) -> tuple[list, list]:
        """Each member's mean training loss and accuracy over the epoch."""
        d, plan = self.data, self.plan
        order = torch.stack([self.trainers[k].epoch_order() for k in self.alive])
        first = (epoch - 1) * len(plan)
        if self.graph is not None:
            loss_sum, correct = self.graph.run_epoch(order, plan, first)
        else:
            loss_sum, correct = eager_epoch(self.learner, d.train_x, d.train_y, order, plan, first)
        seen = plan[-1][1]
        return (loss_sum / seen).tolist(), (correct.double() / seen).tolist()

    def _evaluate(self) -> list[dict]:
        start = time.perf_counter()
        d, b, lrn = self.data, self.settings.eval_batch_size, self.learner
        columns = (*lrn.evaluate(d.val_x, d.val_y, b), *lrn.evaluate(d.test_x, d.test_y, b))
        seconds = time.perf_counter() - start
        rows = [dict(zip(EVAL_KEYS, values, strict=True)) for values in zip(*columns, strict=True)]
        for row in rows:
            row["eval_seconds"] = seconds
        return rows

    def fit(
        self, on_row: Callable[[int, dict], None], on_stop: Callable[[int, BaseException], None]
    ):
        """Epoch 0, then each epoch; `on_row(member, row)` may raise to stop that member alone."""
        nan = math.nan
        initial = self._evaluate()
        self._emit(
            [
                {"epoch": 0, "train/loss": nan, "train/acc": nan, "lr": nan, **r, "seconds": 0.0}
                for r in initial
            ],
            [None] * len(initial),
            on_row,
            on_stop,
        )
        s = self.settings
        for epoch in range(1, s.epochs + 1):
            if not self.alive:
                return
            raise_pending()  # a CUDA-graph epoch has no step loop here
            start = time.perf_counter()
            losses, accs = self.train_epoch(epoch)
            lrs = self.learner.member_lrs(epoch * len(self.plan) - 1)
            seconds = time.perf_counter() - start
            diverged = [not math.isfinite(loss) for loss in losses]
            evaluate = [s.eval_every_epoch or epoch == s.epochs or d for d in diverged]
            evals = self._evaluate() if any(evaluate) else None
            rows, whys = [], []
            for i in range(len(self.alive)):
                row = {"epoch": epoch, "train/loss": losses[i], "train/acc": accs[i], "lr": lrs[i]}
                row["seconds"] = seconds
                row.update(evals[i] if evaluate[i] else dict.fromkeys(EVAL_KEYS, nan))
                why = divergence(row, evaluate[i], len(self.data.val_y) > 0)
                row["last_epoch"] = epoch == s.epochs or why is not None
                rows.append(row)
                whys.append(why)
            self._emit(rows, whys, on_row, on_stop)

    def _emit(self, rows, whys, on_row, on_stop) -> None:
        """Hands each member its row; a member whose row diverged, or whose hook raised, stops."""
        keep = []
        for i, (k, row, why) in enumerate(zip(self.alive, rows, whys, strict=True)):
            try:
                try:
                    on_row(k, row)
                except Exception:
                    if why is None:
                        raise  # else, as in Trainer.fit, the divergence is what ends the member
                if why is not None:
                    raise Diverged(why)
            except KeyboardInterrupt:
                raise
            except BaseException as e:  # pruned, diverged, or a hook that failed: this member only
                on_stop(k, e)
                continue
            keep.append(i)
        if len(keep) < len(self.alive):
            self.alive = [self.alive[i] for i in keep]
            if self.alive:
                self.learner.keep_only(keep)
                self.graph = self._graph()


def _settle(job: Job, run: RecordedRun, error: BaseException | None, value: float = math.nan):
    """The member's outcome under the task's policy: its return value, or the exception it raises
    (a pruned trial). A KeyboardInterrupt propagates once the record says so."""
    with job.context():
        try:
            return run.conclude(error, value)
        except KeyboardInterrupt:
            raise
        except BaseException as e:
            return e


def train_group(jobs: list[Job], group: dict) -> list:
    """Train the jobs as one stack; returns each job's return value, or the exception it raised.

    `group` goes into every member's record as `batched` (with `k`, the stack's size).
    """
    runs: list[RecordedRun | None] = [None] * len(jobs)
    outcomes: list = [None] * len(jobs)
    trainers, hooks, members, rngs, keepers = [], [], [], [], []
    facts = {"batched": {"k": len(jobs), **group}}
    try:
        for j, job in enumerate(jobs):
            with job.context():
                runs[j] = run = RecordedRun(job.cfg, **facts)
                try:
                    check_knobs(job.cfg, run.record.facts.get("overrides", []))
                    trainer = build_trainer(job.cfg, multirun=True, stackable=True)
                    # The single run's dropout masks come from the global generator after the model
                    # was built: each member continues that stream in a generator of its own.
                    rng = torch.Generator().set_state(torch.get_rng_state())
                    run.record.facts.update(model_facts(trainer.learner.model, trainer.data))
                    # The member's model holds views into the stack: its weights save as alone.
                    mode = resolve_mode(job.cfg.trainer.save_weights.value, multirun=True)
                    keeper = WeightKeeper(trainer.learner.model, mode)
                    job_hooks = [*epoch_hooks(job.cfg, run.record), keeper]
                except KeyboardInterrupt:
                    raise
                except BaseException as e:
                    outcomes[j] = _settle(job, run, e)
                    continue
            trainers.append(trainer)
            members.append(j)
            rngs.append(rng)
            keepers.append(keeper)
            hooks.append(job_hooks)
        if not members:
            return outcomes
        on_cpu = trainers[0].data.train_x.device.type == "cpu"
        group_trainer = GroupTrainer(trainers, rngs if on_cpu else None)

        def on_row(k: int, row: dict) -> None:
            with jobs[members[k]].context():
                log_epoch(row)
                for hook in hooks[k]:
                    hook(row["epoch"], row)

        def on_stop(k: int, error: BaseException) -> None:
            j = members[k]
            outcomes[j] = _settle(jobs[j], runs[j], error)

        group_trainer.fit(on_row, on_stop)
        for k in group_trainer.alive:
            j = members[k]
            record = runs[j].record
            with jobs[j].context():
                record.facts["weights"] = keepers[k].save(
                    record.run_dir, record.summary()["epochs_run"]
                )
            value = record.summary()["final"]["val/acc"]
            outcomes[j] = _settle(jobs[j], runs[j], None, value)
        return outcomes
    # Ctrl-C, or a fault of the shared step: every member's record says so.
    except BaseException as e:
        if not isinstance(e, KeyboardInterrupt):
            log.error("batched training failed: %s", e, exc_info=True)
        for j, run in enumerate(runs):
            if run is not None and outcomes[j] is None:
                try:
                    outcomes[j] = _settle(jobs[j], run, e)
                except KeyboardInterrupt:
                    pass
        if isinstance(e, KeyboardInterrupt):
            raise
        return outcomes


def free_memory(device: torch.device) -> int:
    """Bytes the device can still give: free GPU memory, or the host's available RAM."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:  # Linux: MemAvailable counts reclaimable caches, unlike the free page count
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def capacity(cfg: DictConfig, memory_fraction: float, max_batch: int | None) -> int:
    """How many members of this job's group fit in `memory_fraction` of the free memory (>= 1)."""
    device = resolve_device(cfg.trainer.device)
    fits = int(free_memory(device) * memory_fraction // bytes_per_member(cfg))
    return max(1, min(fits, max_batch) if max_batch else fits)
