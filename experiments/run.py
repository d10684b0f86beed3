"""Train one MLP on MNIST from the composed config: `python experiments/run.py [overrides] [-m]`."""

import hydra

import mnist_lab.config.schema  # noqa: F401  (registers the schema and resolvers before composition)
from mnist_lab.app import cli
from mnist_lab.job.task import run_task


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg) -> float:
    return run_task(cfg)


if __name__ == "__main__":
    cli.run(main)
