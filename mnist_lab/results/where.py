"""`--where`: a filter over summary.csv's columns that is data, never code.

pandas' `DataFrame.query` evaluates Python: `@pd.io.common.os.system(...)` runs a shell command.
This module parses the expression with Python's `ast` (mode "eval") and accepts only comparisons
(`==`, `!=`, `<`, `<=`, `>`, `>=`, `in`, `not in`), `and`, `or`, `not`, parentheses, column
names and literals (strings, numbers, True/False/None, and lists or tuples of them for `in`).
Names with `.` or `/` go in backticks, as in pandas: `` `final.test/acc` > 0.97 ``. Anything else
(calls, attributes, subscripts, `@name`, lambdas, arithmetic) is refused with one line. The
accepted tree is evaluated with vectorised pandas comparisons on the columns.

Size is bounded before anything is parsed: an empty expression, one longer than MAX_LENGTH
characters or nested deeper than MAX_DEPTH (brackets and unary operators such as `not`, counted
as they open) is refused, since Python's parser and any recursive walk of its tree run out of
stack or memory on pathological nesting (1,500 nested `not`: RecursionError; 25,000: MemoryError).
"""

from __future__ import annotations

import ast
import io
import operator
import re
import tokenize
from collections.abc import Callable

import pandas as pd

from mnist_lab.errors import LabError

COMPARE = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
BACKTICKED = re.compile(r"`([^`]*)`")
MAX_LENGTH = 10_000  # characters
MAX_DEPTH = 50  # brackets and unary operators open at once
OPEN, CLOSE, UNARY = "([{", ")]}", ("not", "-", "+", "~")


class FilterError(LabError):
    """An expression outside the accepted language, or one that cannot be evaluated."""


def _literal(node: ast.expr):
    """A constant, a negated number, or a list/tuple of those; FilterError otherwise."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str | int | float | bool | None):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _literal(node.operand)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.List | ast.Tuple):
        return [_literal(element) for element in node.elts]
    raise FilterError(f"not allowed here: {ast.unparse(node)!r} (only columns and literals)")


class _Compiler:
    """Turns the accepted tree into a function of the runs table (no eval anywhere)."""

    def __init__(self, names: dict[str, str], resolve: Callable[[str], str]):
        self.names, self.resolve = names, resolve

    def boolean(self, node: ast.expr):
        if isinstance(node, ast.BoolOp):
            parts = [self.boolean(value) for value in node.values]
            combine = operator.and_ if isinstance(node.op, ast.And) else operator.or_

            def both(runs, parts=parts, combine=combine):
                result = parts[0](runs)
                for part in parts[1:]:
                    result = combine(result, part(runs))
                return result

            return both
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            inner = self.boolean(node.operand)
            return lambda runs: ~inner(runs)
        if isinstance(node, ast.Compare):
            return self.compare(node)
        raise FilterError(
            f"expected a comparison such as \"status == 'completed'\", got {ast.unparse(node)!r}"
        )

    def operand(self, node: ast.expr):
        if isinstance(node, ast.Name):
            name = self.names.get(node.id, node.id)
            if name.startswith("__"):
                raise FilterError(f"not a column: {name!r}")
            column = self.resolve(name)
            return lambda runs: runs[column]
        value = _literal(node)
        return lambda runs: value

    def compare(self, node: ast.Compare):
        steps, left = [], self.operand(node.left)
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            right = self.operand(right_node)
            steps.append(self.step(op, left, right, right_node))
            left = right

        def chained(runs):
            result = steps[0](runs)
            for step in steps[1:]:
                result = result & step(runs)
            return result

        return chained

    @staticmethod
    def step(op: ast.cmpop, left, right, right_node: ast.expr):
        if isinstance(op, ast.In | ast.NotIn):
            values = _literal(right_node)
            if not isinstance(values, list):
                raise FilterError("`in` needs a list, e.g. hidden in [128, 512]")
            negate = isinstance(op, ast.NotIn)
            return lambda runs: _as_mask(left(runs), runs).isin(values) != negate
        if type(op) not in COMPARE:
            raise FilterError(f"operator not allowed: {type(op).__name__}")
        compare = COMPARE[type(op)]

        def evaluate(runs):
            a, b = left(runs), right(runs)
            if b is None or a is None:  # `reason == None`: missing values
                column = a if b is None else b
                missing = pd.Series(column, index=runs.index).isna()
                return missing if isinstance(op, ast.Eq) else ~missing
            return compare(a, b)

        return evaluate


def _as_mask(values, runs: pd.DataFrame) -> pd.Series:
    return values if isinstance(values, pd.Series) else pd.Series(values, index=runs.index)


def nesting(expr: str) -> int:
    """The deepest nesting of brackets and unary operators, from the tokens (no parse tree).

    A unary operator stays open until the operand it applies to, or until `and`/`or` end it at its
    bracket's level; `not in` and `is not` are comparisons, not unary operators."""
    tokens = [t for t in tokenize.generate_tokens(io.StringIO(expr).readline) if t.string]
    levels, deepest = [0], 0  # per open bracket: the unary operators open inside it
    for i, token in enumerate(tokens):
        text = token.string
        unary = text in UNARY and not (
            text == "not"
            and (
                (i + 1 < len(tokens) and tokens[i + 1].string == "in")
                or (i and tokens[i - 1].string == "is")
            )
        )
        if unary or text in OPEN:
            levels[-1] += unary
            if text in OPEN:
                levels.append(0)
            deepest = max(deepest, len(levels) - 1 + sum(levels))
        elif text in CLOSE:
            if len(levels) > 1:
                levels.pop()
            levels[-1] = 0  # the bracket was the operand of any unary operator before it
        elif text in ("and", "or") or token.type in (
            tokenize.NAME,
            tokenize.NUMBER,
            tokenize.STRING,
        ):
            levels[-1] = 0
    return deepest


def check_size(expr: str) -> None:
    """Refuse an empty, too long or too deeply nested expression before it is parsed."""
    if not expr.strip():
        raise FilterError("empty expression (leave --where out to keep every run)")
    if len(expr) > MAX_LENGTH:
        raise FilterError(f"longer than {MAX_LENGTH:,} characters ({len(expr):,})")
    try:
        depth = nesting(BACKTICKED.sub("name", expr))
    except (tokenize.TokenError, SyntaxError) as e:
        raise FilterError(f"not an expression ({e.args[0]})") from None
    if depth > MAX_DEPTH:
        raise FilterError(
            f"nested {depth} deep: at most {MAX_DEPTH} brackets and unary operators "
            "(`not`, `-`) may be open at once"
        )


def compile_where(expr: str, resolve: Callable[[str], str]) -> Callable[[pd.DataFrame], pd.Series]:
    """A function from the runs table to a boolean mask; FilterError for anything not accepted.

    `resolve` maps a name as typed to a summary.csv column (raising for an unknown one)."""
    names: dict[str, str] = {}

    def placeholder(match: re.Match) -> str:
        key = f"_backticked_{len(names)}_"
        while key in expr:
            key += "_"
        names[key] = match.group(1)
        return key

    check_size(expr)
    try:
        tree = ast.parse(BACKTICKED.sub(placeholder, expr).strip(), mode="eval")
    except SyntaxError as e:
        raise FilterError(f"not an expression ({e.msg})") from None
    compiled = _Compiler(names, resolve).boolean(tree.body)

    def mask(runs: pd.DataFrame) -> pd.Series:
        try:
            result = _as_mask(compiled(runs), runs)
        except TypeError as e:  # e.g. `status > 3`: str against int
            raise FilterError(f"cannot compare these values ({e})") from None
        return result.astype("boolean").fillna(False).astype(bool)

    return mask
