"""Every shipped sampler with every shipped search config, and the sweep commands of the README and docs/.

Compose-only for every cell (in-process, the sweeper's own `plan_study`: everything it checks
before a trial), then a few cells run end to end through the real entry point in this process
(2-3 trials, 1 epoch, a training subset), `gp` past its start-up trials. A search config names
its sampler only; the sampler's own settings are its config's, so any sampler fits any search.
"""

from __future__ import annotations

import shlex

import optuna
import pytest
from conftest import CONF_DIR
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from optuna.trial import TrialState

from hydra_plugins.mnist_lab_optuna_sweeper._errors import SweeperError
from hydra_plugins.mnist_lab_optuna_sweeper._impl import plan_study
from hydra_plugins.mnist_lab_optuna_sweeper._settings import Settings
from mnist_lab.config.schema import REPO_ROOT

SAMPLERS = {
    "tpe": "TPESampler",
    "random": "RandomSampler",
    "cmaes": "CmaEsSampler",
    "qmc": "QMCSampler",
    "gp": "GPSampler",
    "nsgaii": "NSGAIISampler",
    "grid": "GridSampler",
}
SEARCHES = {"mlp_optuna": "mlp", "mlp_regularised": "mlp_regularised"}  # and study names
# What a grid needs: discrete values for the continuous keys, and no enqueued trial.
GRID_VALUES = {
    "mlp_optuna": ["lr=choice(0.01, 0.1)", "hidden=choice(64, 128)"],
    "mlp_regularised": [
        "model.input_dropout=choice(0.0, 0.1)",
        "model.dropout=choice(0.3, 0.5)",
        "trainer.label_smoothing=0.1",
        "lr=choice(0.05, 0.1)",
        "hydra.sweeper.enqueue_trials=null",
    ],
}


def plan(overrides: list[str]):
    """The sweeper's plan for `python experiments/run.py -m *overrides` (no storage opened)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = GlobalHydra.instance().hydra.compose_config(
            "config", overrides, run_mode=RunMode.MULTIRUN, with_log_configuration=False
        )
    node = cfg.hydra.sweeper
    settings = Settings(**{k: node[k] for k in node if not str(k).startswith("_")})
    return plan_study(settings, list(cfg.hydra.overrides.task))


@pytest.mark.parametrize("search", SEARCHES)
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_composes_with_every_search(sampler, search):
    overrides = [f"hparams_search={search}", f"hydra/sweeper/sampler={sampler}"]
    if sampler == "grid":
        with pytest.raises(SweeperError) as refused:  # as shipped: continuous keys, one line
            plan(overrides)
        assert str(refused.value).startswith("grid sampler: ") and "\n" not in str(refused.value)
        overrides += GRID_VALUES[search]
    planned = plan(overrides)
    assert type(planned.sampler).__name__ == SAMPLERS[sampler]
    assert planned.directions == ["maximize"] and planned.space


def readme_commands() -> list[list[str]]:
    """The Optuna sweeps (`python experiments/run.py -m hparams_search=...`) of the README and the
    pages in docs/."""
    pages = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
    text = "\n".join(page.read_text() for page in pages).replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("python experiments/run.py -m ") and "hparams_search=" in line:
            commands.append(shlex.split(line)[3:])
    return commands


def test_the_readme_has_sweep_commands():
    assert len(readme_commands()) >= 3


@pytest.mark.parametrize("args", readme_commands(), ids=" ".join)
def test_every_readme_sweep_command_composes(args, monkeypatch):
    monkeypatch.setenv("MNIST_LAB_STORAGE", "postgresql://user:password@db-host/optuna")
    planned = plan(args)
    assert planned.space


QUICK = ["epochs=1", "data.train_subset=1024", "trainer.device=cpu", "trainer.save_weights=none"]
# mlp_regularised's preset deskews all 70,000 images first; the multirun's summary draws plots.
QUICK += ["data.deskew=false", "hydra.callbacks.summarize.plots=false"]
# A representative subset end to end; the second element is each cell's extra arguments.
RUNS = [
    ("random", "mlp_optuna", []),
    ("qmc", "mlp_regularised", []),
    ("cmaes", "mlp_regularised", []),
    ("grid", "mlp_optuna", GRID_VALUES["mlp_optuna"] + ["optimizer=sgd", "batch_size=128"]),
]


@pytest.mark.parametrize(("sampler", "search", "extra"), RUNS, ids=[f"{s}-{h}" for s, h, _ in RUNS])
def test_a_sampler_runs_a_search_end_to_end(cli_main, tmp_path, sampler, search, extra):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    args = ["-m", f"hparams_search={search}", f"hydra/sweeper/sampler={sampler}"]
    args += [f"hydra.sweeper.storage={storage}", "hydra.sweeper.n_trials=2", *QUICK, *extra]
    code, output = cli_main(*args)
    assert code == 0, output
    study = optuna.load_study(study_name=SEARCHES[search], storage=storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2, output


def test_gp_completes_a_study_past_its_start_up_trials(cli_main, tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    code, output = cli_main(
        "-m",
        "hparams_search=mlp_optuna",
        "hydra/sweeper/sampler=gp",
        "hydra.sweeper.sampler.n_startup_trials=2",  # the third trial is the Gaussian process's
        "hydra.sweeper.sampler.seed=0",
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.n_trials=3",
        *QUICK,
    )
    assert code == 0, output
    trials = optuna.load_study(study_name="mlp", storage=storage).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3, output
