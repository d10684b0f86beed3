"""Hydra callback: after every multirun, summarise the sweep and refresh the results root's tables.

Hydra builds it from `hydra.callbacks.summarize` in conf/config.yaml. That node is the one source of truth for the summary's settings:
the callback receives them as arguments, and experiments/summarize.py reads the same node
(`configured_settings`) for its option defaults. A summary is a convenience, so any error here is
logged in one line and swallowed: it never turns a finished sweep into a failure.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from mnist_lab.errors import LabError

log = logging.getLogger(__name__)

NODE = "hydra.callbacks.summarize"


def names(value: str | Sequence[str]) -> list[str]:
    """`hidden,lr` (command line) or a list (YAML) as a list of column names."""
    if isinstance(value, str):
        return [name.strip() for name in value.split(",") if name.strip()]
    return [str(name) for name in value]


class SummarizeCallback(Callback):
    """Writes summary.csv, grid.csv, summary.md and the PNGs into the sweep dir and results root."""

    def __init__(
        self,
        results_root: str,
        by: Sequence[str],
        metric: str,
        k: int,
        target: float,
        heatmap: Sequence[str],
        plots: bool,
    ) -> None:
        self.results_root = Path(results_root)
        self.options = {
            "by": names(by),
            "metric": str(metric),
            "k": int(k),
            "target": float(target),
            "heatmap": names(heatmap),
            "plots": bool(plots),
        }

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        try:
            sweep_dir = Path(str(config.hydra.sweep.dir))
        except Exception as e:  # an unresolvable sweep dir must not fail the sweep either
            log.error("summary skipped: no sweep directory (%s)", e)
            return
        self._summarize(sweep_dir)
        root = self.results_root
        if not root.is_dir():
            log.info("results root %s does not exist here: only the sweep was summarised", root)
        elif root.resolve() != sweep_dir.resolve():
            self._summarize(root)

    def _summarize(self, folder: Path) -> None:
        try:
            from mnist_lab.summary import summarize  # pandas and matplotlib only at the end

            summarize([folder], folder, **self.options)
        except Exception as e:
            log.error("could not summarise %s: %s", folder, e)
            log.debug("summary traceback", exc_info=True)


def configured_settings() -> dict:
    """The summarize node of the composed conf/config.yaml (without `_target_`)."""
    from hydra import compose, initialize_config_dir

    from mnist_lab.config import REPO_ROOT  # registers the schema and resolvers

    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True)
    node = OmegaConf.select(cfg, NODE)
    if node is None:
        raise LabError(f"conf/config.yaml has no {NODE} node")
    settings = OmegaConf.to_container(node, resolve=True)
    settings.pop("_target_", None)
    return settings
