"""Two objectives to minimise, the Binh and Korn problem (our stand-in for the official Optuna
sweeper's multi-objective example): the study's result is a Pareto front."""

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="binh_korn_conf", config_name="config", version_base="1.3")
def binh_korn(cfg: DictConfig) -> tuple[float, float]:
    x, y = cfg.x, cfg.y
    return 4 * x**2 + 4 * y**2, (x - 5) ** 2 + (y - 5) ** 2


if __name__ == "__main__":
    binh_korn()
