"""Hydra callback: after every multirun, summarise the sweep, print its grid, refresh results/.

Hydra builds it from `hydra.callbacks.summarize` in conf/config.yaml. That node is the one source
of truth for the summary's settings: the callback receives them as arguments, and
experiments/summarize.py reads the same node (`configured_settings`) for its option defaults. A
summary is a convenience, so any error here is logged in one line and swallowed: it never turns a
finished sweep into a failure.
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


TOP_ROWS = 10  # rows of the sweep's grid printed at the end of a multirun


def names(value: str | Sequence[str] | None) -> list[str] | None:
    """`hidden,lr` (command line) or a list (YAML) as a list of column names; None stays None
    (the grid's rows are then the keys that differ among the runs)."""
    if value is None:
        return None
    if isinstance(value, str):
        return [name.strip() for name in value.split(",") if name.strip()]
    return [str(name) for name in value]


class SummarizeCallback(Callback):
    """Writes summary.csv, grid.csv, summary.md and the PNGs into the sweep dir and results root."""

    def __init__(
        self,
        results_root: str,
        by: Sequence[str] | None,
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
        result = self._summarize(sweep_dir)
        root = self.results_root
        if not root.is_dir():
            log.info("results root %s does not exist here: only the sweep was summarised", root)
        elif root.resolve() != sweep_dir.resolve():
            self._summarize(root)
        if result is not None:
            print(terminal_report(result, sweep_dir, root), flush=True)

    def _summarize(self, folder: Path):
        try:
            from mnist_lab.results.summary import summarize

            return summarize([folder], folder, **self.options)
        except Exception as e:
            log.error("could not summarise %s: %s", folder, e)
            log.debug("summary traceback", exc_info=True)
            return None


def terminal_report(result, sweep_dir: Path, root: Path) -> str:
    """The sweep's grid (best rows on validation first), its best row, and where the files are."""
    from mnist_lab.results.summary import top_rows

    lines = [""]
    for section in result.sections:
        table, best = top_rows(section, result.metric, TOP_ROWS)
        if table is None:
            lines += [f"{section.name}: no completed runs", ""]
            continue
        shown = (
            f"top {len(table)} of {len(section.grid)} rows"
            if len(table) < len(section.grid)
            else f"{len(table)} rows"
        )
        lines += [
            f"{section.name} ({shown}, best on validation first):",
            table.to_markdown(index=False, disable_numparse=True),
            "",
        ]
        lines.append(f"best on validation: {best}")
    lines.append(f"files: {sweep_dir / 'summary.md'} (and summary.csv, grid.csv, PNGs beside it)")
    if root.is_dir() and root.resolve() != sweep_dir.resolve():
        lines.append(f"all of {root}: {root / 'summary.md'}")
    return "\n".join(lines)


def configured_settings() -> dict:
    """The summarize node of conf/config.yaml (without `_target_`).

    Read from the file itself rather than by composing the whole config: composing imports every
    model's schema, and so torch, which would add seconds to each start of the summary CLI.
    """
    config_file = Path(__file__).resolve().parents[2] / "conf" / "config.yaml"
    node = OmegaConf.select(OmegaConf.load(config_file), NODE)
    if node is None:
        raise LabError(f"{config_file} has no {NODE} node")
    settings = OmegaConf.to_container(node, resolve=True)
    settings.pop("_target_", None)
    return settings
