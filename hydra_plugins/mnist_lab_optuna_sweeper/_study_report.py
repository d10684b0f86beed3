"""The end of a study: the best trial (or, for several objectives, the Pareto front) printed and
written to `optimization_results.yaml` in the sweep folder, each with a command that retrains it
and, when its run saved them, its best-validation weights and the command that evaluates them.

The file has the keys of Hydra's official Optuna sweeper (`name`, `best_params`, `best_value`; for
several objectives `solutions`, each with `params` and `values`) plus ours beside them.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import FrozenTrial, TrialState

from mnist_lab.job import atomic_write_text, display_url, evaluate_command, read_record

from ._search_space import shell_quote
from ._telling import params_text

log = logging.getLogger(__name__)

RESULTS_FILE = "optimization_results.yaml"
# The trial's user attributes (from its record) shown beside its parameters and values.
RECORD_KEYS = ("run_dir", "test_acc", "best_val_acc", "best_test_acc", "epochs_run", "wall_seconds")


def retrain_command(trial: FrozenTrial, config: DictConfig) -> str | None:
    """The shell command that runs the trial's configuration again as a single run."""
    overrides = trial.user_attrs.get("overrides")
    if not isinstance(overrides, list):
        return None
    argv = ["python", sys.argv[0] or "experiments/run.py", *map(str, overrides)]
    # Hydra adds hydra.mode=MULTIRUN for -m; without it, the config itself asks for a
    # multirun (like lightning-hydra-template's hparams_search), which a retrain must undo.
    if "hydra.mode=MULTIRUN" not in config.hydra.overrides.hydra:
        argv.append("hydra.mode=RUN")
    return " ".join(map(shell_quote, argv))


def saved_weights(trial: FrozenTrial) -> str | None:
    """The best-validation weights file the trial's run wrote (its record's `weights.best`)."""
    run_dir = trial.user_attrs.get("run_dir")
    record = read_record(Path(run_dir), warn=False) if run_dir else None
    name = ((record or {}).get("weights") or {}).get("best")
    return str(Path(run_dir) / name) if name else None


def describe(trial: FrozenTrial, config: DictConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"number": trial.number}
    if len(trial.values or []) > 1:
        out["values"] = list(trial.values)
    else:
        out["value"] = trial.value
    out["params"] = dict(trial.params)
    out.update({k: trial.user_attrs[k] for k in RECORD_KEYS if k in trial.user_attrs})
    command = retrain_command(trial, config)
    if command:
        out["retrain"] = command
    weights = saved_weights(trial)
    if weights:
        out["weights"] = weights
        out["evaluate"] = evaluate_command(trial.user_attrs["run_dir"])
    return out


def saved_model_lines(best: dict, indent: str) -> str:
    if not best.get("weights"):
        return ""
    lines = f"\n{indent}weights: {best['weights']}"
    if best.get("evaluate"):
        lines += f"\n{indent}evaluate: {best['evaluate']}"
    return lines


def report(
    study: optuna.Study,
    url: str | None,
    directions: list[str],
    n_trials: int,
    config: DictConfig,
) -> str | None:
    """Print and write the best trial (or Pareto front); the error message if none completed."""
    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    result: dict[str, Any] = {
        "name": "optuna",
        "study_name": study.study_name,
        "storage": None if url is None else display_url(url),
        "directions": directions,
        "metric_names": study.metric_names,
        "n_trials": n_trials,
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
        if len(directions) == 1:
            result["best_trial"] = None
        else:
            result["solutions"] = []
    elif len(directions) == 1:
        best = describe(study.best_trial, config)
        result.update(best_value=best["value"], best_params=best["params"], best_trial=best)
        log.info(
            "Best trial %d of study %r: value %.6g (%s)\n  run dir: %s\n  retrain: %s%s",
            best["number"],
            study.study_name,
            best["value"],
            params_text(best["params"]),
            best.get("run_dir"),
            best.get("retrain"),
            saved_model_lines(best, "  "),
        )
    else:
        solutions = [describe(t, config) for t in study.best_trials]
        result["solutions"] = solutions
        log.info("Pareto front of study %r (%d trials):", study.study_name, len(solutions))
        for best in solutions:
            log.info(
                "  trial %d: values %s (%s)\n    run dir: %s\n    retrain: %s%s",
                best["number"],
                best["values"],
                params_text(best["params"]),
                best.get("run_dir"),
                best.get("retrain"),
                saved_model_lines(best, "    "),
            )
    path = Path(str(config.hydra.sweep.dir)) / RESULTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(result)))
    log.info("Study summary written to %s", path)
    return message
