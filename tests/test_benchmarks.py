"""The benchmarks that call the library in-process still run against today's code.

Benchmarks run by hand (docs/PERFORMANCE.md), so an interface they use can change under them
unnoticed; these short runs print each one's table. The ones that drive the CLI only are covered
by the CLI's own tests.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.parametrize(
    ("script", "args", "row"),
    [
        ("epoch_speed.py", ["--device", "cpu", "--epochs", "1", "--baseline-batches", "5"],
         "| eager, autograd |"),
        ("data_load.py", ["--repeats", "1"], "| reused |"),
        ("width_grouping.py", ["--widths", "16,32", "--steps", "3", "--repeats", "1"],
         "| concatenated |"),
    ],
)  # fmt: skip
def test_an_in_process_benchmark_prints_its_table(script, args, row):
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert row in done.stdout, done.stdout
