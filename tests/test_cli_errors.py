"""Careless input ends in at most two lines that name the key or option and what is allowed,
exit status 2, no traceback and no HYDRA_FULL_ERROR hint (mnist_lab.app.cli); HYDRA_FULL_ERROR=1 still
gives Hydra's full report.

The table runs the real entry point (experiments/run.py's `main` through `mnist_lab.app.cli.run`)
in-process, so that 40 cases cost seconds; a few cases also run as real subprocesses.
"""

from __future__ import annotations

import re
import shutil

import optuna
import pytest

from mnist_lab.app.cli import explain
from mnist_lab.config.schema import CONF_DIR
from mnist_lab.errors import OutputError, SweepFailed

OPTUNA = ("-m", "hparams_search=mlp_optuna")

# (arguments, text the message must contain): every case fails before any training.
CASES = [
    (["hiden=128"], "unknown key hiden (did you mean hidden?)"),
    (["lr=fast"], "lr=fast: Value 'fast' of type 'str' could not be converted to Float"),
    (["optimizer=lbfgsx"], "options of optimizer: adadelta, adagrad, adam, adamw, rmsprop, sgd"),
    (["model.activation=swish"], "expected one of [relu, sigmoid, tanh, gelu, leaky_relu]"),
    (["hparams_search=nonexistent"], "options of hparams_search: mlp_optuna"),
    (["experiment=nonexistent"], "options of experiment: deep64x3_adam_nll"),
    (["hidden=choice()"], "cannot parse override 'hidden=choice()'"),
    (["+hidden=3"], "An item is already at 'hidden'"),
    (["model.hiden_sizes=[3]"], "unknown key model.hiden_sizes (did you mean model.hidden_sizes?)"),
    (["hidden=-1"], "model.hidden_sizes[0]=-1 is not allowed: must be > 0"),
    (["hidden=0"], "model.hidden_sizes[0]=0 is not allowed: must be > 0"),
    (["batch_size=0"], "batch_size=0 is not allowed: must be in [1,"),
    (["epochs=0"], "trainer.epochs=0 is not allowed: must be > 0"),
    (["lr=-1"], "optimizer.lr=-1.0 is not allowed: must be > 0"),
    (["trainer.device=tpu"], "trainer.device='tpu' is not allowed: one of auto, cpu"),
    (["data.val_size=70000"], "data.val_size=70000 is not allowed: must be in [0, 60000)"),
    (["scheduler=cosinex"], "scheduler=cosinex: no such option (did you mean cosine?)"),
    (["model=mlpx"], "model=mlpx: no such option (did you mean mlp or resmlp?)"),
    (["hidden=[1,2"], "cannot parse override 'hidden=[1,2'"),
    (["hidden="], "hidden=: Value '' of type 'str' could not be converted to Integer"),
    (["=3"], "an override is key=value"),
    (["data.normalize=foo"], "data.normalize='foo' is not allowed: one of mnist, half, none"),
    (["lr=inf"], "lr=inf is not allowed: must be a finite number"),
    (["lr=nan"], "lr=nan is not allowed: must be a finite number"),
    (["optimizer.lr=-inf"], "optimizer.lr=-inf is not allowed: must be a finite number"),
    (
        ["trainer.cuda_graph=maybe"],
        "trainer.cuda_graph='maybe' is not allowed: one of auto, on, off",
    ),
    (["seed=abc"], "seed=abc: Value 'abc' of type 'str' could not be converted to Integer"),
    (["model.dropout=1.5"], "model.dropout=1.5 is not allowed: must be in [0, 1)"),
    (["trainer.epoch=3"], "unknown key trainer.epoch (did you mean trainer.epochs?)"),
    (["optimizer.momentm=0.9"], "unknown key optimizer.momentm (did you mean optimizer.momentum?)"),
    (["hidden=1,2"], "to sweep the values add -m"),
    (["~nokey"], "'nokey' does not exist"),
    (["data=nope"], "options of data: mnist"),
    (["hydra/launcher=nope"], "options of hydra/launcher: basic"),
    (["model.hidden_sizes=abc"], "model.hidden_sizes=abc"),
    (["optimizer.lr=abc"], "optimizer.lr='abc' is not allowed: must be a number > 0"),
    (["data.train_subset=0"], "data.train_subset=0 is not allowed"),
    (["model.activation=relux"], "expected one of [relu,"),
    ([*OPTUNA, "hydra/sweeper/sampler=nope"], "options of hydra/sweeper/sampler: cmaes, gp, grid"),
    ([*OPTUNA, "hydra/sweeper/pruner=nope"], "options of hydra/sweeper/pruner:"),
    ([*OPTUNA, "hydra.sweeper.n_trials=-1"], "hydra.sweeper.n_trials=-1 is not allowed"),
    ([*OPTUNA, "lr=interval(1,0)"], "lr=interval(1,0)"),
    ([*OPTUNA, "hidden=choice(1,2"], "cannot parse override 'hidden=choice(1,2'"),
    ([*OPTUNA, "hydra.sweeper.direction=up"], "hydra.sweeper.direction"),
    ([*OPTUNA, "hydra.sweeper.storage=nodb://x"], "hydra.sweeper.storage"),
    ([*OPTUNA, "hydra.sweeper.storage=postgresql://u:secret@127.0.0.1:1/x"], "storage"),
    ([*OPTUNA, "hydra.sweeper.sampler.seed=abc"], "hydra.sweeper.sampler.seed=abc"),
    (["-m", "optimizer=adam,lbfgsx"], "options of optimizer:"),
    (["-m", "--cfg", "job"], "Only one of --run, --multirun, --cfg, --info and --shell_completion"),
    (
        [*OPTUNA, "hydra.sweeper.storage=sqlite:////nonexistent/dir/x.db"],
        "folder /nonexistent/dir does not exist (make it first;",
    ),
]
# Launchers that cannot start: refused before any trial is asked (docs/SWEEPS.md's Slurm recipe on a
# machine without Slurm, a joblib launcher with no workers).
LAUNCHERS = [
    (
        ["hydra/launcher=joblib", "hydra.launcher.n_jobs=0"],
        "hydra/launcher=joblib cannot start: n_jobs == 0 in Parallel has no meaning; no trial",
    ),
]
if shutil.which("srun") is None:
    LAUNCHERS.append(
        (
            [
                "hydra/launcher=submitit_slurm",
                "hydra.launcher.partition=gpu",
                "hydra.launcher.gpus_per_node=1",
                "hydra.launcher.timeout_min=60",
                "hydra.sweeper.n_jobs=16",
                "hydra.sweeper.n_trials=200",
            ],  # fmt: skip
            'hydra/launcher=submitit_slurm cannot start: Could not detect "srun"',
        )
    )
CASES += [([*OPTUNA, *args], expected) for args, expected in LAUNCHERS]
if not __import__("torch").cuda.is_available():
    CASES.append((["trainer.device=cuda"], "no CUDA device on this machine; use auto or cpu"))


def _message(output: str) -> list[str]:
    """The lines a user reads (log lines of a multirun's set-up are not messages)."""
    lines = [line for line in output.splitlines() if line.strip()]
    return [line for line in lines if "[HYDRA]" not in line and "][INFO]" not in line]


@pytest.mark.parametrize(("args", "expected"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_careless_input_is_one_clear_message(cli_main, args, expected):
    code, output = cli_main(*args)
    lines = _message(output)
    assert code == 2, output
    assert 1 <= len(lines) <= 2, output
    assert expected in output, output
    assert "Traceback" not in output and "HYDRA_FULL_ERROR" not in output, output


@pytest.mark.parametrize(("args", "expected"), LAUNCHERS, ids=[a[0] for a, _ in LAUNCHERS])
def test_a_launcher_that_cannot_start_adds_nothing_to_the_study(cli_main, tmp_path, args, expected):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    code, output = cli_main(*OPTUNA, f"hydra.sweeper.storage={storage}", *args)
    assert code == 2 and expected in output, output
    assert not (tmp_path / "optuna.db").exists() or not optuna.get_all_study_names(storage)


def test_password_of_a_bad_storage_url_is_not_shown(cli_main):
    code, output = cli_main(*OPTUNA, "hydra.sweeper.storage=postgresql://u:s3cr3t@127.0.0.1:1/x")
    assert code == 2 and "s3cr3t" not in output, output


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["hiden=128"], "did you mean hidden?"),
        (["optimizer=lbfgsx"], "options of optimizer: adadelta, adagrad, adam, adamw"),
    ],
)
def test_real_command_prints_at_most_two_lines(run_cli, args, expected):
    proc = run_cli(args)
    lines = [line for line in proc.output.splitlines() if line.strip()]
    assert proc.returncode == 2 and 1 <= len(lines) <= 2, proc.output
    assert expected in proc.output and "Traceback" not in proc.output


def test_hydra_full_error_still_gives_the_full_report(run_cli):
    proc = run_cli(["hiden=128"], env={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "ConfigCompositionException" in proc.stderr


def test_exit_statuses_of_other_errors():
    assert explain(SweepFailed("3 of 4 trials failed")) == (["3 of 4 trials failed"], 1)
    lines, code = explain(OutputError("cannot write /x/result.json: No space left on device"))
    assert code == 2 and lines == ["cannot write /x/result.json: No space left on device"]
    assert explain(RuntimeError("a bug")) is None  # a bug keeps its traceback


def test_sweep_whose_trials_fail_exits_1(cli_main):
    code, output = cli_main(*OPTUNA, "hydra.sweeper.n_trials=1", "hidden=0")
    assert code == 1, output
    assert output.splitlines()[-1].startswith("stopping the sweep: 1 of the trials it ran failed")
    assert "Traceback" not in output


LOG_FORMAT = re.compile(r"^\[[^]]*\]\[[^]]*\]\[(WARNING|ERROR|CRITICAL)\]", re.MULTILINE)
QUICK = ("epochs=1", "data.train_subset=200", "trainer.device=cpu")


@pytest.mark.parametrize(
    ("args", "status", "first_line"),
    [
        (["hiden=128"], 2, "unknown key hiden (did you mean hidden?)"),  # found by Hydra
        (["data.root=/nonexistent"], 2, "data.root=/nonexistent: no such folder;"),  # by the job
        (["lr=1e9", *QUICK], 3, "run diverged: train/loss became nan in epoch 1 (record in "),
        (["-m", "hidden=0", *QUICK], 0, "job failed: model.hidden_sizes[0]=0 is not allowed"),
        ([*OPTUNA, "hydra.sweeper.n_trials=1", "hidden=0", *QUICK], 1, "job failed: model.hidden"),
    ],
    ids=["compose", "job refuses", "diverged", "multirun job", "study"],
)
def test_every_error_is_a_plain_line_on_stderr(cli_main, args, status, first_line):
    """Errors Hydra finds, errors a job finds (logged) and a sweep's warnings: one format."""
    code, output = cli_main(*args)
    out, err = cli_main.streams
    assert code == status, output
    assert err.startswith(first_line), err
    assert not LOG_FORMAT.search(output), output


def test_help_lists_the_groups_and_knobs_one_line_each(cli_main):
    code, output = cli_main("--help", "model=resmlp", "hidden=64")
    assert code == 0, output
    groups = output.split("Config groups (group=option):\n")[1].split("\n\n")[0]
    listed = [line.split()[0] for line in groups.splitlines() if not line.startswith("    ")]
    for group in ("data", "model", "optimizer", "scheduler", "trainer", "objective"):
        assert group in listed, groups
    for group in ("experiment", "hparams_search", "hydra/sweeper/sampler", "hydra/launcher"):
        assert group in listed, groups
    assert "schema" not in output and "hydra/job_logging" not in output  # internal groups
    assert "  model                  the network (now resmlp): mlp, resmlp, scratch" in groups
    assert "optimizer" in groups and "adam, adamw, rmsprop, sgd" in groups
    for knob in ("hidden=64 ", "lr=0.01 ", "batch_size=32 ", "epochs=10 ", "seed=0 "):
        assert f"\n  {knob}" in output, output
    assert "is powered by Hydra" not in output and "== Config ==" not in output


def test_composing_a_job_does_not_list_the_groups(monkeypatch):
    """The help's group list is made when the help is printed, not on every composition (the
    template is resolved once while Hydra merges its own config; a multirun composes each job
    twice)."""
    from hydra import compose, initialize_config_dir

    from mnist_lab.config import help as lab_help

    listed = []
    monkeypatch.setattr(lab_help, "_groups", lambda parent="": listed.append(parent) or ["data"])
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", ["hidden=64"], return_hydra_config=True)
        assert listed == []
        assert "\n  data " in cfg.hydra.help.template and listed == [""]


@pytest.mark.parametrize(
    "command",
    [["experiments/run.py", "--help"], ["experiments/summarize.py", "nowhere", "--no-plots"]],
)
def test_a_reader_that_closes_the_pipe_ends_the_command_quietly(command, tmp_path):
    """`... | head`: the reader has what it wanted; no traceback and no error line, and the
    status of a process SIGPIPE ended (141), as a shell shows for `cat`."""
    import subprocess
    import sys

    (tmp_path / "nowhere").mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(CONF_DIR.parent / command[0]), *command[1:]],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.stdout.close()  # before the command writes a line
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 141, stderr
    assert "Traceback" not in stderr and "Broken pipe" not in stderr, stderr
