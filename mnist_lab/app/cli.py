"""What the user sees when a command stops: at most two lines and a documented exit status.

Hydra's `run_and_report` prints a multi-line report (or a trimmed traceback) for every error,
adds a `HYDRA_FULL_ERROR` hint and exits 1, whatever went wrong. With `HYDRA_FULL_ERROR=1` it
re-raises instead; `run` sets that switch for Hydra, catches what comes out and says it in one or
two lines naming the key or path and what is allowed. A user who sets `HYDRA_FULL_ERROR=1`
themselves still gets Hydra's full report. Exit statuses (docs/ARCHITECTURE.md): 0 ok, 1 a sweep
failed, 2 bad input, data or disk, 3 diverged, 130 SIGINT, 143 SIGTERM; an unexpected exception
is a bug and keeps its traceback (exit 1).
"""

from __future__ import annotations

import difflib
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.errors import (
    CompactHydraException,
    ConfigCompositionException,
    HydraException,
    MissingConfigException,
    OverrideParseException,
)
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    OmegaConfBaseException,
    ValidationError,
)

from mnist_lab import signals
from mnist_lab.errors import LabError, StorageUnavailable, SweepFailed
from mnist_lab.records.reading import mark_stopped

EXIT_SWEEP_FAILED, EXIT_BAD_INPUT = 1, 2
OVERRIDE_FORMS = (
    "an override is key=value, +key=value (new key), ~key (delete) or group=option; "
    "sweeps (-m): key=a,b, choice(a,b), range(1,9), interval(0,1)"
)


def _lines(error: BaseException) -> list[str]:
    return [s.strip() for s in str(error).splitlines() if s.strip()]


def _first_line(error: BaseException) -> str:
    lines = _lines(error)
    return lines[0] if lines else type(error).__name__


def _closest(word: str, names, prefix: str = "") -> str:
    close = difflib.get_close_matches(word, [str(n) for n in names], n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(prefix + c for c in close)}?)" if close else ""


def _missing_option(error: MissingConfigException) -> list[str]:
    group, _, option = (error.missing_cfg_file or "").rpartition("/")
    if not group or error.options is None:
        return [_first_line(error)]
    options = sorted(error.options)
    return [
        f"{group}={option}: no such option{_closest(option, options)}",
        f"options of {group}: {', '.join(options) or 'none'}",
    ]


def _unknown_key(cause: OmegaConfBaseException) -> list[str]:
    full_key = str(cause.full_key or cause.key)
    parent, _, key = full_key.rpartition(".")
    node = cause.parent_node
    names = [str(k) for k in node.keys() if k != "hydra"] if node is not None else []
    known = f"keys of {parent or 'the config'}: {', '.join(names)}" if names else ""
    close = _closest(key, names, prefix=f"{parent}." if parent else "")
    return [f"unknown key {full_key}{close}", known]


def _composition(error: ConfigCompositionException) -> list[str]:
    cause = error.__cause__
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and str(error).startswith(
        "Could not override"
    ):
        return _unknown_key(cause)
    if isinstance(cause, ValidationError):
        override = str(error).removeprefix("Error merging override ").strip()
        return [f"{override}: {_first_line(cause)}"]
    if isinstance(cause, OmegaConfBaseException):
        return [_first_line(error), _first_line(cause)]
    lines = _lines(error)
    if lines and lines[0].startswith("Ambiguous value"):
        return [lines[0], "a list is key=[a,b], a string key='a,b'; to sweep the values add -m"]
    return lines[:2]


def explain(error: Exception) -> tuple[list[str], int] | None:
    """(lines to print, exit status) for an error the user can fix; None for a bug."""
    if isinstance(error, (SweepFailed, StorageUnavailable)):
        return [_first_line(error)], EXIT_SWEEP_FAILED
    if isinstance(error, LabError):
        return [_first_line(error)], EXIT_BAD_INPUT
    if isinstance(error, MissingConfigException):
        return _missing_option(error), EXIT_BAD_INPUT
    if isinstance(error, OverrideParseException):
        detail = [s for s in _lines(error) if not s.startswith(("Error parsing", "See http"))]
        why = f": {detail[0]}" if detail else ""
        return [f"cannot parse override {error.override!r}{why}", OVERRIDE_FORMS], EXIT_BAD_INPUT
    if isinstance(error, ConfigCompositionException):
        return _composition(error), EXIT_BAD_INPUT
    if isinstance(error, (CompactHydraException, HydraException, OmegaConfBaseException)):
        return [_first_line(error)], EXIT_BAD_INPUT
    if isinstance(error, ValueError) and isinstance(error.__cause__, OSError):
        return explain(error.__cause__)  # logging's "Unable to configure handler": the log file
    if isinstance(error, OSError):  # Hydra's own writes: the output folder, .hydra/
        where = error.filename or _output_folder()
        what = error.strerror or type(error).__name__
        return [f"cannot write {where or 'the output'}: {what}"], EXIT_BAD_INPUT
    if isinstance(error, ValueError) and "override" in str(error):
        return [_first_line(error), OVERRIDE_FORMS], EXIT_BAD_INPUT
    if isinstance(error, ValueError) and str(error).startswith("Only one of --run"):
        hint = "--cfg job prints the config of one job: leave -m out to see a sweep's"
        return [_first_line(error), hint], EXIT_BAD_INPUT  # Hydra's flags: -m with --cfg job
    return None


def _say(lines: list[str]) -> None:
    sys.stdout.flush()
    sys.stderr.write("".join(f"{line}\n" for line in lines if line))
    sys.stderr.flush()


class SweepFolder(Callback):
    """Remembers the multirun's folder (`hydra.callbacks.sweep_folder` in conf/config.yaml).

    A launcher's parent process has no HydraConfig, and a signal skips `on_multirun_end`; this is
    how `run` finds the records a killed worker left `running`.
    """

    path: Path | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        SweepFolder.path = Path(str(config.hydra.sweep.dir))


def _output_folder() -> str | None:
    """The run's output folder (single run), else the multirun's folder, if known yet."""
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.RUN:
        return str(HydraConfig.get().runtime.output_dir)
    return str(SweepFolder.path) if SweepFolder.path is not None else None


def _finish_stopped_jobs(status: str, reason: str) -> None:
    """Records a killed worker left `running` in this multirun's folder say how it stopped."""
    if SweepFolder.path is not None and SweepFolder.path.is_dir():
        mark_stopped(SweepFolder.path, status, reason)


def run(entry: Callable[[], object]) -> None:
    """Run a `@hydra.main` entry point; exit with one or two lines and the documented status."""
    signals.install()
    # A full disk makes the log file's handler fail on every line; logging would print a
    # traceback for each. The record's own write names the file in one line instead.
    logging.raiseExceptions = False
    full_report = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing its own report
    try:
        entry()
    except KeyboardInterrupt as e:
        status, code = signals.stop_status(e)
        name = "SIGTERM" if code == 143 else "SIGINT"
        _finish_stopped_jobs(status, f"stopped by {name}")
        _say([f"stopped by {name}: the running jobs are recorded {status!r}"])
        raise SystemExit(code) from None
    except BrokenPipeError:  # `run.py --help | head`: the reader has what it wanted
        raise SystemExit(signals.stdout_closed()) from None
    except Exception as e:
        known = None if full_report else explain(e)
        if known is None:
            traceback.print_exc()
            raise SystemExit(1) from None
        lines, code = known
        _say(lines)
        raise SystemExit(code) from None
