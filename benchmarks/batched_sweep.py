"""Batched launcher against the basic launcher: model-epochs per second of the same multirun.

CPU row: the 16-job grid `-m lr=0.005,0.01,0.02,0.05 seed=0,1,2,3 epochs=2 trainer.device=cpu`
(784-128-10, SGD, batch 32), once with Hydra's basic launcher (one job after another) and once
with `hydra/launcher=batched` (one stack of 16), through the real CLI: wall time includes process
start, composition, data load, evaluation and records. GPU row: 16-64 trials of 784-1024-10 at
batch 128, printed as "to measure" where no CUDA device is available. On the CPU a third row runs
the basic launcher with `trainer.backward=autograd`: its jobs trained by autograd + torch.optim,
as every single run was before the hand-written step became the CPU default.

Usage: python benchmarks/batched_sweep.py [--epochs 2] [--gpu-trials 32] [--gpu-only]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from _cli import device_line, records, run_cli


def measure(label: str, task: list[str], launcher: list[str], model_epochs: int, jobs: int):
    with tempfile.TemporaryDirectory() as tmp:
        wall = run_cli([*task, *launcher], Path(tmp))
        recs = records(Path(tmp))
    assert len(recs) == jobs, f"{label}: {len(recs)} records"
    acc = sum(r["final"]["val/acc"] for r in recs) / len(recs)
    return wall, model_epochs / wall, acc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--gpu-trials", type=int, default=32)
    parser.add_argument("--gpu-only", action="store_true", help="the GPU row alone")
    args = parser.parse_args()
    import torch

    if args.gpu_only and not torch.cuda.is_available():
        raise SystemExit("--gpu-only: no CUDA device here")

    print(device_line(), f"load {os.getloadavg()[0]:.2f}")
    print("| setting | launcher | wall s | model-epochs/s | vs basic | mean val acc |")
    print("|---|---|---|---|---|---|")
    cpu = ["lr=0.005,0.01,0.02,0.05", "seed=0,1,2,3", f"epochs={args.epochs}"]
    cpu.append("trainer.device=cpu")
    rows = [] if args.gpu_only else [("CPU 16 x 784-128-10 b32", cpu, 16)]
    if torch.cuda.is_available():
        n = args.gpu_trials
        gpu = ["hidden=1024", "batch_size=128", f"epochs={args.epochs}", f"seed=range(0,{n})"]
        rows.append((f"GPU {n} x 784-1024-10 b128", [*gpu, "trainer.device=cuda"], n))
    for setting, task, jobs in rows:
        base = None
        variants = [("basic", ["hydra/launcher=basic"]), ("batched", ["hydra/launcher=batched"])]
        if "trainer.device=cpu" in task:  # the basic launcher's jobs as autograd trained them
            variants.append(
                ("basic, autograd", ["hydra/launcher=basic", "trainer.backward=autograd"])
            )
        for label, launcher in variants:
            wall, rate, acc = measure(setting, task, launcher, jobs * args.epochs, jobs)
            base = base or rate
            print(
                f"| {setting} | {label} | {wall:.1f} | {rate:.2f} | {rate / base:.2f}x "
                f"| {acc:.4f} |",
                flush=True,
            )
    if not torch.cuda.is_available():
        print(f"| GPU {args.gpu_trials} x 784-1024-10 b128 | basic, batched | to measure | | | |")


if __name__ == "__main__":
    main()
