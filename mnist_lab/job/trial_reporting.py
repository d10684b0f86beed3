"""The job's side of an Optuna study: which trial this run is, and per-epoch reports to it.

How a job knows its trial (docs/ARCHITECTURE.md, "Optuna trial identity inside a job"): the sweeper
launches every trial with the overrides

    ++hydra.job.env_set.MNIST_LAB_OPTUNA_TRIAL='<trial number>'
    hydra.sweeper.study_name='<study name>'   hydra.sweeper.storage='<absolute storage URL>'

so the job's own Hydra config (`HydraConfig.get()`) names the trial, the study, the storage and
the pruner (`hydra.sweeper.pruner`). Reading them from the job's config rather than from
`os.environ` means a stale variable left in a process by an earlier job is never mistaken for a
study. The trial is opened with public Optuna APIs only, through `mnist_lab.job.optuna_study` (the
storage and pruner exactly as the sweeper makes them).

The API is that of an Optuna objective: `report` records the value and asks `should_prune`.
Reports start at epoch 1 (epoch 0 is the untrained model, whose ~10% accuracy would let a pruner
with no warm-up cut trials before they trained at all). After the last epoch the value is
recorded but no pruning decision is taken: a trial that trained all its epochs is complete. The
value is the objective's first metric (`val/acc` by default, `conf/objective/`); a non-finite value
is not reported (the trainer records the run as diverged).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from mnist_lab.job.optuna_study import (
    TRIAL_ENV,
    build_pruner,
    in_memory_storage,
    open_storage,
    reaching,
)
from mnist_lab.records.objective import DEFAULT

log = logging.getLogger(__name__)

Reporter = Callable[[int, dict], None]
# One storage per URL and process: jobs that run one after another in a process (basic launcher,
# reused joblib workers) share its connection pool instead of opening a new one each.
_STORAGES: dict[str, Any] = {}


def _study_context() -> tuple[Any, int] | None:
    """(the job's hydra.sweeper config, trial number) inside an Optuna trial, else None."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():  # called outside a Hydra job
        return None
    hydra_cfg = HydraConfig.get()
    number = hydra_cfg.job.get("env_set", {}).get(TRIAL_ENV)
    sweeper = hydra_cfg.get("sweeper")
    if number is None or sweeper is None or sweeper.get("study_name") is None:
        return None
    try:
        return sweeper, int(number)
    except ValueError:
        return None


def trial_identity() -> dict | None:
    """`{"study_name": ..., "number": ...}` for the run record; None outside a study."""
    context = _study_context()
    if context is None:
        return None
    sweeper, number = context
    return {"study_name": sweeper.study_name, "number": number}


def _open_trial(sweeper: Any, number: int) -> Any:
    """The running trial as an `optuna.trial.Trial` (None for an unreachable in-memory study)."""
    import optuna

    name, url = sweeper.study_name, sweeper.get("storage")
    if url is None:
        storage = in_memory_storage(name)
        if storage is None:
            log.warning(
                "trial %d: the study is kept in memory by another process "
                "(hydra.sweeper.storage=null); per-epoch values are not reported, no pruning",
                number,
            )
            return None
    else:
        storage = _STORAGES.get(url)
        if storage is None:
            storage = _STORAGES[url] = open_storage(url)
    # The job never samples; a RandomSampler makes opening the trial cheap.
    study = optuna.load_study(
        study_name=name,
        storage=storage,
        sampler=optuna.samplers.RandomSampler(),
        pruner=build_pruner(sweeper.get("pruner")),
    )
    study_id = storage.get_study_id_from_name(name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
    return optuna.trial.Trial(study, trial_id)


def epoch_reporter(epochs: int, metric: str = DEFAULT["metrics"][0]) -> Reporter | None:
    """None outside an Optuna study; else `report(epoch, metrics)` for the trainer's epoch hook.

    `report` records `metrics[metric]` as the trial's intermediate value at step `epoch` and,
    before the last of the run's `epochs`, raises `optuna.TrialPruned` when the study's pruner
    says so. Epoch 0 and epochs without a finite validation accuracy are skipped.
    """
    context = _study_context()
    if context is None:
        return None
    import optuna

    url = context[0].get("storage")
    with reaching(url):  # a storage that stopped answering: one line, no traceback
        trial = _open_trial(*context)
    if trial is None:
        return None
    if len(trial.study.directions) > 1:
        log.info("multi-objective study: per-epoch values are not reported (Optuna: no pruning)")
        return None
    pruner_name = type(trial.study.pruner).__name__

    def report(epoch: int, metrics: dict) -> None:
        value = metrics.get(metric)
        if epoch < 1 or value is None or not math.isfinite(value):
            return
        # No decision after the last epoch that runs: the configured last, or the one early
        # stopping ends on (the trainer flags it); such a trial is complete.
        with reaching(url):
            trial.report(float(value), step=epoch)
            prune = epoch < epochs and not metrics.get("last_epoch") and trial.should_prune()
        if prune:
            raise optuna.TrialPruned(
                f"pruned by {pruner_name} after epoch {epoch} ({metric} {value:.4f})"
            )

    return report
