"""The batched launcher's config, registered in Hydra's ConfigStore as `hydra/launcher: batched`."""

# No `from __future__ import annotations`: Hydra's plugin scan executes this module without
# registering it in sys.modules, where dataclasses would look string annotations up.
from dataclasses import dataclass

from hydra.core.config_store import ConfigStore

LAUNCHER_TARGET = "hydra_plugins.mnist_lab_batched_launcher.batched_launcher.BatchedLauncher"


@dataclass
class BatchedLauncherConf:
    _target_: str = LAUNCHER_TARGET
    # Most members trained as one stack (null: as many as fit in memory); larger groups are split.
    max_batch: int | None = 64
    # Share of the free memory (GPU memory on CUDA, available RAM on the CPU) a stack may plan to
    # use; its size is capped so that its estimated parameters, optimizer state and activations fit.
    memory_fraction: float = 0.5


def register() -> None:
    ConfigStore.instance().store(
        group="hydra/launcher",
        name="batched",
        node=BatchedLauncherConf,
        provider="mnist_lab_batched_launcher",
    )


register()
