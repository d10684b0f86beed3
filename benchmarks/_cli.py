"""Shared by the benchmarks that time the real CLI: run it, read back the records it wrote."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_cli(args: list[str], sweep_dir: Path) -> float:
    """Wall-clock seconds of `python experiments/run.py -m ARGS` writing into sweep_dir."""
    cmd = [sys.executable, str(REPO / "experiments/run.py"), "-m", *args]
    cmd.append(f"hydra.sweep.dir={sweep_dir}")
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"run.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return elapsed


def records(sweep_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(sweep_dir).rglob("result.json"))]


def device_line() -> str:
    import platform

    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
    else:
        name = platform.processor() or platform.machine()
    return f"device: {name}, torch {torch.__version__}"
