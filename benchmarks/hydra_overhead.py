"""Per-job overhead of a multirun: what Hydra and the harness add around the training itself.

Runs `run.py -m seed=0..N-1` twice (1 job and N jobs) on a tiny task (1 epoch of a 1,000-image
subset) and splits each job's marginal wall time into
  training and evaluation   the epochs' and the evaluations' seconds (from the records)
  in-task overhead          the rest of the job's recorded wall time (config checks, model
                            build, record writes after every epoch)
  Hydra overhead            marginal wall per job minus the job's recorded wall time
                            (composition, output dir, logging setup), plus the multirun-end
                            summary callback shared out over the jobs
The baseline it compares against is a 1-second trial: the target is under 0.3 s per job.

Usage: python benchmarks/hydra_overhead.py [--jobs 20] [--device auto]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from _cli import device_line, records, run_cli


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    base = [
        "epochs=1",
        "data.train_subset=1000",
        f"trainer.device={args.device}",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        one = run_cli([*base, "seed=0"], Path(tmp, "one"))
        many = run_cli([*base, f"seed=range(0,{args.jobs})"], Path(tmp, "many"))
        recs = records(Path(tmp, "many"))
    assert len(recs) == args.jobs, f"expected {args.jobs} records, found {len(recs)}"
    marginal = (many - one) / (args.jobs - 1)
    in_task = statistics.mean(r["wall_seconds"] for r in recs)
    training = statistics.mean(r["train_seconds"] for r in recs)
    evaluation = statistics.mean(r["eval_seconds"] for r in recs)
    print(device_line())
    print(f"\n{args.jobs} jobs in {many:.2f} s, 1 job in {one:.2f} s (process start + data load)")
    print("\n| per job | seconds |")
    print("|---|---|")
    print(f"| marginal wall time | {marginal:.3f} |")
    print(f"| in-task: training epochs | {training:.3f} |")
    print(f"| in-task: evaluation (val + test, epochs 0 and 1) | {evaluation:.3f} |")
    print(f"| in-task: checks, build, record writes | {in_task - training - evaluation:.3f} |")
    print(f"| Hydra: composition, output dir, logging, callback | {marginal - in_task:.3f} |")
    overhead = marginal - training - evaluation
    print(f"\noverhead per job (all but training and evaluation): {overhead:.3f} s")
    print(f"ratio to a 1-second trial: {overhead / 1.0:.2f} (target < 0.30)")


if __name__ == "__main__":
    main()
