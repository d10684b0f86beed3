"""Which sweep jobs can train together as one stack, and how many fit.

The batched launcher (`hydra/launcher=batched`) composes a sweep's jobs, asks `group_key` which of
them can share the hand-written stacked step (`mnist_lab.train.stacked`), splits each group by
`capacity`, and hands each stack to `mnist_lab.job.task.run_jobs`: the same lifecycle and epoch
loop as a job run alone, so each member's record is the one it would have had alone.
"""

from __future__ import annotations

import json
import os

import torch
from omegaconf import DictConfig, OmegaConf

from mnist_lab.config.checks import parse_switch
from mnist_lab.data.dataset import dataset_facts
from mnist_lab.job.build import build_learner
from mnist_lab.job.checks import check_config
from mnist_lab.job.worker_share import device_for
from mnist_lab.models.build import build_model
from mnist_lab.train import stacked

FLOAT_BYTES = 4


def _probe(cfg: DictConfig) -> stacked.Member | None:
    """The job's model and optimizer as a stack member (built on the CPU: only shapes matter)."""
    check_config(cfg)
    trainer = cfg.trainer
    if trainer.log_interval or parse_switch("trainer.progress", trainer.progress) is True:
        return None  # per-step output: a feature of a model trained alone
    if trainer.backward.value == "autograd":
        return None  # its user asked for autograd + torch.optim
    facts = dataset_facts(cfg.data)
    model = build_model(cfg.model, torch.device("cpu"), facts.in_features, facts.n_classes)
    return stacked.member_of(build_learner(cfg, model, 1, capture=False))


def group_key(cfg: DictConfig) -> str | None:
    """Jobs with equal keys can be trained as one stack; None: this job runs on its own.

    Equal: model shape and loss, optimizer class, device, epochs, every data setting (batch size
    included) and every trainer setting but the seed. Free to differ: seed (initialisation, batch
    order, dropout masks), learning rate and schedule, optimizer settings, dropout rate, objective.
    """
    try:
        member = _probe(cfg)
        device = str(device_for(cfg.trainer.device))
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
    device = device_for(cfg.trainer.device)
    fits = int(free_memory(device) * memory_fraction // bytes_per_member(cfg))
    return max(1, min(fits, max_batch) if max_batch else fits)
