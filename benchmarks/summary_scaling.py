"""Time a sweep spends after its last job, with 10 and with 1,000 earlier records in results/.

The end of a multirun summarises the sweep's own jobs only, so that time must not grow with the
history under results/ (the target: 1,000 earlier records within 1.5x of 10). Runs the real CLI,
`run.py -m seed=0,1,2` (3 jobs, 1 epoch on a 1,000-image subset), in a folder whose results/ holds
N copies of real records (result.json and metrics.csv of a first sweep, spread over sweep folders
of 10 runs; weights are not copied: no summary reads them), and measures from the last epoch line
the last job logs to the moment the process has exited. Each N is run `--repeats` times, the
fastest kept. For reference it also times what the end of a multirun used to do on top: summarise
all of results/ again (tables and figures), in this process; and, as the floor, the time after
the last job with the summary callback switched off (`~hydra.callbacks.summarize`).

Usage: python benchmarks/summary_scaling.py [--counts 10,1000] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from _cli import REPO, device_line

from mnist_lab.app.callbacks import configured_settings, names
from mnist_lab.results.summary import summarize

JOB = ["epochs=1", "data.train_subset=1000", "trainer.device=cpu", "seed=0,1,2"]
EPOCH_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]\[mnist_lab\.train\.loop\]")


def sweep(cwd: Path, sweep_dir: Path, *extra: str) -> float:
    """Seconds from the last job's last epoch line to the end of the process."""
    cwd.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(REPO / "experiments/run.py"), "-m", *JOB, *extra]
    proc = subprocess.run(
        [*cmd, f"hydra.sweep.dir={sweep_dir}"], cwd=cwd, capture_output=True, text=True
    )
    ended = datetime.now()
    if proc.returncode != 0:
        sys.exit(f"run.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    stamps = [m.group(1) for line in proc.stdout.splitlines() if (m := EPOCH_LINE.match(line))]
    last = datetime.strptime(stamps[-1], "%Y-%m-%d %H:%M:%S,%f")
    return (ended - last).total_seconds()


def history(results: Path, templates: list[Path], count: int) -> None:
    """`count` earlier records under results/multiruns/old_<i>/<j>, copied from real ones."""
    for i in range(count):
        folder = results / "multiruns" / f"old_{i // 10:04d}"
        run_dir = folder / str(i % 10)
        run_dir.mkdir(parents=True)
        template = templates[i % len(templates)]
        record = json.loads((template / "result.json").read_text())
        record["run_dir"] = str(run_dir)
        record["job"] = {**record["job"], "sweep_dir": str(folder), "num": i % 10}
        (run_dir / "result.json").write_text(json.dumps(record))
        shutil.copy(template / "metrics.csv", run_dir / "metrics.csv")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", type=names, default=["10", "1000"])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    counts = [int(c) for c in args.counts]
    settings = configured_settings()
    options = {k: v for k, v in settings.items() if k != "results_root"}
    options["by"], options["heatmap"] = names(options["by"]), names(options["heatmap"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        first = Path(tmp, "first")
        sweep(first, first / "sweep")  # the real records every history is copied from
        templates = sorted(p.parent for p in (first / "sweep").rglob("result.json"))
        for count in counts:
            cwd = Path(tmp, f"n{count}")
            history(cwd / "results", templates, count)
            after = min(
                sweep(cwd, cwd / "results" / "multiruns" / f"new_{r}") for r in range(args.repeats)
            )
            start = time.perf_counter()
            summarize([cwd / "results"], Path(tmp, f"all{count}"), **options)
            everything = time.perf_counter() - start
            rows.append((count, after, everything))
        cwd = Path(tmp, "off")
        history(cwd / "results", templates, counts[0])
        off = min(
            sweep(cwd, cwd / "results" / "multiruns" / f"new_{r}", "~hydra.callbacks.summarize")
            for r in range(args.repeats)
        )
    base = rows[0][1]
    print(device_line())
    print(f"\n3-job sweep, best of {args.repeats}; records copied from a real sweep\n")
    print(
        "| earlier records in results/ | seconds after the last job | ratio to the first row "
        "| re-summarising all of results/ (s, the old end of a multirun, for reference) |"
    )
    print("|---|---|---|---|")
    for count, after, everything in rows:
        print(f"| {count:,} | {after:.2f} | {after / base:.2f}x | {everything:.2f} |")
    print(f"| {counts[0]:,}, summary callback off | {off:.2f} | {off / base:.2f}x | |")
    ratio = rows[-1][1] / base
    print(
        f"\n{rows[-1][0]:,} vs {rows[0][0]:,} earlier records: {ratio:.2f}x (target: within 1.5x)"
    )


if __name__ == "__main__":
    main()
