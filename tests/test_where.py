"""--where is a filter over columns and literals, parsed with `ast`, never evaluated as code."""

from __future__ import annotations

import re

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


@pytest.mark.parametrize(
    ("expr", "says"),
    [
        ("", "empty expression"),
        ("   ", "empty expression"),
        ("not " * 1_500 + "status == 'completed'", "nested 1500 deep: at most 50"),
        ("not " * 25_000 + "status == 'completed'", "longer than 10,000 characters (100,021)"),
        ("(" * 60 + "hidden == 1" + ")" * 60, "nested 60 deep"),
        ("-" * 900 + "1 < hidden", "nested 900 deep"),
    ],
)
def test_empty_and_oversized_expressions_are_refused_before_parsing(expr, says):
    with pytest.raises(FilterError, match=re.escape(says)) as info:
        compile_where(expr, resolve)
    assert "\n" not in str(info.value)


def test_the_size_limits_leave_room_for_real_filters():
    deep = "not (" * 20 + "hidden == 128" + ")" * 20  # 20 `not` in 20 brackets: 40 deep
    assert matches(deep) == [0, 2]
    many = " or ".join(f"hidden == {n}" for n in range(550))  # long but flat: 9,200 characters
    assert matches(many) == [0, 1, 2]
    assert matches("status not in ['failed'] and not reason == None") == [3]
