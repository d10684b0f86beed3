"""The device and CPU threads a job gets when it runs in one of a sweep's worker processes.

`hydra.sweeper.workers=N` runs an Optuna study in N processes that share the machine. The
sweeper launches every job of worker i with `++hydra.job.env_set.MNIST_LAB_WORKER='i'`, so the
job's own Hydra config names its worker, as it names its trial (docs/ARCHITECTURE.md, "Optuna
trial identity inside a job"); `hydra.sweeper.workers` and `hydra.sweeper.devices` are in the same
config. Reading them there rather than from `os.environ` means a variable left in a process by
an earlier job is never mistaken for a worker.

What a worker's job gets:
- `trainer.device=auto`: `hydra.sweeper.devices[i mod len]` when that list is given, else
  `cuda:(i mod #GPUs)` where there are GPUs, else what `auto` means alone (MPS, the CPU). An
  explicit `trainer.device` is used as written; with `hydra.sweeper.devices` it is refused
  (`check_devices`), so neither setting is silently dropped.
- torch's CPU threads: a share of the cores this process may use, so N workers never
  oversubscribe the machine (worker i of N over C cores: C // N, one more for the first C mod N
  workers; at least 1), divided among the jobs its launcher runs at once (`hydra.launcher.n_jobs`).
  Unless `OMP_NUM_THREADS` is set: then the user (or joblib, which sets it in its workers) has
  chosen the threads already.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mnist_lab.errors import ConfigError
from mnist_lab.train.device import resolve_device

# Each job of a worker carries the worker's index as hydra.job.env_set.<WORKER_ENV>.
WORKER_ENV = "MNIST_LAB_WORKER"


@dataclass(frozen=True)
class Share:
    """A worker's place among the sweep's workers, as its job's Hydra config states it."""

    index: int
    workers: int
    devices: tuple[str, ...] | None
    parallel_jobs: int  # jobs the worker's launcher runs at once (joblib's n_jobs; else 1)


def current() -> Share | None:
    """This job's worker, or None outside a sweep worker (a single run, a plain multirun)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    index = hydra_cfg.job.get("env_set", {}).get(WORKER_ENV)
    sweeper = hydra_cfg.get("sweeper")
    if index is None or sweeper is None:
        return None
    devices = sweeper.get("devices")
    n_jobs = hydra_cfg.get("launcher", {}).get("n_jobs")
    return Share(
        index=int(index),
        workers=int(sweeper.get("workers") or 1),
        devices=tuple(str(d) for d in devices) if devices else None,
        parallel_jobs=n_jobs if isinstance(n_jobs, int) and n_jobs > 0 else 1,
    )


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity mask: taskset, cgroup cpusets, Slurm)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_threads(index: int, workers: int, cores: int, parallel_jobs: int = 1) -> int:
    """Worker `index`'s share of `cores` among `workers`, split among its `parallel_jobs`."""
    share = cores // workers + (1 if index % workers < cores % workers else 0)
    return max(1, share // parallel_jobs)


def check_devices(spec: Any, devices: Sequence[str] | None) -> None:
    """Refuse `hydra.sweeper.devices` that would be dropped or that this machine lacks."""
    if not devices:
        return
    if spec != "auto":
        shown = "no trainer.device" if spec is None else f"trainer.device={spec}"
        raise ConfigError(
            "hydra.sweeper.devices",
            list(devices),
            f"gives each worker its device where trainer.device=auto, and this job has {shown}",
        )
    for device in devices:
        try:
            resolve_device(str(device))
        except ConfigError as e:
            raise ConfigError("hydra.sweeper.devices", list(devices), e.allowed) from None


def worker_device(spec: str, share: Share) -> str:
    """What `trainer.device` means for this worker's job (see the module's text)."""
    if spec != "auto":
        check_devices(spec, share.devices)  # refused with a device list: it would be dropped
        return spec
    if share.devices:
        return share.devices[share.index % len(share.devices)]
    if torch.cuda.is_available():
        return f"cuda:{share.index % torch.cuda.device_count()}"
    return spec


def device_for(spec: str) -> torch.device:
    """The device `trainer.device` names for this job: inside a sweep worker, its worker's."""
    share = current()
    return resolve_device(spec if share is None else worker_device(spec, share))


def place(spec: str) -> torch.device:
    """The device a job trains on; inside a sweep worker, its device and CPU-thread share."""
    device = device_for(spec)
    share = current()
    if share is not None and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(
            cpu_threads(share.index, share.workers, usable_cores(), share.parallel_jobs)
        )
    return device


def identity() -> dict | None:
    """`{"index": i, "workers": N}` for the record's `worker` field; None outside a worker."""
    share = current()
    return None if share is None else {"index": share.index, "workers": share.workers}
