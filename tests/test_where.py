"""--where is a filter over columns and literals, parsed with `ast`, never evaluated as code."""

from __future__ import annotations

import pandas as pd
import pytest

from mnist_lab.results.where import FilterError, compile_where

RUNS = pd.DataFrame(
    {
        "status": ["completed", "failed", "completed", "killed"],
        "optimizer": ["sgd", "sgd", "adam", "sgd"],
        "hidden": pd.array([128, 512, 128, None], dtype="Int64"),
        "final.test/acc": [0.97, None, 0.975, 0.5],
        "reason": [None, "bad", None, "gone"],
    }
)


def resolve(name: str) -> str:
    for candidate in (name, f"final.{name}"):
        if candidate in RUNS.columns:
            return candidate
    raise FilterError(f"unknown column {name!r}")


def matches(expr: str) -> list[int]:
    return RUNS.index[compile_where(expr, resolve)(RUNS)].tolist()


@pytest.mark.parametrize(
    ("expr", "rows"),
    [
        ("status == 'completed'", [0, 2]),
        ("optimizer == 'sgd' and hidden >= 128", [0, 1]),
        ("not (optimizer == 'sgd') or `final.test/acc` < 0.6", [2, 3]),
        ("hidden in [128, 256]", [0, 2]),
        ("status not in ('failed', 'killed')", [0, 2]),
        ("0.9 < `test/acc` <= 0.97", [0]),
        ("reason == None", [0, 2]),
        ("reason != None and hidden == 512", [1]),
        ("hidden > -1", [0, 1, 2]),  # a missing value matches no comparison
        ("optimizer == 'SGD'", []),  # values are compared as written
    ],
)
def test_comparisons_and_boolean_logic(expr, rows):
    assert matches(expr) == rows


@pytest.mark.parametrize(
    "expr",
    [
        "status == 'completed' and @pd.io.common.os.system('touch /tmp/x') == 0",
        "@x == 1",
        "__import__('os').system('true') == 0",
        "status.str.len() > 3",
        "hidden.__class__ == 1",
        "`final.test/acc`.max() > 0",
        "status[0] == 'c'",
        "(lambda: 1)() == 1",
        "open('/etc/passwd') != None",
        "hidden + 1 > 2",
        "hidden == [x for x in (1, 2)]",
        "__class__ == 1",
        "status",
        "status == 'completed'; import os",
        "hidden in hidden",
        "f'{hidden}' == '128'",
    ],
)
def test_anything_but_comparisons_is_refused_in_one_line(expr, tmp_path):
    with pytest.raises(FilterError) as info:
        compile_where(expr, resolve)(RUNS)
    assert "\n" not in str(info.value)


def test_unknown_column_and_bad_types_are_errors():
    with pytest.raises(FilterError, match="unknown column 'nope'"):
        matches("nope == 1")
    with pytest.raises(FilterError, match="cannot compare"):
        matches("status > 3")
