"""The sweeper's config schema, registered in Hydra's ConfigStore (imported on every run: no Optuna).

`override hydra/sweeper: optuna` selects `OptunaSweeperConf`; the samplers live in the
`hydra/sweeper/sampler` group (default `tpe`) and the pruners in `hydra/sweeper/pruner` (default
`none`). Keys are those of Hydra's official Optuna sweeper, so a search space written for it works
after pointing `_target_` at this class (docs/SWEEPS.md, "Compatibility with Hydra's Optuna sweeper",
lists every difference). A sampler or pruner key left `null` is not passed, so the installed Optuna's own
default applies (and changing `_target_` never passes another class's keys). A key that takes an
object (`independent_sampler`, `source_trials`) takes a `{_target_: ...}` node, which is
instantiated; a key that takes a function (`constraints_func`) takes a dotted path or such a node.
"""

# No `from __future__ import annotations`: Hydra's plugin scan executes this module without
# registering it in sys.modules, where dataclasses would look string annotations up.
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

SWEEPER_TARGET = "hydra_plugins.mnist_lab_optuna_sweeper.optuna_sweeper.OptunaSweeper"
# MOTPESampler was removed in Optuna 4; `hydra/sweeper/sampler=motpe` says so in one line.
REMOVED_SAMPLERS = {
    "optuna.samplers.MOTPESampler": "MOTPESampler was removed in Optuna 4: use "
    "hydra/sweeper/sampler=tpe (it handles several objectives; hydra.sweeper.sampler."
    "multivariate=true) or hydra/sweeper/sampler=nsgaii",
}


@dataclass
class SamplerConfig:
    _target_: str = MISSING
    seed: int | None = None


@dataclass
class TPESamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.TPESampler"
    n_startup_trials: int | None = None
    n_ei_candidates: int | None = None
    multivariate: bool | None = None
    group: bool | None = None
    constant_liar: bool | None = None
    consider_prior: bool | None = None
    prior_weight: float | None = None
    consider_magic_clip: bool | None = None
    consider_endpoints: bool | None = None
    warn_independent_sampling: bool | None = None
    constraints_func: Any = None


@dataclass
class RandomSamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.RandomSampler"


@dataclass
class GridSamplerConfig(SamplerConfig):
    """The grid is built from `params` (only `choice()` and `range()`); n_trials is clamped to it."""

    _target_: str = "optuna.samplers.GridSampler"


@dataclass
class CmaEsSamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.CmaEsSampler"
    x0: dict[str, Any] | None = None
    sigma0: float | None = None
    n_startup_trials: int | None = None
    independent_sampler: Any = None
    warn_independent_sampling: bool | None = None
    consider_pruned_trials: bool | None = None
    restart_strategy: str | None = None
    popsize: int | None = None
    inc_popsize: int | None = None
    use_separable_cma: bool | None = None
    with_margin: bool | None = None
    lr_adapt: bool | None = None
    source_trials: Any = None


@dataclass
class QMCSamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.QMCSampler"
    qmc_type: str | None = None
    scramble: bool | None = None
    independent_sampler: Any = None
    warn_asynchronous_seeding: bool | None = None
    warn_independent_sampling: bool | None = None


@dataclass
class NSGAIISamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.NSGAIISampler"
    population_size: int | None = None
    mutation_prob: float | None = None
    crossover_prob: float | None = None
    swapping_prob: float | None = None
    constraints_func: Any = None


@dataclass
class GPSamplerConfig(SamplerConfig):
    """Gaussian-process Bayesian optimisation (needs torch and scipy, both project dependencies)."""

    _target_: str = "optuna.samplers.GPSampler"
    independent_sampler: Any = None
    n_startup_trials: int | None = None
    deterministic_objective: bool | None = None
    constraints_func: Any = None
    warn_independent_sampling: bool | None = None


@dataclass
class MedianPrunerConfig:
    """Steps are epochs 1, 2, ... (the untrained epoch 0 is not reported), so the first pruning
    decision comes after epoch max(1, n_warmup_steps)."""

    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 5
    n_warmup_steps: int = 0
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class HyperbandPrunerConfig:
    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = 1
    max_resource: Any = "auto"  # "auto" or an int (epochs)
    reduction_factor: int = 3
    bootstrap_count: int = 0


@dataclass
class SuccessiveHalvingPrunerConfig:
    _target_: str = "optuna.pruners.SuccessiveHalvingPruner"
    min_resource: Any = "auto"  # "auto" or an int (epochs)
    reduction_factor: int = 4
    min_early_stopping_rate: int = 0
    bootstrap_count: int = 0


@dataclass
class OptunaSweeperConf:
    _target_: str = SWEEPER_TARGET
    # The sweeper builds the sampler and pruner itself (the grid sampler needs the search space).
    _recursive_: bool = False
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "none"}])

    sampler: Any = MISSING
    # `hydra/sweeper/pruner=median|hyperband|successive_halving|none`, or any {_target_: ...}.
    # none still records the per-epoch values; it only never prunes.
    pruner: Any = MISSING
    # "minimize" | "maximize", or a list of them for several objectives
    direction: Any = "minimize"
    # An Optuna storage URL, e.g. sqlite:///results/optuna.db or postgresql://host/db.
    # null keeps the study in memory: nothing to resume, no pruning in other processes.
    storage: str | None = None
    study_name: str | None = None
    # Total number of finished (complete, pruned or failed) trials the study should have: a rerun
    # with a larger value tops the study up, one with the same value only reports it.
    n_trials: int = 20
    # Worker processes that run the study together: the command starts N processes of itself on
    # the same storage, each asking its next trial the moment its previous one ends (no batch
    # barrier), and ends with one report. Needs a storage they share (not null).
    workers: int = 1
    # With trainer.device=auto, worker i trains on devices[i mod len], e.g. [cuda:0, cuda:2]
    # (null: cuda:(i mod #GPUs) where there are GPUs); on the CPU each worker gets a share of
    # the cores (torch threads).
    devices: list[str] | None = None
    # Trials asked and launched together (the launcher may run them in parallel). null: the
    # launcher's n_jobs when it has one (joblib), else 1. In a worker: its own batch.
    n_jobs: int | None = None
    # The sweep stops (exit status 1) once more than this fraction of the trials it set out to run
    # have failed. 0 stops at the first failure, 1 never stops early.
    max_failure_rate: float = 0.5
    # Search space in Hydra's sweep syntax, e.g. {lr: "tag(log, interval(1e-4, 1))"}. Command-line
    # arguments of the same key win.
    params: dict[str, Any] | None = None
    # Deprecated form of the official plugin ({key: {type, low, high, log, step, choices}}).
    search_space: dict[str, Any] | None = None
    # The objectives' names, one per direction, shown by optuna-dashboard (null: "Objective 0").
    # (Any, like `direction`: an interpolation such as `${objective.metrics}` stays one until it is
    # resolved; the sweeper checks it is a list of strings, one per direction.)
    metric_names: Any = None
    # Trials to run first, each a {param: value} of the search space (Optuna's enqueue_trial):
    # e.g. a preset's own values, so the study starts from a known good point. One already in the
    # study (a resumed sweep) is not enqueued again.
    enqueue_trials: list[dict[str, Any]] | None = None
    # "module.function(cfg, trial)" that suggests further parameters with trial.suggest_*.
    custom_search_space: str | None = None
    # While its trials run, the sweeper refreshes their `heartbeat_at` attribute every this many
    # seconds; a RUNNING trial whose worker is gone (same host: its process is dead; elsewhere:
    # no heartbeat for grace_period seconds) is marked failed when a sweep starts on the study.
    heartbeat_interval: float = 30.0
    grace_period: float = 300.0


def register() -> None:
    cs = ConfigStore.instance()
    provider = "mnist_lab_optuna_sweeper"
    cs.store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider=provider)
    samplers = {
        "tpe": TPESamplerConfig,
        "random": RandomSamplerConfig,
        "grid": GridSamplerConfig,
        "cmaes": CmaEsSamplerConfig,
        "qmc": QMCSamplerConfig,
        "nsgaii": NSGAIISamplerConfig,
        "gp": GPSamplerConfig,
    }
    for name, node in samplers.items():
        cs.store(group="hydra/sweeper/sampler", name=name, node=node, provider=provider)
    # Kept so that `sampler=motpe` says it was removed (REMOVED_SAMPLERS); a plain dict, so an old
    # config's MOTPE keys reach that message instead of an unknown-key error.
    cs.store(
        group="hydra/sweeper/sampler",
        name="motpe",
        node={"_target_": "optuna.samplers.MOTPESampler"},
        provider=provider,
    )
    # A plain dict, not a dataclass: a config may replace it with any pruner's keys.
    cs.store(
        group="hydra/sweeper/pruner",
        name="none",
        node={"_target_": "optuna.pruners.NopPruner"},
        provider=provider,
    )
    pruners = {
        "median": MedianPrunerConfig,
        "hyperband": HyperbandPrunerConfig,
        "successive_halving": SuccessiveHalvingPrunerConfig,
    }
    for name, node in pruners.items():
        cs.store(group="hydra/sweeper/pruner", name=name, node=node, provider=provider)


register()
