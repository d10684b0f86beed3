"""The lab's eight-configuration grid end to end through the CLI, wall-clock seconds with Hydra.

`python experiments/run.py -m experiment=lab_grid seed=0`: the from-scratch MLP over the eight
(hidden, lr, batch, epochs) rows of the lab report (experiment=lab_scratch_relu128), 210 epochs in all, batch sizes 16-128.
The baseline, in the same run, is the same grid with eager steps (trainer.cuda_graph=off) for one
epoch per row, its per-epoch time scaled to the row's epoch count (an eager full grid would take
minutes of accelerator time to say the same thing).

Usage: python benchmarks/lab_grid.py [--seeds 0] [--skip-baseline]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _cli import device_line, records, run_cli


def _row(rec: dict) -> str:
    cfg = rec["config"]
    return f"{cfg['hidden']}/{cfg['lr']}/{cfg['batch_size']}/{cfg['epochs']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()
    print(device_line())
    with tempfile.TemporaryDirectory() as tmp:
        wall = run_cli(["experiment=lab_grid", f"seed={args.seeds}"], Path(tmp, "grid"))
        grid = records(Path(tmp, "grid"))
        eager = {}
        if not args.skip_baseline:
            run_cli(
                ["experiment=lab_grid", "seed=0", "epochs=1", "trainer.cuda_graph=off"],
                Path(tmp, "eager"),
            )
            eager = {_row(r).rsplit("/", 1)[0]: r for r in records(Path(tmp, "eager"))}
    epochs = sum(r["epochs_run"] for r in grid)
    print(f"\ngrid: {len(grid)} runs, {epochs} epochs, {wall:.1f} s wall including Hydra\n")
    print("| hidden/lr/batch/epochs | s per epoch | eager s per epoch | test acc | reported |")
    print("|---|---|---|---|---|")
    estimate = 0.0
    for rec in sorted(grid, key=_row):
        key = _row(rec).rsplit("/", 1)[0]
        eager_epoch = eager[key]["seconds_per_epoch"] if key in eager else float("nan")
        estimate += eager_epoch * rec["config"]["epochs"]
        print(
            f"| {_row(rec)} | {rec['seconds_per_epoch']:.3f} | {eager_epoch:.3f} "
            f"| {rec['final']['test/acc']:.4f} | {rec['config']['preset']['reported_test_acc']} |"
        )
    if eager:
        print(
            f"\neager estimate for the same epochs: {estimate:.1f} s; speed-up {estimate / wall:.1f}x"
        )


if __name__ == "__main__":
    main()
