"""A run's record while it trains: epoch rows and facts, rewritten whole after every epoch."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from mnist_lab.records.files import atomic_write_text, clean, now
from mnist_lab.records.format import (
    METRICS_FILE,
    RESULT_FILE,
    ROW_ONLY,
    SCHEMA_VERSION,
    TRAIN_SPLIT,
)
from mnist_lab.records.objective import Objective
from mnist_lab.records.reading import writer


class RunRecord:
    """Collects epoch rows and run facts; `save()` rewrites both files from them.

    The rows say what was measured: their keys are metrics.csv's columns, and `initial`, `final`
    and `best` hold their metrics (`<split>/<name>`), so a metric the evaluation adds needs no
    change here. `best` is the epoch the config's objective prefers (`records.objective`).
    """

    def __init__(self, run_dir: Path, facts: dict):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict] = []
        self.facts = {"schema_version": SCHEMA_VERSION, "status": "running", "reason": None}
        self.facts.update(facts)
        self.facts["started_at"] = now()
        self.facts["writer"] = writer()
        self.objective = Objective.of((self.facts.get("config") or {}).get("objective"))

    def add_epoch(self, epoch: int, row: dict) -> None:
        self.rows.append(row)
        self.save()

    def columns(self) -> list[str]:
        """metrics.csv's columns: the rows' keys in the order they first appear."""
        return list(dict.fromkeys(k for r in self.rows for k in r if k not in ROW_ONLY))

    def summary(self) -> dict:
        trained = [r for r in self.rows if r["epoch"] > 0]
        initial = self.rows[0] if self.rows else {}
        final = trained[-1] if trained else {}
        metrics = [k for k in self.columns() if "/" in k]
        evaluated = [k for k in metrics if not k.startswith(TRAIN_SPLIT)]
        best = self.objective.best(trained) or final  # without validation: the last epoch
        seconds = [r["seconds"] for r in trained]
        return {
            "epochs_run": len(trained),
            "initial": {k: initial.get(k) for k in evaluated},
            "final": {k: final.get(k) for k in metrics},
            "best": {"epoch": best.get("epoch"), **{k: best.get(k) for k in evaluated}},
            "train_seconds": sum(seconds),
            "eval_seconds": sum(r.get("eval_seconds", 0.0) for r in self.rows),
            "seconds_per_epoch": sum(seconds) / len(seconds) if seconds else None,
        }

    def save(self) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns(), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(
            {k: ("" if clean(v) is None else v) for k, v in r.items()} for r in self.rows
        )
        atomic_write_text(self.run_dir / METRICS_FILE, buffer.getvalue())
        result = {**self.facts, **self.summary(), "updated_at": now()}
        atomic_write_text(self.run_dir / RESULT_FILE, json.dumps(clean(result), indent=2) + "\n")

    def finish(self, status: str, reason: str | None = None, **facts) -> None:
        self.facts.update(status=status, reason=reason, finished_at=now(), **facts)
        self.save()
