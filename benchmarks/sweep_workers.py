"""Sweep workers against the batch barrier: the default Optuna study, three ways, in one run.

The study is `hparams_search=mlp_optuna` (TPE, median pruner: trials below the median at epoch 2
stop there) with N trials of E epochs on a training subset. It runs
  basic       the baseline: Hydra's basic launcher, one trial after another (seeded TPE)
  joblib      hydra/launcher=joblib n_jobs=W: batches of W trials, the next batch waits for the
              slowest trial of the last (the barrier)
  workers     hydra.sweeper.workers=W: W processes, each asks its next trial when its last ends
Like with like: joblib and workers run the baseline's N trial configurations (enqueued in its
order), so the three settings train the same models; which trials the pruner stops depends on the
order they finish in, and the table says how many (and how many failed: a large learning rate
diverges). Wall time is the whole command (start-up,
data load, the summary at the end), of which "until the first job" is the start-up: the command
to its first trial's record; a process's busy fraction is the time its jobs ran (from
their records: started_at to finished_at) over the command's wall time.

Usage: python benchmarks/sweep_workers.py [--trials 24] [--epochs 3] [--subset 20000]
       [--workers 2] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

from _cli import device_line, records, run_cli


def study_args(tmp: Path, name: str, trials: int, epochs: int, subset: int, device: str):
    return [
        "hparams_search=mlp_optuna",
        f"hydra.sweeper.storage=sqlite:///{tmp}/optuna.db",
        f"hydra.sweeper.study_name={name}",
        f"hydra.sweeper.n_trials={trials}",
        f"epochs={epochs}",
        f"data.train_subset={subset}",
        f"trainer.device={device}",
        "trainer.save_weights=none",
        f"hydra.callbacks.summarize.results_root={tmp}",  # not the repository's results/
        "hydra.callbacks.summarize.plots=false",
    ]


def enqueued(recs: list[dict]) -> str:
    """The baseline's trial configurations, in its trial order, as `enqueue_trials`."""
    keys = ("hidden", "lr", "batch_size", "optimizer")
    ordered = sorted(recs, key=lambda r: r["trial"]["number"])
    rows = []
    for r in ordered:
        values = {k: r["config"][k] for k in keys if k != "optimizer"}
        values["optimizer"] = r["choices"]["optimizer"]
        rows.append("{" + ", ".join(f"{k}: {values[k]!r}".replace("'", "") for k in keys) + "}")
    return "+hydra.sweeper.enqueue_trials=[" + ", ".join(rows) + "]"


def busy_fractions(recs: list[dict], wall: float) -> list[float]:
    """Each job process's share of the wall time spent in its jobs (their records' times)."""
    busy: dict[int, float] = defaultdict(float)
    for r in recs:
        start, end = (datetime.fromisoformat(r[k]) for k in ("started_at", "finished_at"))
        busy[r["writer"]["pid"]] += (end - start).total_seconds()
    return sorted((b / wall for b in busy.values()), reverse=True)


def barrier_wait(recs: list[dict], size: int) -> float:
    """Seconds the processes of a batched launch spent waiting for the slowest job of their
    batch (jobs `num` k*size ... k*size+size-1 form batch k): the barrier's cost."""
    batches: dict[int, list[float]] = defaultdict(list)
    for r in recs:
        start, end = (datetime.fromisoformat(r[k]) for k in ("started_at", "finished_at"))
        batches[r["job"]["num"] // size].append((end - start).total_seconds())
    return sum(max(b) * len(b) - sum(b) for b in batches.values())


def trained_on(recs: list[dict]) -> str:
    """The devices and CPU-thread counts the records say their jobs trained with."""
    seen = {(r["device"], r["threads"]) for r in recs if r.get("device") is not None}
    return ", ".join(f"{device} x{threads}" for device, threads in sorted(seen))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--subset", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    w = args.workers
    print(device_line(), f"load {os.getloadavg()[0]:.2f}")
    print(
        f"hparams_search=mlp_optuna: {args.trials} trials x {args.epochs} epochs, "
        f"data.train_subset={args.subset}\n"
    )
    print("| setting | wall s | until the first job s | trials/min | vs basic | pruned / failed "
          "| busy fraction per process | device x threads |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    settings = [
        ("basic launcher (baseline)", ["hydra/launcher=basic", "hydra.sweeper.sampler.seed=0"]),
        (f"joblib n_jobs={w} (batch barrier)", ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={w}"]),
        (f"hydra.sweeper.workers={w}", [f"hydra.sweeper.workers={w}"]),
    ]  # fmt: skip
    queue, base, rates, waited = None, None, {}, 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, extra) in enumerate(settings):
            sweep_dir = Path(tmp, f"s{i}")
            argv = study_args(
                Path(tmp), f"s{i}", args.trials, args.epochs, args.subset, args.device
            )
            began = datetime.now(timezone.utc)
            wall = run_cli([*argv, *extra, *([queue] if queue else [])], sweep_dir)
            recs = [r for r in records(sweep_dir) if r.get("trial")]
            first = min(datetime.fromisoformat(r["started_at"]) for r in recs)
            start_up = (first - began).total_seconds()
            assert len(recs) == args.trials, f"{label}: {len(recs)} trial records"
            queue = queue or enqueued(recs)
            rate = args.trials / wall * 60
            base = base or rate
            rates[i] = rate
            if i == 1:
                waited = barrier_wait(recs, w)
            pruned = sum(r["status"] == "pruned" for r in recs)
            failed = sum(r["status"] not in ("completed", "pruned") for r in recs)  # diverged
            shown = ", ".join(f"{f:.2f}" for f in busy_fractions(recs, wall))
            print(
                f"| {label} | {wall:.1f} | {start_up:.1f} | {rate:.1f} | {rate / base:.2f}x "
                f"| {pruned} / {failed} | {shown} | {trained_on(recs)} |",
                flush=True,
            )
    print(f"\nworkers / joblib: {rates[2] / rates[1]:.2f}x the trials per minute")
    print(f"joblib: {waited:.1f} s of process time waiting for the slowest job of a batch")
    print(json.dumps({"load_after": round(os.getloadavg()[0], 2)}))


if __name__ == "__main__":
    main()
