"""Minimise w^2 + x^2 + y^2 + z^2 where code adds two parameters to the configured search space
(our stand-in for the official Optuna sweeper's custom-search-space example)."""

import hydra
from omegaconf import DictConfig
from optuna.trial import Trial


@hydra.main(config_path="custom_space_conf", config_name="config", version_base="1.3")
def four_d_sphere(cfg: DictConfig) -> float:
    return cfg.w**2 + cfg.x**2 + cfg.y**2 + cfg.z**2


def suggest_more(cfg: DictConfig, trial: Trial) -> None:
    """`z` within `z_near_x` of the sampled x, and `w` (a new key, hence `+w`) in [0, 1]."""
    x = trial.params["x"]
    trial.suggest_float("z", x - cfg.z_near_x, x + cfg.z_near_x)
    trial.suggest_float("+w", 0.0, 1.0)


if __name__ == "__main__":
    four_d_sphere()
