"""A finished run, reopened: its record, its config (the record's own), its saved weights.

Everything a later command needs to rebuild the trained model comes from the run folder: the
config is the record's `config` (the resolved job config), composed onto the same schema the run
used and checked by the same rules, with `key=value` overrides on top (say another `data.root`);
the weights are the file the record's `weights` names, loaded with `weights_only=True`. The record
is data: every `_target_` it names is checked against an allow-list before anything is built
(`mnist_lab.saved.targets`). Each way this can go wrong is a `RunError` (or `TargetRefused`): one
line naming the folder or file and what to do.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mnist_lab.config.schema import CONF_DIR
from mnist_lab.data.dataset import DatasetFacts, dataset_facts
from mnist_lab.errors import LabError
from mnist_lab.job.checks import check_config
from mnist_lab.job.weights import load_state
from mnist_lab.models.build import build_model
from mnist_lab.records.format import RESULT_FILE
from mnist_lab.records.reading import read_record
from mnist_lab.saved.targets import check_targets
from mnist_lab.train import evaluation

WHICH = ("best", "final")


class RunError(LabError):
    """A run folder, record, study or weights file that cannot give back a trained model."""


@dataclass(frozen=True)
class SavedRun:
    run_dir: Path
    record: dict
    cfg: DictConfig
    which: str  # "best" or "final"
    weights: Path
    facts: DatasetFacts  # of the dataset the run trained on (its record's `data.dataset`)

    @property
    def epoch(self) -> int | None:
        """The epoch whose weights `weights` holds."""
        return self.record["best"]["epoch"] if self.which == "best" else self.record["epochs_run"]

    def recorded(self) -> dict:
        """The record's figures for these weights: every metric the evaluation measures on
        every split (None where the record has none)."""
        section = self.record.get(self.which) or {}
        return {k: section.get(k) for k in evaluation.keys()}


# Config groups whose choice selects a schema; presets and searches are already in `config`.
# Not `data`: the record holds its dataset's whole description (a dataset the run found in a
# config folder of its own included), which replaces the default's; a record from before
# `data.dataset` existed trained on MNIST, the default.
SCHEMA_GROUPS = ("model", "optimizer", "scheduler", "trainer")


def compose(record: dict, overrides: list[str]) -> DictConfig:
    """The record's config on this version's schemas (the group options the run chose, composed
    by Hydra from conf/), `key=value` overrides on top, its `_target_`s checked against the
    allow-list, then checked like a run's config."""
    choices = {g: o for g, o in (record.get("choices") or {}).items() if g in SCHEMA_GROUPS}
    config = record["config"]
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            base = hydra_compose("config", overrides=[f"{g}={o}" for g, o in choices.items()])
        data = config.get("data") if isinstance(config, dict) else None
        dataset = data.get("dataset") if isinstance(data, dict) else None
        if dataset is not None:
            OmegaConf.update(base, "data.dataset", dataset, merge=False)
        cfg = OmegaConf.merge(base, config)
        cfg.merge_with_dotlist(list(overrides))
        OmegaConf.to_container(cfg, throw_on_missing=True)  # a key the record lacks
        check_targets(OmegaConf.to_container(cfg, resolve=True))
    except (OmegaConfBaseException, HydraException) as e:
        message = str(e).strip().splitlines()[0]
        raise RunError(
            f"the record's config does not fit this version's schema or the overrides ({message})"
        ) from e
    check_config(cfg)
    return cfg


def open_run(run_dir, overrides: list[str] = (), which: str | None = None) -> SavedRun:
    """The run in `run_dir` with the weights `which` (default: the record's best, else final)."""
    run_dir = Path(run_dir)
    if not (run_dir / RESULT_FILE).is_file():
        raise RunError(f"{run_dir} is not a run folder (no {RESULT_FILE})")
    record = read_record(run_dir, warn=False)
    if record is None:
        raise RunError(f"{run_dir / RESULT_FILE} is unreadable or half-written")
    if not all(key in record for key in ("config", "choices", "weights", "best")):
        raise RunError(
            f"{run_dir}: the record (schema_version {record.get('schema_version')}) was written "
            f"by a version that saved no weights; retrain the run to get them"
        )
    files = record["weights"] or {}
    saved = [k for k in WHICH if files.get(k)]
    if not saved:
        raise RunError(
            f"{run_dir}: the run saved no weights (status {record.get('status')}, "
            f"trainer.save_weights={_setting(record)}); retrain it to get them"
        )
    which = which or saved[0]  # the record's selected model (best on validation), if saved
    if which not in WHICH:
        raise RunError(f"--weights {which!r} is not allowed: one of {', '.join(WHICH)}")
    if which not in saved:
        raise RunError(
            f"{run_dir}: no {which} weights (trainer.save_weights={_setting(record)}); "
            f"it saved: {', '.join(saved)}"
        )
    weights = run_dir / files[which]
    if not weights.is_file():
        raise RunError(f"{weights}: named by the record but missing")
    cfg = compose(record, overrides)
    return SavedRun(run_dir, record, cfg, which, weights, dataset_facts(cfg.data))


def _setting(record: dict) -> str:
    return str(((record.get("config") or {}).get("trainer") or {}).get("save_weights"))


def load_weights(run: SavedRun, model, device) -> None:
    """Loads the run's weights into `model` (built from `run.cfg`)."""
    try:
        state = load_state(run.weights, device)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunError(f"{run.weights}: not a readable weights file ({first})") from e
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as e:
        detail = " ".join(line.strip() for line in str(e).splitlines()[1:3]) or str(e)
        raise RunError(f"{run.weights}: does not match the run's model config ({detail})") from e


def rebuild_model(run: SavedRun, device):
    """The model the run trained, its weights loaded, in eval mode, on `device`."""
    model = build_model(run.cfg.model, device, run.facts.in_features, run.facts.n_classes)
    load_weights(run, model, device)
    model.eval()
    return model


def best_trial_run_dir(study_name: str, storage: str) -> tuple[Path, int]:
    """(run folder, trial number) of the best trial of an Optuna study, by its own objective."""
    import optuna

    if storage.startswith("sqlite:///") and not Path(storage.removeprefix("sqlite:///")).is_file():
        raise RunError(f"storage={storage}: no such database file")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError as e:
        raise RunError(f"study={study_name}: no such study in {storage}") from e
    except Exception as e:  # a URL the storage cannot open
        raise RunError(f"storage={storage}: cannot be opened ({type(e).__name__}: {e})") from e
    if len(study.directions) > 1:
        raise RunError(
            f"study={study_name} has {len(study.directions)} objectives, so no single best trial; "
            f"pass the run folder of one of its Pareto-front trials"
        )
    try:
        best = study.best_trial
    except ValueError as e:
        raise RunError(f"study={study_name}: no completed trial yet") from e
    run_dir = best.user_attrs.get("run_dir")
    if not run_dir:
        raise RunError(f"study={study_name}: best trial {best.number} has no run_dir attribute")
    return Path(run_dir), best.number
