"""tests/apps/fake_task.py's task run as experiments/run.py runs the real one: through
`mnist_lab.app.cli.run`, so signals and errors end in one line and a documented exit status (the
sweep-worker tests start it as a command)."""

from __future__ import annotations

import hydra
from fake_task import task  # this folder is on sys.path when the file runs as a script
from omegaconf import DictConfig

from mnist_lab.app import cli


@hydra.main(config_path="conf", config_name="fake", version_base="1.3")
def main(cfg: DictConfig):
    return task(cfg)


if __name__ == "__main__":
    cli.run(main)
