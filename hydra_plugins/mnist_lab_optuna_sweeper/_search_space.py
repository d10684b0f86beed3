"""The search space: Hydra's sweep syntax as Optuna distributions, sampled values as overrides.

`choice`, `range`, `interval`, `int(interval)` and `tag(log, ...)` from `hydra.sweeper.params`, then
the command line (same key: the command line wins). Each override becomes an Optuna distribution;
plain values are passed to every job.

`range()` follows Hydra's official Optuna sweeper: for every sampler but the grid its stop is
included when it falls on the step (`range(4, 6)` samples 4, 5 and 6; `range(0.5, 5.5, step=1)`
goes up to 5.5); the grid sampler runs Hydra's own values, the stop excluded (`Param.grid`).
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    ChoiceSweep,
    Glob,
    IntervalSweep,
    Override,
    RangeSweep,
    Transformer,
)
from omegaconf import DictConfig, ListConfig, OmegaConf
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from mnist_lab.job import one_line

from ._errors import SweeperError


@dataclass
class Param:
    """One searched key: the Optuna distribution and how a sampled value becomes an override."""

    name: str  # Optuna parameter name: the config key (with @package)
    key: str  # as the job's override writes it (with +/++ prefix)
    distribution: BaseDistribution
    grid: list[Any] | None  # every value, for the grid sampler; None when continuous
    raw: dict[str, str] | None = None  # choice values that are lists/dicts: encoded -> Hydra text
    grid_distribution: BaseDistribution | None = None  # under the grid sampler, if different

    def override(self, value: Any) -> str:
        if self.raw is not None and isinstance(value, str) and value in self.raw:
            return f"{self.key}={self.raw[value]}"
        return f"{self.key}={render_value(value)}"

    def for_grid(self) -> Param:
        """This parameter as the grid sampler runs it (a range: Hydra's values, stop excluded)."""
        if self.grid_distribution is None:
            return self
        return replace(self, distribution=self.grid_distribution)


def quote(text: str) -> str:
    """A Hydra quoted string that parses back to `text` (spaces, commas, quotes, backslashes)."""
    out, backslashes = [], 0
    for ch in text:
        if ch == "\\":
            backslashes += 1
            continue
        if ch == "'":  # backslashes before a quote are escaped, then the quote itself
            out.append("\\" * (2 * backslashes) + "\\'")
        else:
            out.append("\\" * backslashes + ch)
        backslashes = 0
    out.append("\\" * (2 * backslashes))  # before the closing quote
    return "'" + "".join(out) + "'"


def render_value(value: Any) -> str:
    """A sampled value as Hydra override text that parses back to the same value and type.

    Strings stay bare when Hydra reads them back unchanged (`sgd`), else they are quoted
    (`'c,d'`, `'1'`, `'true'`), so a choice value reaches the job exactly as written.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return value if _parses_as(value, value) else quote(value)
    raise TypeError(f"cannot pass {value!r} ({type(value).__name__}) as an override")


_PARSER: OverridesParser | None = None


def _parses_as(text: str, value: Any) -> bool:
    """Whether `key=<text>` gives back exactly `value` (so bare words like sgd stay unquoted)."""
    global _PARSER
    if _PARSER is None:
        _PARSER = OverridesParser.create()
    try:
        override = _PARSER.parse_override(f"k={text}")
    except Exception:
        return False
    if override.is_sweep_override():
        return False
    parsed = override.value()
    return type(parsed) is type(value) and parsed == value


def shell_quote(arg: str) -> str:
    """shlex.quote, but `key='a b'` reads as "key='a b'" rather than as '"'"' soup."""
    quoted = shlex.quote(arg)
    if quoted == arg or not set(arg) & {"'"} or set(arg) & set('"$`\\!'):
        return quoted
    return f'"{arg}"'


def _key_id(override: Override) -> tuple[str, str | None]:
    return override.key_or_group, override.package


def _param_name(override: Override) -> str:
    return override.key_or_group + (f"@{override.package}" if override.package else "")


def _choice_param(override: Override, values: list[Any]) -> Param:
    name = _param_name(override)
    choices: list[Any] = []
    raw: dict[str, str] = {}
    for value in values:
        if isinstance(value, (list, dict)):  # Optuna choices are scalars: keep Hydra's text
            text = Transformer.str(value)
            raw[text] = text
            value = text
        elif value is not None and not isinstance(value, (str, int, float, bool)):
            raise SweeperError(f"{name}: cannot search over {value!r}")
        if value not in choices:
            choices.append(value)
    return Param(
        name, override.get_key_element(), CategoricalDistribution(choices), choices, raw or None
    )


def _range_param(override: Override, sweep: RangeSweep) -> Param:
    name = _param_name(override)
    text = override.input_line.split("=", 1)[1]
    start, stop, step = sweep.start, sweep.stop, sweep.step
    if not step:
        raise SweeperError(f"{name}={text}: the step must not be 0")
    hydra_values = list(override.sweep_iterator())  # Hydra's own values: the stop is excluded
    if sweep.shuffle:
        if not hydra_values:
            raise SweeperError(f"{name}={text} is empty")
        return _choice_param(override, hydra_values)
    # Like the official plugin: from start by step up to and including stop.
    count = math.floor((Decimal(str(stop)) - Decimal(str(start))) / Decimal(str(step)))
    if count < 0:
        raise SweeperError(f"{name}={text} is empty")
    integer = all(isinstance(v, int) for v in (start, stop, step))
    dist = _stepped(start, step, count, integer)
    # The grid sampler: Hydra's values (empty for range(3, 3): refused if the grid runs).
    grid_dist = _stepped(start, step, len(hydra_values) - 1, integer) if hydra_values else None
    return Param(
        name, override.get_key_element(), dist, sorted(hydra_values), grid_distribution=grid_dist
    )


def _stepped(start: float, step: float, count: int, integer: bool) -> BaseDistribution:
    """The distribution of start, start + step, ..., start + count * step (step may be < 0)."""
    end = Decimal(str(start)) + count * Decimal(str(step))
    low, high = sorted([start, int(end) if integer else float(end)])
    if integer:
        return IntDistribution(int(low), int(high), step=abs(int(step)))
    return FloatDistribution(float(low), float(high), step=abs(float(step)))


def _interval_param(override: Override, sweep: IntervalSweep) -> Param:
    name = _param_name(override)
    text = override.input_line.split("=", 1)[1]
    unknown = set(sweep.tags) - {"log"}
    if unknown:
        raise SweeperError(f"{name}={text}: unknown tag {sorted(unknown)[0]!r} (only 'log')")
    log_scale = "log" in sweep.tags
    low, high = sweep.start, sweep.end
    if low is None or high is None or not low < high:
        raise SweeperError(f"{name}={text}: the lower bound must be below the upper bound")
    if log_scale and low <= 0:
        raise SweeperError(f"{name}={text}: a log interval needs a lower bound above 0")
    if isinstance(low, int) and isinstance(high, int):
        return Param(
            name,
            override.get_key_element(),
            IntDistribution(low, high, log=log_scale),
            list(range(low, high + 1)),
        )
    dist = FloatDistribution(float(low), float(high), log=log_scale)
    return Param(name, override.get_key_element(), dist, None)


def param_from_override(override: Override) -> Param | None:
    """The Optuna parameter an override describes, or None for a plain (fixed) value."""
    try:
        return _param_from_override(override)
    except ValueError as e:  # Optuna refuses the distribution
        raise SweeperError(f"{override.input_line}: {one_line(e)}") from None


def _param_from_override(override: Override) -> Param | None:
    if not override.is_sweep_override():
        return None
    sweep = override.value()
    if isinstance(sweep, Glob):
        raise SweeperError(
            f"{_param_name(override)}: glob() is not supported by the Optuna sweeper"
        )
    if isinstance(sweep, ChoiceSweep):
        return _choice_param(override, list(override.sweep_iterator()))
    if isinstance(sweep, RangeSweep):
        return _range_param(override, sweep)
    if isinstance(sweep, IntervalSweep):
        return _interval_param(override, sweep)
    raise SweeperError(f"{override.input_line}: not supported by the Optuna sweeper")


def _param_from_spec(name: str, spec: Mapping[str, Any]) -> Param:
    """The official plugin's deprecated `search_space` entry ({type, low, high, log, step, choices})."""
    kind = str(spec.get("type", "")).rsplit(".", 1)[-1]
    if kind == "categorical":
        choices = list(spec.get("choices") or [])
        if not choices:
            raise SweeperError(f"search_space.{name}: categorical needs choices")
        return Param(name, name, CategoricalDistribution(choices), choices)
    if kind not in ("int", "float"):
        raise SweeperError(f"search_space.{name}: type must be categorical, int or float")
    low, high, step, log_scale = (
        spec.get("low"),
        spec.get("high"),
        spec.get("step"),
        spec.get("log"),
    )
    if low is None or high is None or not low < high:
        raise SweeperError(f"search_space.{name}: low must be below high")
    if log_scale and low <= 0:
        raise SweeperError(f"search_space.{name}: log needs low above 0")
    if kind == "int":
        step = int(step or 1)
        grid = list(range(int(low), int(high) + 1, step))
        return Param(
            name, name, IntDistribution(int(low), int(high), log=bool(log_scale), step=step), grid
        )
    dist = FloatDistribution(float(low), float(high), log=bool(log_scale), step=step)
    return Param(name, name, dist, None)


def fixed_names(fixed: Sequence[str]) -> set[str]:
    """The names of `parse_search_space`'s fixed overrides, spelled as `Param.name` spells a
    searched one (`key`, or `key@package`)."""
    parser = OverridesParser.create()
    return {_param_name(parser.parse_override(line)) for line in fixed}


def parse_search_space(
    params: Mapping[str, Any] | None,
    arguments: Sequence[str],
    search_space: Mapping[str, Any] | None = None,
) -> tuple[list[Param], list[str]]:
    """(searched parameters, fixed overrides) from config `params` and command-line arguments.

    A command-line argument replaces a `params` entry of the same key (it keeps its place).
    """
    lines = [
        f"{key}={value if isinstance(value, str) else _yaml_value(value)}"
        for key, value in (params or {}).items()
    ]
    parser = OverridesParser.create()
    merged: dict[tuple[str, str | None], Override] = {}
    for line in [*lines, *arguments]:
        try:
            override = parser.parse_override(line)
        except Exception as e:
            raise SweeperError(f"cannot parse {line!r}: {one_line(e)}") from None
        merged[_key_id(override)] = override
    space: list[Param] = []
    fixed: list[str] = []
    for override in merged.values():
        param = param_from_override(override)
        if param is None:
            fixed.append(override.input_line)
        else:
            space.append(param)
    taken = {p.name for p in space} | {k for k, _ in merged}
    for name, spec in (search_space or {}).items():
        if name not in taken:
            try:
                space.append(_param_from_spec(str(name), spec))
            except ValueError as e:
                raise SweeperError(f"search_space.{name}: {one_line(e)}") from None
    return space, fixed


def _yaml_value(value: Any) -> str:
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, (list, dict)):
        return Transformer.str(value)
    return render_value(value)


def grid_of(space: Sequence[Param]) -> dict[str, list[Any]]:
    grid = {}
    for p in space:
        if p.grid is None:
            raise SweeperError(
                f"grid sampler: {p.name} is continuous; use choice(), range() or int(interval())"
            )
        if not p.grid:
            raise SweeperError(
                f"grid sampler: {p.name} has no values (a range excludes its stop, like Hydra's)"
            )
        grid[p.name] = p.grid
    return grid
