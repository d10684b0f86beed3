"""A run's record while it trains: epoch rows and facts, rewritten whole after every epoch."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from mnist_lab.records.files import atomic_write_text, clean, now
from mnist_lab.records.format import (
    EVAL_KEYS,
    METRIC_KEYS,
    METRICS_COLUMNS,
    METRICS_FILE,
    RESULT_FILE,
    SCHEMA_VERSION,
)
from mnist_lab.records.reading import writer


class RunRecord:
    """Collects epoch rows and run facts; `save()` rewrites both files from them."""

    def __init__(self, run_dir: Path, facts: dict):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict] = []
        self.facts = {"schema_version": SCHEMA_VERSION, "status": "running", "reason": None}
        self.facts.update(facts)
        self.facts["started_at"] = now()
        self.facts["writer"] = writer()

    def add_epoch(self, epoch: int, row: dict) -> None:
        self.rows.append(row)
        self.save()

    def summary(self) -> dict:
        trained = [r for r in self.rows if r["epoch"] > 0]
        initial = self.rows[0] if self.rows else {}
        final = trained[-1] if trained else {}
        with_val = [r for r in trained if math.isfinite(r.get("val/acc", math.nan))]
        best = max(with_val, key=lambda r: r["val/acc"]) if with_val else final
        seconds = [r["seconds"] for r in trained]
        return {
            "epochs_run": len(trained),
            "initial": {k: initial.get(k) for k in EVAL_KEYS},
            "final": {k: final.get(k) for k in METRIC_KEYS},
            "best": {"epoch": best.get("epoch"), **{k: best.get(k) for k in EVAL_KEYS}},
            "train_seconds": sum(seconds),
            "eval_seconds": sum(r.get("eval_seconds", 0.0) for r in self.rows),
            "seconds_per_epoch": sum(seconds) / len(seconds) if seconds else None,
        }

    def save(self) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=METRICS_COLUMNS, extrasaction="ignore")
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
