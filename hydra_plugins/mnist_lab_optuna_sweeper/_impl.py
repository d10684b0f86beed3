"""Optuna study as a Hydra multirun: ask trials, launch them as jobs, tell the results.

Design (docs/ARCHITECTURE.md has the contracts it serves):

- Search space: Hydra's sweep syntax (`choice`, `range`, `interval`, `int(interval)`,
  `tag(log, ...)`) from `hydra.sweeper.params`, then the command line (same key: the command line
  wins). Each override becomes an Optuna distribution; plain values are passed to every job.
- Ask/tell with public Optuna APIs: `study.ask(fixed_distributions=...)` per trial, the launcher
  runs a batch of `n_jobs` trials, `study.tell(...)` with the job's value or its failure.
- `n_trials` is the number of finished trials the study should have, counted in the storage
  before every ask: reruns top the study up, concurrent workers share the count.
- Every job gets `hydra.sweep.subdir=trial_NNNN` (directories named by trial number, never reused)
  and `hydra.job.env_set.MNIST_LAB_OPTUNA_TRIAL=<number>` plus the resolved study name and storage,
  which `mnist_lab.pruning` reads to report per-epoch values to the same trial.
- A job that raises, returns something other than a finite number, or leaves a record with status
  failed/diverged is told FAIL with a `reason` user attribute; a value that does not compose fails
  only its trial (composed here before launching, so the launcher never sees it).
- Stale trials (their sweeper was killed): see `stale_reason`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import socket
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    ChoiceSweep,
    Glob,
    IntervalSweep,
    Override,
    RangeSweep,
    Transformer,
)
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_class, get_method
from omegaconf import DictConfig, ListConfig, OmegaConf
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from .config import TRIAL_ENV

log = logging.getLogger(__name__)

SQLITE_TIMEOUT_S = 30
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
# Storages of studies kept in memory (storage: null), by study name: jobs that run in this
# process (Hydra's basic launcher) can still report to their trial.
LOCAL_STORAGES: dict[str, optuna.storages.BaseStorage] = {}


class SweeperError(CompactHydraException):
    """Printed by Hydra as its message alone (one line), exit status 1."""


# ---------------------------------------------------------------- search space


@dataclass
class Param:
    """One searched key: the Optuna distribution and how a sampled value becomes an override."""

    name: str  # Optuna parameter name: the config key (with @package)
    key: str  # as the job's override writes it (with +/++ prefix)
    distribution: BaseDistribution
    grid: list[Any] | None  # every value, for the grid sampler; None when continuous
    raw: dict[str, str] | None = None  # choice values that are lists/dicts: encoded -> Hydra text

    def override(self, value: Any) -> str:
        if self.raw is not None and isinstance(value, str) and value in self.raw:
            return f"{self.key}={self.raw[value]}"
        return f"{self.key}={render_value(value)}"


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
    values = list(override.sweep_iterator())  # Hydra's own values: the stop is excluded
    if not values:
        raise SweeperError(f"{name}={override.input_line.split('=', 1)[1]} is empty")
    if sweep.shuffle:
        return _choice_param(override, values)
    step = abs(sweep.step)
    low, high = min(values), max(values)
    if all(isinstance(v, int) for v in values):
        dist: BaseDistribution = IntDistribution(low, high, step=int(step))
    else:
        dist = FloatDistribution(float(low), float(high), step=float(step))
    return Param(name, override.get_key_element(), dist, sorted(values))


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
        raise SweeperError(f"{override.input_line}: {_one_line(e)}") from None


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
            raise SweeperError(f"cannot parse {line!r}: {_one_line(e)}") from None
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
                raise SweeperError(f"search_space.{name}: {_one_line(e)}") from None
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
        grid[p.name] = p.grid
    return grid


# ---------------------------------------------------------------- Optuna objects from config


def _kwargs(cfg: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    cfg = dict(cfg)
    target = cfg.pop("_target_", None)
    if not target:
        raise SweeperError("no _target_ given")
    return target, {k: v for k, v in cfg.items() if v is not None and not k.startswith("_")}


def _build(kind: str, cfg: Any, **extra: Any) -> Any:
    try:
        target, kwargs = _kwargs(cfg)
    except SweeperError as e:
        raise SweeperError(f"hydra.sweeper.{kind}: {e}") from None
    try:
        cls = get_class(target)
    except Exception:
        raise SweeperError(f"hydra.sweeper.{kind}: unknown class {target!r}") from None
    if target.endswith("CmaEsSampler") and not _has_module("cmaes"):
        raise SweeperError(f"hydra.sweeper.{kind}: {target} needs `pip install cmaes`")
    try:
        return cls(**kwargs, **extra)
    except Exception as e:
        raise SweeperError(f"hydra.sweeper.{kind}: {target}: {_one_line(e)}") from None


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def build_sampler(
    cfg: Any, grid: dict[str, list[Any]] | None = None
) -> optuna.samplers.BaseSampler:
    return _build("sampler", cfg, **({"search_space": grid} if grid is not None else {}))


def build_pruner(cfg: Any) -> optuna.pruners.BasePruner:
    """The study's pruner from `hydra.sweeper.pruner` (null: no pruning); the job uses it too."""
    return optuna.pruners.NopPruner() if cfg is None else _build("pruner", cfg)


def _get(cfg: Any, key: str) -> Any:
    return cfg.get(key) if isinstance(cfg, (Mapping, DictConfig)) else None


def is_grid(cfg: Any) -> bool:
    return _get(cfg, "_target_") == "optuna.samplers.GridSampler"


def absolute_storage_url(url: str | None) -> str | None:
    """SQLite paths made absolute, so jobs that change directory still find the database."""
    prefix = "sqlite:///"
    if url is None or not url.startswith(prefix):
        return url
    path = url[len(prefix) :]
    if not path or path.startswith(":memory:") or path.startswith("file:"):
        return url
    return prefix + str(Path(path).expanduser().resolve())


def make_storage(url: str | None) -> optuna.storages.BaseStorage:
    """RDB storage for a URL (SQLite waits for locks instead of failing); in memory for None."""
    if url is None:
        return optuna.storages.InMemoryStorage()
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
        if path and not path.startswith((":memory:", "file:")):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        return _rdb_storage(url, {"connect_args": {"timeout": SQLITE_TIMEOUT_S}})
    return _rdb_storage(url, {"pool_pre_ping": True})


def _rdb_storage(url: str, engine_kwargs: dict, attempts: int = 5) -> optuna.storages.RDBStorage:
    """RDBStorage, retried while another worker is creating the same database's schema.

    Two sweeps started together on a new database both try to create Optuna's tables and alembic
    version row; the loser gets an IntegrityError (or a lock error) and, on retry, finds them made.
    """
    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        except (IntegrityError, OperationalError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- workers and stale trials


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def this_worker() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pidns": _pid_namespace(), "pid": os.getpid()}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True
    return True


def _now() -> datetime:
    return datetime.now(timezone.utc)


def stale_reason(
    trial: FrozenTrial,
    now: datetime,
    grace_period: float,
    here: Mapping[str, Any],
    mine: set[int] = frozenset(),  # type: ignore[assignment]
) -> str | None:
    """Why a RUNNING trial is left over from a dead worker, or None if it may still be alive.

    Each trial carries its sweeper's identity (`worker`: host, pid namespace, pid) and a
    `heartbeat_at` time the sweeper refreshes while the trial runs. A trial is stale when
    - its worker ran on this host in this pid namespace and that process no longer exists
      (immediate, exact: a rerun after a crash or `kill -9` cleans up at once), or
    - its worker is elsewhere and its heartbeat is older than `grace_period` (other machines,
      other containers; the grace absorbs clock skew and a sweeper blocked on a busy database).
    A live concurrent worker keeps its trials: its process exists, or its heartbeat is fresh.
    Trials without our attributes (made by other tools) are never touched.
    """
    worker = trial.user_attrs.get("worker")
    if trial.state != TrialState.RUNNING or trial.number in mine or not isinstance(worker, dict):
        return None
    same_machine = worker.get("host") == here["host"] and worker.get("pidns") == here["pidns"]
    if same_machine and here["pidns"]:
        pid = int(worker.get("pid", -1))
        if pid == here["pid"]:
            return "left running by an earlier sweep in this process"
        if not _pid_alive(pid):
            return f"its sweeper (pid {pid} on {worker['host']}) is gone"
        return None
    try:
        beat = datetime.fromisoformat(str(trial.user_attrs.get("heartbeat_at")))
    except ValueError:
        return None
    age = (now - beat).total_seconds()
    if age > grace_period:
        return f"no heartbeat from {worker.get('host')} pid {worker.get('pid')} for {age:.0f} s"
    return None


class _Heartbeat:
    """Refreshes `heartbeat_at` of the trials in flight while a batch runs."""

    def __init__(self, trials: Sequence[optuna.Trial], interval: float):
        self.trials, self.interval = list(trials), interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="optuna-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            for trial in self.trials:
                try:
                    trial.set_user_attr("heartbeat_at", _now().isoformat())
                except Exception as e:  # finished meanwhile, or the database is busy
                    log.debug("heartbeat of trial %d: %s", trial.number, e)

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()


# ---------------------------------------------------------------- job results


def objective_values(value: Any, n_objectives: int) -> tuple[list[float] | None, str | None]:
    """(values, None) for a finite number per objective, else (None, why not)."""
    if n_objectives == 1:
        items = [value]
    elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        items = list(value)
        if len(items) != n_objectives:
            return None, f"returned {len(items)} values for {n_objectives} objectives"
    else:
        return None, f"returned {_short(value)}, expected {n_objectives} numbers"
    values = []
    for item in items:
        if isinstance(item, (str, bytes, bool)) or not hasattr(item, "__float__"):
            return None, f"returned {_short(item)}, not a number"
        try:
            number = float(item)
        except (TypeError, ValueError) as e:
            return None, f"returned {_short(item)}, not a number ({e})"
        if not math.isfinite(number):
            return None, f"returned {number}"
        values.append(number)
    return values, None


def read_record(run_dir: Path | None) -> dict[str, Any] | None:
    if run_dir is None:
        return None
    try:
        return json.loads((Path(run_dir) / "result.json").read_text())
    except (OSError, ValueError):
        return None


def record_attrs(record: Mapping[str, Any] | None) -> dict[str, Any]:
    """The trial's user attributes from a job's result.json (docs/ARCHITECTURE.md)."""
    if not record:
        return {}
    final, best = record.get("final") or {}, record.get("best") or {}
    attrs = {
        "status": record.get("status"),
        "test_acc": final.get("test/acc"),
        "val_acc": final.get("val/acc"),
        "best_epoch": best.get("epoch"),
        "best_val_acc": best.get("val/acc"),
        "best_test_acc": best.get("test/acc"),
        "epochs_run": record.get("epochs_run"),
        "wall_seconds": record.get("wall_seconds"),
        "run_dir": record.get("run_dir"),
    }
    return {k: v for k, v in attrs.items() if v is not None}


def tell(
    study: optuna.Study,
    trial: optuna.Trial | int,
    state: TrialState,
    values: list[float] | None = None,
) -> None:
    """study.tell, tolerating GridSampler's `study.stop()` (only allowed inside optimize())."""
    try:
        study.tell(trial, values=values, state=state, skip_if_finished=True)
    except RuntimeError as e:  # the state is stored before the sampler's hook raises
        if "Study.stop" not in str(e):
            raise


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


# ---------------------------------------------------------------- the sweeper


class OptunaSweeperImpl(Sweeper):
    def __init__(
        self,
        sampler: Any,
        direction: Any = "minimize",
        storage: str | None = None,
        study_name: str | None = None,
        n_trials: int = 20,
        n_jobs: int | None = None,
        max_failure_rate: float = 0.5,
        pruner: Any = None,
        params: Mapping[str, Any] | None = None,
        search_space: Mapping[str, Any] | None = None,
        custom_search_space: str | None = None,
        heartbeat_interval: float = 30.0,
        grace_period: float = 300.0,
    ) -> None:
        self.sampler_cfg, self.pruner_cfg = sampler, pruner
        self.direction = direction
        self.storage_url = storage
        self.study_name = study_name
        self.n_trials, self.n_jobs = n_trials, n_jobs
        self.max_failure_rate = max_failure_rate
        self.params, self.search_space = params, search_space
        self.custom_search_space = custom_search_space
        self.heartbeat_interval, self.grace_period = heartbeat_interval, grace_period
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher = None
        self.job_idx = 0
        self.worker = this_worker()
        self.in_flight: set[int] = set()

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config, self.hydra_context, self.job_idx = config, hydra_context, 0
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    # ------------------------------------------------------------ validation

    def _directions(self) -> list[str]:
        raw = self.direction
        if isinstance(raw, (ListConfig, list, tuple)):
            items = list(raw)
        else:
            items = [raw]
        names = [getattr(d, "name", d) for d in items]
        if not names or any(n not in ("minimize", "maximize") for n in names):
            raise SweeperError(
                f"hydra.sweeper.direction={self.direction!r}: use minimize, maximize or a list"
            )
        return [str(n) for n in names]

    def _check_numbers(self) -> None:
        def bad(key: str, value: Any, allowed: str) -> SweeperError:
            return SweeperError(f"hydra.sweeper.{key}={value!r} is not allowed: {allowed}")

        if (
            not isinstance(self.n_trials, int)
            or isinstance(self.n_trials, bool)
            or self.n_trials < 0
        ):
            raise bad("n_trials", self.n_trials, "an integer >= 0")
        if self.n_jobs is not None and (not isinstance(self.n_jobs, int) or self.n_jobs < 1):
            raise bad("n_jobs", self.n_jobs, "null or an integer >= 1")
        rate = self.max_failure_rate
        if not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
            raise bad("max_failure_rate", rate, "a number in [0, 1]")
        for key in ("heartbeat_interval", "grace_period"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or value <= 0:
                raise bad(key, value, "a number of seconds > 0")
        if self.grace_period <= self.heartbeat_interval:
            raise bad("grace_period", self.grace_period, "longer than heartbeat_interval")

    def _batch_size(self) -> int:
        if self.n_jobs is not None:
            return self.n_jobs
        assert self.config is not None
        launcher_jobs = self.config.hydra.launcher.get("n_jobs")
        if isinstance(launcher_jobs, int) and launcher_jobs > 0:
            return launcher_jobs
        if isinstance(launcher_jobs, int) and launcher_jobs < 0:  # joblib: -1 is every core
            return max(1, (os.cpu_count() or 1) + 1 + launcher_jobs)
        return 1

    # ------------------------------------------------------------ the sweep

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        assert self.config is not None and self.launcher is not None
        # Everything that can be wrong with the sweeper config is found here, before any trial.
        directions = self._directions()
        self._check_numbers()
        if self.params is not None and self.search_space:
            log.warning("hydra.sweeper.params and search_space both set: using params only")
            self.search_space = None
        space, fixed = parse_search_space(self.params, arguments, self.search_space)
        grid = grid_of(space) if is_grid(self.sampler_cfg) else None
        if grid is not None and self.custom_search_space:
            raise SweeperError("grid sampler: custom_search_space cannot be used with a grid")
        extend = get_method(self.custom_search_space) if self.custom_search_space else None
        sampler = build_sampler(self.sampler_cfg, grid)
        pruner = build_pruner(self.pruner_cfg)
        target = self.n_trials
        if grid is not None:
            size = math.prod(len(v) for v in grid.values())
            if target > size:
                log.info("n_trials %d clamped to the grid size %d", target, size)
            target = min(target, size)
        url = absolute_storage_url(self.storage_url)
        study, storage = self._open_study(url, sampler, pruner, directions)

        self._fail_stale(study, storage)
        finished, running = self._counts(study)
        planned = max(0, target - finished - running)
        log.info(
            "Optuna study %r (%s): %d finished, %d running; running %d more (n_trials=%d), "
            "sampler %s, pruner %s",
            study.study_name,
            url or "in memory",
            finished,
            running,
            planned,
            target,
            type(sampler).__name__,
            type(pruner).__name__,
        )
        failed = 0
        returns: list[Sequence[JobReturn]] = []
        while not (
            isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(study)
        ):
            self._fail_stale(study, storage)
            batch = self._ask_batch(study, target, space, fixed, extend, url)
            if not batch:
                break
            batch_returns, batch_failed = self._run_batch(study, batch, len(directions))
            returns.append(batch_returns)
            failed += batch_failed
            if failed > self.max_failure_rate * planned:
                self._report(study, url, directions)
                raise SweeperError(
                    f"stopping the sweep: {failed} of the trials it ran failed, more than "
                    f"max_failure_rate={self.max_failure_rate} of {planned} (reasons: user "
                    f"attribute `reason`, or the job logs)"
                )
        message = self._report(study, url, directions)
        if message is not None:
            raise SweeperError(message)
        return returns

    def _open_study(
        self, url: str | None, sampler: Any, pruner: Any, directions: list[str]
    ) -> tuple[optuna.Study, optuna.storages.BaseStorage]:
        """Create the study or load it to resume; refuse one stored with other directions."""
        try:
            storage = make_storage(url)
            study = optuna.create_study(
                storage=storage,
                sampler=sampler,
                pruner=pruner,
                study_name=self.study_name,
                directions=directions,
                load_if_exists=True,
            )
        except Exception as e:
            raise SweeperError(
                f"hydra.sweeper.storage={self.storage_url!r}: {_one_line(e)}"
            ) from None
        stored = [d.name.lower() for d in study.directions]
        if stored != directions:
            raise SweeperError(
                f"study {study.study_name!r} was created with direction {stored}, not {directions}"
            )
        if url is None:
            LOCAL_STORAGES[study.study_name] = storage
        if _get(self.sampler_cfg, "seed") is not None and study.get_trials(deepcopy=False):
            # A seeded sampler restarted on a resumed study would propose its first trials again.
            sampler.reseed_rng()
            log.info("study has trials already: the seeded sampler is reseeded (no repeats)")
        return study, storage

    def _ask_batch(
        self,
        study: optuna.Study,
        target: int,
        space: Sequence[Param],
        fixed: list[str],
        extend: Any,
        url: str | None,
    ) -> list[tuple[optuna.Trial, list[str]]]:
        """Up to n_jobs new trials with their job overrides, while the study is short of target.

        Finished + running trials are counted again before every ask, so concurrent workers
        (which count each other's running trials) overshoot by at most a racing ask.
        """
        distributions = {p.name: p.distribution for p in space}
        by_name = {p.name: p for p in space}
        batch: list[tuple[optuna.Trial, list[str]]] = []
        try:
            while len(batch) < self._batch_size():
                finished, running = self._counts(study)
                if finished + running >= target:
                    break
                trial = study.ask(fixed_distributions=distributions)
                self.in_flight.add(trial.number)
                batch.append((trial, []))
                if extend is not None:
                    extend(self.config, trial)
                batch[-1] = (trial, self._overrides(trial, fixed, by_name, study, url))
        except BaseException as e:
            self._fail_unfinished(study, [t for t, _ in batch], e)
            raise
        return batch

    def _run_batch(
        self, study: optuna.Study, batch: list[tuple[optuna.Trial, list[str]]], n_objectives: int
    ) -> tuple[Sequence[JobReturn], int]:
        """Launch the trials that compose, tell every outcome; (job returns, failed trials)."""
        assert self.launcher is not None
        try:
            jobs, failed = self._compose(study, batch)
            results: Sequence[JobReturn] = []
            if jobs:
                with _Heartbeat([t for t, _ in jobs], self.heartbeat_interval):
                    results = self.launcher.launch(
                        [o for _, o in jobs], initial_job_idx=self.job_idx
                    )
                self.job_idx += len(results)
                for (trial, _), ret in zip(jobs, results, strict=True):
                    failed += self._tell(study, trial, ret, n_objectives)
            return results, failed
        except BaseException as e:  # Ctrl-C, a launcher error: never leave trials RUNNING
            self._fail_unfinished(study, [t for t, _ in batch], e)
            raise
        finally:
            self.in_flight.clear()

    def _counts(self, study: optuna.Study) -> tuple[int, int]:
        trials = study.get_trials(deepcopy=False)
        finished = sum(t.state in FINISHED for t in trials)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        return finished, running

    def _fail_stale(self, study: optuna.Study, storage: optuna.storages.BaseStorage) -> None:
        now = _now()
        study_id = None
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            reason = stale_reason(trial, now, self.grace_period, self.worker, self.in_flight)
            if reason is None:
                continue
            try:
                if study_id is None:
                    study_id = storage.get_study_id_from_name(study.study_name)
                trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
                storage.set_trial_user_attr(trial_id, "reason", f"stale: {reason}")
                storage.set_trial_user_attr(trial_id, "status", "stale")
                tell(study, trial.number, TrialState.FAIL)
            except Exception as e:  # another worker failed or finished it first
                log.debug("stale trial %d: %s", trial.number, e)
                continue
            log.warning("trial %d marked failed: %s", trial.number, reason)

    def _overrides(
        self,
        trial: optuna.Trial,
        fixed: list[str],
        by_name: Mapping[str, Param],
        study: optuna.Study,
        url: str | None,
    ) -> list[str]:
        assert self.config is not None
        task = list(fixed)
        for name, value in trial.params.items():
            param = by_name.get(name)
            task.append(param.override(value) if param else f"{name}={render_value(value)}")
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        subdir = f"trial_{trial.number:04d}"
        suffix = 1
        while (sweep_dir / subdir).exists():  # a sweep dir reused by another study
            suffix += 1
            subdir = f"trial_{trial.number:04d}_{suffix}"
        trial.set_user_attr("worker", self.worker)
        trial.set_user_attr("heartbeat_at", _now().isoformat())
        trial.set_user_attr("overrides", task)
        trial.set_user_attr("run_dir", os.path.abspath(sweep_dir / subdir))
        hydra = [
            f"hydra.sweep.subdir={subdir}",
            f"++hydra.job.env_set.{TRIAL_ENV}='{trial.number}'",
            f"hydra.sweeper.study_name={quote(study.study_name)}",
        ]
        if url is not None:
            hydra.append(f"hydra.sweeper.storage={quote(url)}")
        return task + hydra

    def _compose(
        self, study: optuna.Study, batch: list[tuple[optuna.Trial, list[str]]]
    ) -> tuple[list[tuple[optuna.Trial, list[str]]], int]:
        """Compose each trial's config now: one that fails is told FAIL and not launched."""
        assert self.hydra_context is not None and self.config is not None
        ok, failed = [], 0
        for trial, overrides in batch:
            try:
                self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            except Exception as e:
                reason = f"config: {_one_line(e)}"
                trial.set_user_attr("reason", reason)
                trial.set_user_attr("status", "failed")
                tell(study, trial, TrialState.FAIL)
                self.in_flight.discard(trial.number)
                log.warning("trial %d failed: %s", trial.number, reason)
                failed += 1
            else:
                ok.append((trial, overrides))
        return ok, failed

    def _tell(self, study: optuna.Study, trial: optuna.Trial, ret: JobReturn, n: int) -> int:
        """Tell the job's outcome; returns 1 if the trial failed."""
        run_dir = None
        if ret.hydra_cfg is not None:
            run_dir = Path(ret.hydra_cfg.hydra.runtime.output_dir)
        record = read_record(run_dir)
        attrs = record_attrs(record)
        status = (record or {}).get("status")
        reason = (record or {}).get("reason")
        values = None
        if ret.status == JobStatus.FAILED:
            # The exception the job raised (JobReturn.return_value would re-raise it and print
            # "Error executing job", which is wrong for a pruned trial).
            error = ret._return_value
            if isinstance(error, optuna.TrialPruned):
                state, reason = TrialState.PRUNED, reason or _one_line(error) or "pruned"
            else:
                state, reason = TrialState.FAIL, f"{type(error).__name__}: {_one_line(error)}"
        elif status in ("failed", "diverged"):
            state, reason = TrialState.FAIL, f"{status}: {reason}"
        elif status == "pruned":
            state = TrialState.PRUNED
        else:
            values, why = objective_values(ret.return_value, n)
            state = TrialState.COMPLETE if why is None else TrialState.FAIL
            reason = reason if why is None else f"objective {why}"
        attrs.setdefault(
            "status", {TrialState.COMPLETE: "completed"}.get(state, state.name.lower())
        )
        if reason:
            attrs["reason"] = str(reason)
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        tell(study, trial, state, values)
        self.in_flight.discard(trial.number)
        if state == TrialState.COMPLETE:
            assert values is not None
            shown = ", ".join(f"{v:.6g}" for v in values)
            log.info("trial %d complete: %s (%s)", trial.number, shown, _params_text(trial.params))
        else:
            log.warning("trial %d %s: %s", trial.number, state.name.lower(), reason)
        return int(state == TrialState.FAIL)

    def _fail_unfinished(
        self, study: optuna.Study, trials: Sequence[optuna.Trial], error: BaseException
    ) -> None:
        """Never leave a trial RUNNING when the sweep stops (Ctrl-C, a launcher error)."""
        for trial in trials:
            if trial.number not in self.in_flight:
                continue
            try:
                trial.set_user_attr("reason", f"interrupted: {type(error).__name__}")
                trial.set_user_attr("status", "interrupted")
                tell(study, trial, TrialState.FAIL)
            except Exception as e:
                log.debug("could not fail trial %d: %s", trial.number, e)

    # ------------------------------------------------------------ results

    def _retrain_command(self, trial: FrozenTrial) -> str | None:
        overrides = trial.user_attrs.get("overrides")
        if not isinstance(overrides, list):
            return None
        assert self.config is not None
        argv = ["python", sys.argv[0] or "experiments/run.py", *map(str, overrides)]
        # Hydra adds hydra.mode=MULTIRUN for -m; without it, the config itself asks for a
        # multirun (like lightning-hydra-template's hparams_search), which a retrain must undo.
        if "hydra.mode=MULTIRUN" not in self.config.hydra.overrides.hydra:
            argv.append("hydra.mode=RUN")
        return " ".join(map(shell_quote, argv))

    def _describe(self, trial: FrozenTrial) -> dict[str, Any]:
        out: dict[str, Any] = {"number": trial.number}
        if len(trial.values or []) > 1:
            out["values"] = list(trial.values)
        else:
            out["value"] = trial.value
        out["params"] = dict(trial.params)
        for key in (
            "run_dir",
            "test_acc",
            "best_val_acc",
            "best_test_acc",
            "epochs_run",
            "wall_seconds",
        ):
            if key in trial.user_attrs:
                out[key] = trial.user_attrs[key]
        command = self._retrain_command(trial)
        if command:
            out["retrain"] = command
        return out

    def _report(self, study: optuna.Study, url: str | None, directions: list[str]) -> str | None:
        """Print and write the best trial (or Pareto front); the error message if none completed."""
        assert self.config is not None
        trials = study.get_trials(deepcopy=False)
        counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
        result: dict[str, Any] = {
            "name": "optuna",
            "study_name": study.study_name,
            "storage": url,
            "directions": directions,
            "n_trials": self.n_trials,
            "trials": {k: v for k, v in counts.items() if v},
        }
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        message = None
        if not complete:
            message = (
                f"no trial of study {study.study_name!r} completed "
                f"({', '.join(f'{v} {k}' for k, v in result['trials'].items()) or 'no trials'}); "
                "see each trial's `reason` user attribute"
            )
            result["best_trial"] = None
        elif len(directions) == 1:
            best = self._describe(study.best_trial)
            result.update(best_value=best["value"], best_params=best["params"], best_trial=best)
            log.info(
                "Best trial %d of study %r: value %.6g (%s)\n  run dir: %s\n  retrain: %s",
                best["number"],
                study.study_name,
                best["value"],
                _params_text(best["params"]),
                best.get("run_dir"),
                best.get("retrain"),
            )
        else:
            pareto = [self._describe(t) for t in study.best_trials]
            result["pareto_front"] = pareto
            log.info("Pareto front of study %r (%d trials):", study.study_name, len(pareto))
            for best in pareto:
                log.info(
                    "  trial %d: values %s (%s)\n    run dir: %s\n    retrain: %s",
                    best["number"],
                    best["values"],
                    _params_text(best["params"]),
                    best.get("run_dir"),
                    best.get("retrain"),
                )
        path = Path(str(self.config.hydra.sweep.dir)) / "optimization_results.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(result), path)
        log.info("Study summary written to %s", path)
        return message


def _params_text(params: Mapping[str, Any]) -> str:
    return ", ".join(
        f"{k}={v!r}"
        if isinstance(v, str)
        else f"{k}={v:.6g}"
        if isinstance(v, float)
        else f"{k}={v}"
        for k, v in params.items()
    )
