"""Hydra callback: after every multirun, summarise the sweep's own jobs and print its grid.

Only the sweep's folder is read, so the time a sweep spends after its last job grows with its own
jobs, never with what results/ holds; the summary of all of results/ is made on demand by
experiments/summarize.py (the report says so). Hydra builds the callback from
`hydra.callbacks.summarize` in conf/config.yaml. That node is the one source of truth for the
summary's settings: the callback receives them as arguments, and experiments/summarize.py reads
the same node (`configured_settings`) for its option defaults. A summary is a convenience, so any
error here is logged in one line and swallowed: it never turns a finished sweep into a failure.
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
    """Writes summary.csv, grid.csv, summary.md and the PNGs of the sweep into its folder."""

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
        if result is not None:
            print(terminal_report(result, sweep_dir, self.results_root), flush=True)

    def _summarize(self, folder: Path):
        try:
            from mnist_lab.results.summary import summarize

            return summarize([folder], folder, **self.options)
        except Exception as e:
            log.error("could not summarise %s: %s", folder, e)
            log.debug("summary traceback", exc_info=True)
            return None


def terminal_report(result, sweep_dir: Path, root: Path) -> str:
    """The sweep's grid (best rows on its objective first) with what its runs share, its best
    rows, and where the files are."""
    from mnist_lab.results.summary import same_line, top_rows

    lines = [""]
    for section in result.sections:
        table, best = top_rows(section, TOP_ROWS)
        if table is None:
            lines += [f"{section.name}: no completed runs", ""]
            continue
        shown = (
            f"top {len(table)} of {len(section.grid)} rows"
            if len(table) < len(section.grid)
            else f"{len(table)} rows"
        )
        objective = section.objective.metrics[0]
        lines.append(f"{section.name} ({shown}, best on {objective} first):")
        if section.same:  # a result on a subset or a preset must not read as the default's
            lines.append(same_line(section))
        lines += [table.to_markdown(index=False, disable_numparse=True), ""]
        pick = "Pareto-optimal on" if section.pareto else "best on"
        lines.append(f"{pick} {', '.join(section.objective.metrics)}: {best}")
    lines.append(f"files: {sweep_dir / 'summary.md'} (and summary.csv, grid.csv, PNGs beside it)")
    lines.append(f"all runs under {root}/: python experiments/summarize.py")
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
