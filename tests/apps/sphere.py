"""Minimise x^2 + y^2 (our stand-in for the official Optuna sweeper's sphere example).

`error=true` makes every job raise, to exercise the failure policy.
"""

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="sphere_conf", config_name="config", version_base="1.3")
def sphere(cfg: DictConfig) -> float:
    if cfg.error:
        raise RuntimeError("this job was asked to fail (error=true)")
    return cfg.x**2 + cfg.y**2


if __name__ == "__main__":
    sphere()
