"""Sweep throughput: trained model-epochs per second with 1, 2, 4, 8 trials running at once.

Each setting runs the same multirun -- J trials of 784-1024-10 at batch 128 for E epochs, seeds
0..J-1 -- through the real CLI, trials in parallel processes with Hydra's joblib launcher sharing
one device. The baseline is the same multirun with Hydra's basic launcher (one process, trials one
after another). Process start and each worker's data load count: they are part of a sweep's cost.

Usage: python benchmarks/sweep_throughput.py [--trials 16] [--epochs 5] [--parallel 1,2,4,8]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _cli import device_line, records, run_cli


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--parallel", default="1,2,4,8")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    task = [
        "hidden=1024",
        "batch_size=128",
        f"epochs={args.epochs}",
        f"seed=range(0,{args.trials})",
        f"trainer.device={args.device}",
    ]
    settings = [("basic launcher", ["hydra/launcher=basic"])]
    for n in (int(k) for k in args.parallel.split(",")):
        settings.append(
            (f"joblib n_jobs={n}", ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={n}"])
        )
    model_epochs = args.trials * args.epochs
    print(device_line())
    print(
        f"{args.trials} trials x {args.epochs} epochs = {model_epochs} model-epochs per setting\n"
    )
    print("| launcher | wall s | model-epochs/s | vs basic | mean test acc |")
    print("|---|---|---|---|---|")
    base = None
    for label, launcher in settings:
        with tempfile.TemporaryDirectory() as tmp:
            wall = run_cli([*task, *launcher], Path(tmp))
            recs = records(Path(tmp))
        assert len(recs) == args.trials, f"{label}: {len(recs)} records"
        rate = model_epochs / wall
        base = base or rate
        acc = sum(r["final"]["test/acc"] for r in recs) / len(recs)
        print(f"| {label} | {wall:.1f} | {rate:.1f} | {rate / base:.2f}x | {acc:.4f} |", flush=True)


if __name__ == "__main__":
    main()
