"""The training device a config names, checked against this machine."""

from __future__ import annotations

import torch

from mnist_lab.errors import ConfigError


def resolve_device(spec: str) -> torch.device:
    """`auto` picks cuda, then mps, then cpu; an explicit device must exist on this machine."""
    allowed = "auto, cpu, cuda, cuda:N, mps"
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as e:
        raise ConfigError("trainer.device", spec, f"one of {allowed}") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                "trainer.device", spec, "no CUDA device on this machine; use auto or cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                "trainer.device",
                spec,
                f"this machine has {torch.cuda.device_count()} CUDA device(s)",
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.device", spec, "MPS is not available here; use auto or cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError("trainer.device", spec, f"one of {allowed}")
    return device
