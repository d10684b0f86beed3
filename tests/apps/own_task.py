"""An app of its own over the project's conf/: a `@hydra.main` function that is not the project's
task function (it trains nothing; it notes its job and returns 42 + seed). Every launcher, the
batched one included, must call it once per job, and a sweeper must get what it returns.

    python tests/apps/own_task.py -m seed=0,1 epochs=1 trainer.device=cpu hydra/launcher=batched
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from mnist_lab.config.schema import CONF_DIR, register

CALLS: list[int] = []  # the seed of each call, for tests that run the app in-process

register()


def task(cfg: DictConfig) -> float:
    CALLS.append(cfg.seed)
    print(f"own task called: seed={cfg.seed}", flush=True)
    return 42.0 + cfg.seed


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    return task(cfg)


if __name__ == "__main__":
    main()
