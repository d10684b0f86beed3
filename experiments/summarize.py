"""Summarise run records: summary.csv, the comparison grid (grid.csv, summary.md) and PNGs.

    python experiments/summarize.py [PATHS...] [--out DIR] [--by hidden,lr] [--metric test/acc]
        [--where EXPR] [--k 3] [--target 0.97] [--heatmap hidden,lr] [--no-plots]

Defaults are those of the multirun-end callback: `hydra.callbacks.summarize` in conf/config.yaml.
All of results/ is summarised into results/; a narrower summary (other folders, --where, --by)
goes to a folder of its own, results/filtered/<what it shows>/, unless --out names one, so it
never replaces the main report. Bad input (a missing path, an unknown column, a --where that is
not a comparison or matches no run, an --out that cannot be written) is one line on stderr,
exit 2, and nothing written.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import re
import sys
from pathlib import Path

from mnist_lab import signals
from mnist_lab.app.callbacks import configured_settings, names
from mnist_lab.errors import LabError
from mnist_lab.results.summary import summarize

FILTERED = "filtered"


def own_folder(args: argparse.Namespace, defaults: dict) -> Path:
    """Where a summary goes without --out: results/ for all of it, else a folder named by what it
    selects (readable, plus a short hash so that two selections never share one)."""
    root = Path(defaults["results_root"])
    paths = [p for p in args.paths if Path(p) != root]
    selection = [*paths]
    if args.where is not None:
        selection.append(f"where {args.where}")
    if args.by != names(defaults["by"]):
        selection.append(f"by {','.join(args.by or [])}")
    if not selection:
        return root
    text = " ".join(selection)
    readable = re.sub(r"[^A-Za-z0-9._=-]+", "-", text).strip("-")[:60]
    return root / FILTERED / f"{readable}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def parse(argv: list[str] | None, defaults: dict) -> argparse.Namespace:
    root = defaults["results_root"]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", default=[root], help=f"folders to search ({root})")
    parser.add_argument(
        "--out",
        type=Path,
        help=f"folder for the files ({root} for all of it, else {root}/{FILTERED}/...)",
    )
    parser.add_argument(
        "--by",
        type=names,
        default=names(defaults["by"]),
        help="grid rows, comma-separated (default: the config keys that differ among the runs)",
    )
    parser.add_argument("--metric", default=defaults["metric"], help="a summary.csv column")
    parser.add_argument(
        "--where", help="comparisons with and/or/not, e.g. \"optimizer == 'sgd' and seed < 2\""
    )
    parser.add_argument("--k", type=int, default=defaults["k"], help="epochs in converged acc")
    parser.add_argument("--target", type=float, default=defaults["target"], help="target test acc")
    parser.add_argument("--heatmap", type=names, default=defaults["heatmap"], help="rows,columns")
    parser.add_argument("--plots", action=argparse.BooleanOptionalAction, default=defaults["plots"])
    args = parser.parse_args(argv)
    args.out = args.out or own_folder(args, defaults)
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        args = parse(argv, configured_settings())
        result = summarize(
            args.paths,
            args.out,
            by=args.by,
            metric=args.metric,
            where=args.where,
            k=args.k,
            target=args.target,
            heatmap=args.heatmap,
            plots=args.plots,
        )
    except LabError as e:
        print(f"summarize: error: {e}", file=sys.stderr)
        return 2
    try:
        print(result.markdown)
    except BrokenPipeError:  # `summarize.py | head`: the files are written already
        return signals.stdout_closed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
