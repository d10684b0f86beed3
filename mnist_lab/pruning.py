"""The job's side of an Optuna study: which trial this run is, and per-epoch reports to it.

How a job knows its trial (docs/ARCHITECTURE.md, "Optuna trial identity inside a job"): the sweeper
(`hydra_plugins/mnist_lab_optuna_sweeper`) launches every trial with the overrides

    ++hydra.job.env_set.MNIST_LAB_OPTUNA_TRIAL='<trial number>'
    hydra.sweeper.study_name='<study name>'   hydra.sweeper.storage='<absolute storage URL>'

so the job's own Hydra config (`HydraConfig.get()`) names the trial, the study, the storage and
the pruner (`hydra.sweeper.pruner`). Reading them from the job's config rather than from
`os.environ` means a stale variable left in a process by an earlier job is never mistaken for a
study. The job then opens the trial with public Optuna APIs only: the storage (SQLite with the same
lock timeout as the sweeper), `optuna.load_study` with the pruner rebuilt from that config,
`storage.get_study_id_from_name`, `storage.get_trial_id_from_study_id_trial_number` and
`optuna.trial.Trial(study, trial_id)`. Optuna is imported inside the functions: plain runs never
pay for it.

Reports start at epoch 1: epoch 0 is the untrained model, whose ~10% accuracy would let a pruner
with no warm-up cut trials before they trained at all. A study kept in memory (`storage: null`)
is reachable only from jobs that run in the sweeper's own process (Hydra's basic launcher).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Reporter = Callable[[int, dict], None]
# One storage per URL and process: jobs that run one after another in a process (basic launcher,
# reused joblib workers) share its connection pool instead of opening a new one each.
_STORAGES: dict[str, Any] = {}


def _study_context() -> tuple[Any, int] | None:
    """(the job's hydra.sweeper config, trial number) inside an Optuna trial, else None."""
    from hydra.core.hydra_config import HydraConfig

    from hydra_plugins.mnist_lab_optuna_sweeper.config import SWEEPER_TARGET, TRIAL_ENV

    if not HydraConfig.initialized():  # called outside a Hydra job
        return None
    hydra_cfg = HydraConfig.get()
    number = hydra_cfg.job.get("env_set", {}).get(TRIAL_ENV)
    sweeper = hydra_cfg.get("sweeper")
    if number is None or sweeper is None or sweeper.get("_target_") != SWEEPER_TARGET:
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
    return {"study_name": sweeper.get("study_name"), "number": number}


def _open_trial(sweeper, number: int):
    """The running trial as an `optuna.trial.Trial` (None for an unreachable in-memory study)."""
    import optuna

    from hydra_plugins.mnist_lab_optuna_sweeper import _study_setup

    name = sweeper.study_name
    pruner = _study_setup.build_pruner(sweeper.get("pruner"))
    if sweeper.storage is None:
        storage = _study_setup.LOCAL_STORAGES.get(name)
        if storage is None:
            log.warning(
                "trial %d: the study is kept in memory by another process "
                "(hydra.sweeper.storage=null); per-epoch values are not reported, no pruning",
                number,
            )
            return None
    else:
        storage = _STORAGES.get(sweeper.storage)
        if storage is None:
            storage = _STORAGES[sweeper.storage] = _study_setup.make_storage(sweeper.storage)
    # The job never samples; a RandomSampler makes opening the trial cheap.
    study = optuna.load_study(
        study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler(), pruner=pruner
    )
    study_id = storage.get_study_id_from_name(name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
    return optuna.trial.Trial(study, trial_id)


def epoch_reporter() -> Reporter | None:
    """None outside an Optuna study; else `report(epoch, metrics)` for the trainer's epoch hook.

    `report` records `metrics["val/acc"]` as the trial's intermediate value at step `epoch` and
    raises `optuna.TrialPruned` when the study's pruner says so. Epoch 0 and epochs without a
    validation accuracy are skipped.
    """
    context = _study_context()
    if context is None:
        return None
    import optuna

    trial = _open_trial(*context)
    if trial is None:
        return None
    if len(trial.study.directions) > 1:
        log.info("multi-objective study: per-epoch values are not reported (Optuna: no pruning)")
        return None
    pruner_name = type(trial.study.pruner).__name__

    def report(epoch: int, metrics: dict) -> None:
        value = metrics.get("val/acc")
        if epoch < 1 or value is None or not math.isfinite(value):
            return
        trial.report(float(value), step=epoch)
        if metrics.get("last_epoch"):  # training ends here anyway (early stopping included)
            return
        if trial.should_prune():
            raise optuna.TrialPruned(
                f"pruned by {pruner_name} after epoch {epoch} (val/acc {value:.4f})"
            )

    return report
