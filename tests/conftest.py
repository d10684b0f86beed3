"""Shared fixtures: Hydra composition in-process, a job config as a task sees it, and the real CLI.

Nothing here writes into the repository's `results/`: in-process jobs get an output directory under
`tmp_path`, and CLI runs execute with `cwd=tmp_path` and their run/sweep directories under it.
"""

from __future__ import annotations

import copy
import logging
import os
import runpy
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from mnist_lab.app.cli import SweepFolder
from mnist_lab.config.schema import REPO_ROOT, register
from mnist_lab.data.dataset import DatasetFacts, DataTensors
from mnist_lab.models.mlp import MLP
from mnist_lab.records.objective import Objective
from mnist_lab.train.learners import AutogradLearner
from mnist_lab.train.loop import EarlyStopping, Member, Trainer, TrainSettings

register()  # as every entry point does before Hydra composes

# A shell starts a background command (`pytest &`) with SIGINT ignored, and the commands these
# tests start inherit that, so they keep ignoring Ctrl-C, as they should; the signal tests test
# Ctrl-C as a terminal delivers it, so the suite behaves the same however it was started.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = REPO_ROOT
CONF_DIR = REPO / "conf"
RUN_PY = REPO / "experiments" / "run.py"
# metrics.csv of a run with the evaluation's default metrics (mnist_lab.train.evaluation)
METRICS_COLUMNS = (
    "epoch",
    "train/loss",
    "train/acc",
    "val/loss",
    "val/acc",
    "test/loss",
    "test/acc",
    "lr",
    "seconds",
)
# MNIST's shapes (conf/data/mnist.yaml), for models and data the tests make without files.
IN_FEATURES, N_CLASSES = 28 * 28, 10


@pytest.fixture
def compose():
    """`compose(overrides=(), return_hydra_config=False) -> DictConfig` of conf/config.yaml.

    Errors Hydra raises while composing (unknown option, wrong type, typo key) propagate.
    """

    def _compose(overrides=(), return_hydra_config: bool = False) -> DictConfig:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(
                config_name="config",
                overrides=list(overrides),
                return_hydra_config=return_hydra_config,
            )

    return _compose


def model_values(name: str) -> dict:
    """conf/model/<name>.yaml's own values, without `_target_`, its defaults list and `hidden_sizes`."""
    values = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml"))
    return {k: v for k, v in values.items() if k not in ("defaults", "_target_", "hidden_sizes")}


@pytest.fixture
def mlp():
    """`mlp(hidden_sizes, **keys) -> MLP`: 784 -> hidden_sizes -> 10 with conf/model/mlp.yaml's
    values, `keys` changed."""
    values = model_values("mlp")

    def _mlp(hidden_sizes, **keys) -> MLP:
        return MLP(IN_FEATURES, N_CLASSES, list(hidden_sizes), **{**values, **keys})

    return _mlp


@pytest.fixture
def job_config(compose, tmp_path):
    """`job_config(overrides=(), output_dir=None) -> DictConfig`: the config a task function gets.

    Like Hydra's `run_job`: HydraConfig is set (output dir under tmp_path unless given) and the
    returned config has no `hydra` node. Lets tests call `mnist_lab.job.task` functions in-process.
    """

    def _job(overrides=(), output_dir: Path | None = None) -> DictConfig:
        cfg = compose(overrides, return_hydra_config=True)
        out = Path(output_dir) if output_dir is not None else tmp_path / "job"
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(out)
        HydraConfig.instance().set_config(cfg)
        task_cfg = copy.deepcopy(cfg)
        with open_dict(task_cfg):
            del task_cfg["hydra"]
        return task_cfg

    yield _job
    HydraConfig.instance().cfg = None


@pytest.fixture
def run_cli(tmp_path):
    """`run_cli(args, cwd=None, own_dirs=False, env=None, timeout=300) -> CompletedProcess`.

    Runs `python experiments/run.py *args` in a subprocess with `cwd` (default tmp_path). Unless
    `own_dirs`, `hydra.run.dir` and `hydra.sweep.dir` are pointed at `<cwd>/run` and `<cwd>/sweep`;
    with `own_dirs` the config's own (relative) `results/...` folders land under `cwd`. `env`
    entries are added to (or, with value None, removed from) the environment. The result has
    extra attributes `output` (stdout + stderr), `run_dir` and `sweep_dir` (None with own_dirs).
    """

    def _run(args, cwd=None, own_dirs=False, env=None, timeout=300):
        cwd = Path(cwd) if cwd is not None else tmp_path
        cwd.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, str(RUN_PY), *args]
        run_dir = sweep_dir = None
        if not own_dirs:
            run_dir, sweep_dir = cwd / "run", cwd / "sweep"
            cmd += [f"hydra.run.dir='{run_dir}'", f"hydra.sweep.dir='{sweep_dir}'"]
        environ = dict(os.environ)
        environ.pop("HYDRA_FULL_ERROR", None)
        for key, value in (env or {}).items():
            if value is None:
                environ.pop(key, None)
            else:
                environ[key] = value
        proc = subprocess.run(
            cmd, cwd=cwd, env=environ, capture_output=True, text=True, timeout=timeout
        )
        proc.output = proc.stdout + proc.stderr
        proc.run_dir, proc.sweep_dir = run_dir, sweep_dir
        return proc

    return _run


@pytest.fixture
def cli_main(tmp_path, monkeypatch, capsys):
    """`cli_main(*args) -> (exit status, printed text)`: experiments/run.py run in this process
    as `python experiments/run.py *args` runs it (its storage and folders under tmp_path);
    `cli_main.streams` is the last run's (stdout, stderr)."""
    monkeypatch.chdir(tmp_path)  # the Optuna cases' default storage lands here
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(logging, "raiseExceptions", logging.raiseExceptions)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def _run(*args: str) -> tuple[int, str]:
        # As the project lays them out: results/ holds the runs, the sweeps and optuna.db.
        folders = {
            "hydra.run.dir": f"{tmp_path}/results/runs/run",
            "hydra.sweep.dir": f"{tmp_path}/results/multiruns/sweep",
        }
        argv = [str(RUN_PY), *args]
        argv += [f"{k}={v}" for k, v in folders.items() if not any(a.startswith(k) for a in args)]
        monkeypatch.setattr(sys, "argv", argv)
        code = 0
        try:
            runpy.run_path(str(RUN_PY), run_name="__main__")
        except SystemExit as stop:
            code = stop.code
        os.environ.pop("HYDRA_FULL_ERROR", None)
        captured = capsys.readouterr()
        _run.streams = captured.out, captured.err
        return code, captured.out + captured.err

    yield _run
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
    SweepFolder.path = None


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server for the session (tests/postgres_server.py).

    Skips with its reason where no server binary is installed; in CI (CI=true) that is a failure.
    """
    from postgres_server import PostgresServer, server_bin

    bin_dir = server_bin()
    if bin_dir is None:
        reason = "no PostgreSQL server (initdb) installed: apt-get install postgresql"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI must run the PostgreSQL tests: {reason}")
        pytest.skip(reason)
    server = PostgresServer(bin_dir)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server, request):
    """The URL of a fresh database on the session's server (password included)."""
    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name)[:50].lower()
    return postgres_server.create_database(name)


# --- a Trainer on data the test makes (no files) ------------------------------------------------


def tiny_data(n=256, seed=0):
    """A learnable 10-class problem in MNIST's shapes, made here (no files)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n + 128, IN_FEATURES, generator=g)
    y = x[:, :10].argmax(1)
    facts = DatasetFacts(
        image_shape=(28, 28),
        class_names=tuple(map(str, range(N_CLASSES))),
        train_size=n,
        test_size=64,
        normalization={"none": (0.0, 1.0)},
    )
    return DataTensors(
        train_x=x,
        train_y=y,
        train_idx=torch.arange(n),
        val_x=x[n : n + 64],
        val_y=y[n : n + 64],
        test_x=x[n + 64 :],
        test_y=y[n + 64 :],
        fingerprint={"id": "made-by-the-test"},
        facts=facts,
    )


def settings(epochs):
    """TrainSettings for `tiny_data`: batches of 32, every epoch evaluated, no output."""
    return TrainSettings(
        epochs=epochs,
        batch_size=32,
        shuffle=True,
        drop_last=False,
        eval_batch_size=1000,
        eval_every_epoch=True,
        log_interval=0,
        progress=False,
    )


def tiny_trainer(learner, epochs, hooks=(), patience=None, min_delta=0.0):
    """A Trainer of one member (seed 0) on `tiny_data`, with early stopping on val/acc if
    `patience` is given."""
    stopper = None if patience is None else EarlyStopping(patience, min_delta, Objective.of(None))
    member = Member(learner, seed=0, hooks=list(hooks), stopper=stopper)
    return Trainer([member], tiny_data(), settings(epochs))


def autograd_learner(model, lr, epochs, steps, max_norm=None, label_smoothing=0.0):
    """Plain SGD at a constant `lr` for `epochs` x `steps` steps, through autograd."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    return AutogradLearner(model, optimizer, [lr] * epochs * steps, max_norm, label_smoothing)


@pytest.fixture
def read_only_folder(tmp_path):
    """An existing folder nothing can be written to: a read-only tmpfs where this process may
    mount one (root, as in CI, whom file modes do not stop), else a folder without write
    permission; skipped with the reason where root cannot mount."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=16k", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here ({mount.stderr.strip()})")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)
