"""Train one MLP on MNIST from the composed config: `python experiments/run.py [overrides] [-m]`."""

import hydra

from mnist_lab.app import cli
from mnist_lab.config.schema import register
from mnist_lab.job.task import project_task, run_task

register()  # the schema and the resolvers conf/ uses, before Hydra composes


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
@project_task  # `run_task` and nothing more: the batched launcher may stack these jobs
def main(cfg):
    return run_task(cfg)


if __name__ == "__main__":
    cli.run(main)
