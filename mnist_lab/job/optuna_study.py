"""What the Optuna sweeper and its jobs share about a study: how a job finds its trial, how the
storage is opened, how Optuna objects are built from config, and how a storage URL is shown.

The sweeper (`hydra_plugins/mnist_lab_optuna_sweeper`) imports this module; the job side
(`mnist_lab.job.trial_reporting`) imports it too, so both open the storage and build the pruner the
same way without the core package importing the plugin. Optuna is imported inside the functions:
plain runs never pay for it.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mnist_lab.errors import StorageUnavailable

# Each job's Hydra config carries its trial number as hydra.job.env_set.<TRIAL_ENV>.
TRIAL_ENV = "MNIST_LAB_OPTUNA_TRIAL"
# SQLite: a writer waits this long for another process's lock instead of failing at once.
SQLITE_TIMEOUT_S = 30
# Keys whose value is a function: a dotted path string is resolved to the function itself.
CALLABLE_KEYS = frozenset(
    {
        "constraints_func",
        "gamma",
        "weights",
        "elite_population_selection_strategy",
        "child_generation_strategy",
        "after_trial_strategy",
    }
)

# Storages of studies kept in memory (storage: null), by study name: jobs that run in the
# sweeper's process (Hydra's basic launcher) can still report to their trial.
_IN_MEMORY: dict[str, Any] = {}


# `scheme://user:password@host...`: the password is what lies between the first ':' after `//`
# and the last '@' before the host.
_USER_PASSWORD = re.compile(r"(://[^/@:]*:)([^/]*)@")


class OptunaConfigError(ValueError):
    """A `_target_` node that does not build (unknown class, refused argument): one line."""


def _password(url: str) -> str | None:
    match = _USER_PASSWORD.search(url)
    return match.group(2) if match and match.group(2) else None


def display_url(url: str | None) -> str:
    """The storage URL as every log line, message and results file shows it (the one place to
    change how a URL is shown): never with its password (`postgresql://user:***@host/db`)."""
    if url is None:
        return "in memory"
    return _USER_PASSWORD.sub(r"\1***@", url) if _password(url) else url


def hide_password(text: str, url: str | None) -> str:
    """`text` (a driver's error message, say) with the URL's password replaced by ***."""
    password = _password(url) if url else None
    return text.replace(password, "***") if password else text


def from_config(cfg: Any, **extra: Any) -> Any:
    """The object a `{_target_: class, key: value}` node describes, as the sweeper's schema writes
    it: keys left null are not passed (the class's own default applies), keys starting with `_`
    are Hydra's, nested `_target_` nodes are instantiated (e.g. `independent_sampler`), and a
    dotted path in a key of CALLABLE_KEYS (e.g. `constraints_func: my.module.fn`) is resolved.

    Written by hand rather than `hydra.utils.instantiate` on the whole node: it drops the null
    keys and keeps the class's own error as one line.
    """
    from hydra.utils import get_class, get_method, instantiate
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(cfg, Mapping) or not cfg.get("_target_"):
        raise OptunaConfigError("no _target_ given")
    target = str(cfg["_target_"])
    try:
        cls = get_class(target)
    except Exception:
        raise OptunaConfigError(f"unknown class {target!r}") from None
    kwargs = {}
    for key, value in cfg.items():
        if value is None or str(key).startswith("_"):
            continue
        try:
            if isinstance(value, Mapping) and "_target_" in value:
                value = instantiate(value, _convert_="all")
            elif key in CALLABLE_KEYS and isinstance(value, str):
                value = get_method(value)
        except Exception as e:
            raise OptunaConfigError(f"{key}: {one_line(e)}") from None
        kwargs[key] = value
    try:
        return cls(**kwargs, **extra)
    except Exception as e:
        raise OptunaConfigError(f"{target}: {one_line(e)}") from None


def build_pruner(cfg: Any) -> Any:
    """The study's pruner from `hydra.sweeper.pruner` (null: never prunes); jobs use it too."""
    import optuna

    return optuna.pruners.NopPruner() if cfg is None else from_config(cfg)


def sqlite_path(url: str | None) -> Path | None:
    """The database file of a `sqlite:///PATH` URL; None for another URL or an in-memory one."""
    prefix = "sqlite:///"
    if url is None or not url.startswith(prefix):
        return None
    path = url[len(prefix) :]
    return None if not path or path.startswith((":memory:", "file:")) else Path(path)


def open_storage(url: str | None) -> Any:
    """RDB storage for a URL (SQLite waits for locks instead of failing); in memory for None.
    Creates no folder: the sweeper decides which one may be made (`_study_setup`)."""
    import optuna

    if url is None:
        return optuna.storages.InMemoryStorage()
    if url.startswith("sqlite:///"):
        return _rdb_storage(url, {"connect_args": {"timeout": SQLITE_TIMEOUT_S}})
    return _rdb_storage(url, {"pool_pre_ping": True})


def keep_in_memory(study_name: str, storage: Any) -> None:
    """Make an in-memory study reachable by jobs running in this process."""
    _IN_MEMORY[study_name] = storage


def in_memory_storage(study_name: str) -> Any | None:
    """The storage `keep_in_memory` registered for this study in this process, or None."""
    return _IN_MEMORY.get(study_name)


def _rdb_storage(url: str, engine_kwargs: dict, attempts: int = 5) -> Any:
    """RDBStorage, retried while another worker is creating the same database's schema.

    Two sweeps started together on a new database both try to create Optuna's tables and alembic
    version row; the loser gets an IntegrityError, a lock error, or (PostgreSQL) a "type or table
    already exists" error, and on retry finds them made.
    """
    import optuna
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        except (IntegrityError, OperationalError, ProgrammingError) as e:
            lost_race = not isinstance(e, ProgrammingError) or _already_exists(e)
            if not lost_race or attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


# PostgreSQL's duplicate_object (an enum type such as "studydirection") and duplicate_table.
_ALREADY_EXISTS = {"42710", "42P07"}


def _already_exists(error) -> bool:
    return getattr(getattr(error, "orig", None), "sqlstate", None) in _ALREADY_EXISTS


def _lost_connection(error: BaseException) -> BaseException | None:
    """The database error in `error`'s chain that says the storage cannot be reached (the
    connection refused, lost or locked: SQLAlchemy's OperationalError, InterfaceError,
    DisconnectionError), however Optuna wrapped it; None if there is none."""
    import sys

    exc = sys.modules.get("sqlalchemy.exc")
    if exc is None:  # this process never reached a database
        return None
    lost = (exc.OperationalError, exc.InterfaceError, exc.DisconnectionError)
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, lost):
            return cause
        seen.add(id(cause))
        context = None if cause.__suppress_context__ else cause.__context__
        cause = cause.__cause__ or context  # `raise ... from None` ends the chain
    return None


def is_unavailable(error: BaseException) -> bool:
    """Whether `error` means the study's storage cannot be reached (see `_lost_connection`)."""
    return _lost_connection(error) is not None


def unavailable(url: str | None, error: BaseException) -> StorageUnavailable:
    """`storage unavailable: URL (the driver's first line)`, the password hidden."""
    lost = _lost_connection(error) or error
    why = hide_password(one_line(getattr(lost, "orig", None) or lost), url)
    return StorageUnavailable(f"storage unavailable: {display_url(url)} ({why})")


class _FirstLine(logging.Filter):
    """Keeps the first line of a multi-line record: Optuna's storage logs a database error whole
    (its SQL and parameters) as a warning before the error reaches `reaching`."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "\n" in message:
            record.msg, record.args = message.splitlines()[0], None
        return True


_FIRST_LINE = _FirstLine()


@contextmanager
def reaching(url: str | None) -> Iterator[None]:
    """Storage calls whose connection failure becomes `StorageUnavailable` (one line)."""
    logging.getLogger("optuna.storages._rdb.storage").addFilter(_FIRST_LINE)  # added once
    try:
        yield
    except Exception as e:
        if is_unavailable(e):
            raise unavailable(url, e) from None
        raise


def one_line(error: BaseException) -> str:
    """The first non-empty line of an error's message (its class name if it has none)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
