"""A stand-in for experiments/run.py in sweeper tests: no torch, each job's outcome set by overrides.

`x` is the objective (reported per epoch as `val/acc` = x * epoch / epochs, so pruning can be
exercised), `mode` picks the outcome: value (x + y) | two ([x, x + y]) | raise | return_nan |
return_inf | return_string | return_none | diverged | failed_record | interrupt (Ctrl-C) |
terminate (SIGTERM's exception) | nan_acc (val/acc reported as NaN, then x) | sleep (`sleep`
seconds, then x). `name` is echoed into the record (values with spaces and commas).
Writes a result.json shaped like the real one (docs/ARCHITECTURE.md), with its writer's pid,
when the job started and finished (a worker's busy intervals), and in a sweep worker its worker,
device and threads, placed as the real task places them.
"""

from __future__ import annotations

import json
import math
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import hydra
import optuna
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from mnist_lab.job import trial_reporting, worker_share
from mnist_lab.signals import Terminated


def _write(out: Path, record: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(record, indent=2))


def task(cfg: DictConfig):
    out = Path(HydraConfig.get().runtime.output_dir)
    started = time.perf_counter()
    device = worker_share.place(cfg.trainer.device)
    record = {
        "schema_version": 1,
        "status": "running",
        "reason": None,
        "run_dir": str(out),
        "trial": trial_reporting.trial_identity(),
        "overrides": list(HydraConfig.get().overrides.task),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "epochs_run": 0,
        "final": {},
        "best": {},
        "writer": {"pid": os.getpid()},
        "worker": worker_share.identity(),
        "device": str(device),
        "threads": worker_share.torch.get_num_threads(),
        "started_at": datetime.now(timezone.utc).isoformat(),
    }
    reporter = trial_reporting.epoch_reporter(cfg.epochs)
    for epoch in range(1, cfg.epochs + 1):
        acc = cfg.x * epoch / cfg.epochs
        record.update(epochs_run=epoch, final={"val/acc": acc, "test/acc": acc - 0.01})
        record["best"] = {"epoch": epoch, "val/acc": acc, "test/acc": acc - 0.01}
        if reporter is not None:
            try:
                reporter(epoch, {"val/acc": math.nan if cfg.mode == "nan_acc" else acc})
            except optuna.TrialPruned as e:  # a partial record, then re-raise (not a signal)
                record.update(status="pruned", reason=str(e))
                _write(out, record)
                raise
    if cfg.mode == "sleep":
        time.sleep(cfg.sleep)
    record["wall_seconds"] = time.perf_counter() - started
    if cfg.mode == "interrupt":
        raise KeyboardInterrupt
    if cfg.mode == "terminate":
        raise Terminated
    if cfg.mode == "raise":
        record.update(status="failed", reason="RuntimeError: boom")
        _write(out, record)
        raise RuntimeError("boom")
    if cfg.mode == "diverged":
        record.update(status="diverged", reason="training loss became nan in epoch 1")
        _write(out, record)
        return math.nan
    if cfg.mode == "failed_record":  # a failed record but a number returned: the record wins
        record.update(status="failed", reason="ConfigError: hidden=0 is not allowed")
        _write(out, record)
        return 0.5
    record.update(status="completed", finished_at=datetime.now(timezone.utc).isoformat())
    _write(out, record)
    return {
        "value": cfg.x + cfg.y,
        "return_nan": math.nan,
        "return_inf": math.inf,
        "return_string": "not a number",
        "return_none": None,
        "sleep": cfg.x,
        "nan_acc": cfg.x,
        "two": [cfg.x, cfg.x + cfg.y],
    }[cfg.mode]


@hydra.main(config_path="conf", config_name="fake", version_base="1.3")
def main(cfg: DictConfig):
    return task(cfg)


if __name__ == "__main__":
    main()
