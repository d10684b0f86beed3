"""End to end: `python experiments/run.py -m` Optuna studies on a small real-MNIST subset (1-2
epochs per trial, CPU), and optuna-dashboard serving a study they produced.

Every storage and sweep folder is under pytest's tmp folders (never the repository's results/).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.trial import TrialState

REPO = Path(__file__).resolve().parent.parent
RUN_PY = REPO / "experiments" / "run.py"
QUICK = ["data.train_subset=2000", "epochs=1", "trainer.device=cpu"]


def _env():
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    # Several processes share a couple of cores here: one thread each avoids thrashing.
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_py(args, cwd, timeout=300):
    env = _env()
    proc = subprocess.run(
        [sys.executable, str(RUN_PY), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    proc.output = proc.stdout + proc.stderr
    return proc


def start_py(args, cwd):
    env = _env()
    return subprocess.Popen(
        [sys.executable, str(RUN_PY), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def record(trial) -> dict:
    return json.loads((Path(trial.user_attrs["run_dir"]) / "result.json").read_text())


@pytest.fixture(scope="module")
def tpe_study(tmp_path_factory):
    """`hparams_search=mlp_optuna` with n_trials=3, then the same command with n_trials=5."""
    root = tmp_path_factory.mktemp("tpe")
    url = f"sqlite:///{root}/optuna.db"
    # the command line narrows the config's batch sizes (fewer, faster steps)
    common = [
        "-m",
        "hparams_search=mlp_optuna",
        *QUICK,
        "batch_size=choice(128, 256)",
        f"hydra.sweeper.storage={url}",
    ]
    # seeded, so the first three trials are always the same (reseeded on resume)
    first = run_py(
        [*common, "hydra.sweeper.sampler.seed=0", "hydra.sweeper.n_trials=3",
         f"hydra.sweep.dir={root}/first"],
        cwd=root,
    )  # fmt: skip
    assert first.returncode == 0, first.output
    second = run_py(
        [*common, "hydra.sweeper.n_trials=5", f"hydra.sweep.dir={root}/second"], cwd=root
    )
    assert second.returncode == 0, second.output
    return root, url, second


def test_tpe_study_on_mnist_resumes_and_reports_the_best_trial(tpe_study):
    root, url, second = tpe_study
    study = optuna.load_study(study_name="mlp", storage=url)  # the name from the config
    trials = study.get_trials()
    assert study.metric_names == ["val/acc"]  # hparams_search=mlp_optuna names its objective
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert all(t.state.is_finished() for t in trials)
    assert [Path(t.user_attrs["run_dir"]).relative_to(root).as_posix() for t in trials] == [
        "first/trial_0000",
        "first/trial_0001",
        "first/trial_0002",
        "second/trial_0003",
        "second/trial_0004",
    ]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert complete, [t.user_attrs.get("reason") for t in trials]
    for trial in complete:
        assert set(trial.params) == {"hidden", "lr", "batch_size", "optimizer"}
        assert 64 <= trial.params["hidden"] <= 2048 and 1e-4 <= trial.params["lr"] <= 1.0
        assert trial.params["batch_size"] in (128, 256)  # the command line won
        assert trial.params["optimizer"] in ("sgd", "adam")
        result = record(trial)
        assert result["status"] == "completed"
        assert result["trial"] == {"study_name": "mlp", "number": trial.number}
        assert result["config"]["hidden"] == trial.params["hidden"]
        assert trial.value == result["final"]["val/acc"]  # the objective: validation accuracy
        assert trial.intermediate_values == {1: trial.value}  # per-epoch val/acc
        attrs = trial.user_attrs
        assert attrs["test_acc"] == result["final"]["test/acc"]
        assert attrs["epochs_run"] == 1 and attrs["wall_seconds"] > 0
        assert attrs["status"] == "completed"

    assert "running 2 more (n_trials=5)" in second.output
    results = OmegaConf.load(root / "second" / "optimization_results.yaml")
    best = study.best_trial
    assert results.best_trial.number == best.number
    assert results.best_value == best.value and dict(results.best_params) == best.params
    assert results.best_trial.run_dir == best.user_attrs["run_dir"]
    assert f"Best trial {best.number} of study 'mlp'" in second.output
    assert results.best_trial.retrain in second.output

    # the retrain command composes the best trial's config as a single run
    argv = shlex.split(results.best_trial.retrain)
    assert argv[:2] == ["python", str(RUN_PY)] and "hydra.mode=RUN" not in argv
    shown = subprocess.run(
        [sys.executable, *argv[1:], "--cfg", "job"], cwd=root, capture_output=True, text=True
    )
    assert shown.returncode == 0, shown.stderr
    job = OmegaConf.create(shown.stdout)
    assert job.hidden == best.params["hidden"] and job.lr == best.params["lr"]
    assert job.batch_size == best.params["batch_size"] and job.epochs == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def test_optuna_dashboard_serves_the_study(tpe_study):
    root, url, _ = tpe_study
    exe = Path(sys.executable).parent / "optuna-dashboard"
    command = str(exe) if exe.exists() else shutil.which("optuna-dashboard")
    if command is None:
        pytest.skip("the optuna-dashboard command is not installed")
    port = _free_port()
    server = subprocess.Popen(
        [command, url, "--host", "127.0.0.1", "--port", str(port), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                studies = _get_json(f"{base}/api/studies")["study_summaries"]
                break
            except OSError:
                assert server.poll() is None, server.communicate()[1]
                assert time.monotonic() < deadline, "optuna-dashboard did not answer in 30 s"
                time.sleep(0.2)
        assert [s["study_name"] for s in studies] == ["mlp"]
        detail = _get_json(f"{base}/api/studies/{studies[0]['study_id']}")
        assert detail["objective_names"] == ["val/acc"]  # not "Objective 0"
        trials = detail["trials"]
        assert [t["number"] for t in trials] == [0, 1, 2, 3, 4]
        complete = [t for t in trials if t["state"] == "Complete"]
        assert complete
        for trial in complete:
            assert {p["name"] for p in trial["params"]} == {
                "hidden",
                "lr",
                "batch_size",
                "optimizer",
            }
            assert [v["step"] for v in trial["intermediate_values"]] == [1]
            attrs = {a["key"] for a in trial["user_attrs"]}
            assert {"test_acc", "run_dir", "wall_seconds", "epochs_run", "status"} <= attrs
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_grid_study_prunes_and_fails_single_trials(tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    proc = run_py(
        [
            "-m",
            "hydra/sweeper=optuna",
            "hydra/sweeper/sampler=grid",
            "hydra.sweeper.direction=maximize",
            f"hydra.sweeper.storage={url}",
            "hydra.sweeper.study_name=grid",
            "hydra.sweeper.max_failure_rate=1.0",
            # any Optuna pruner by its class; this one is independent of trial order
            "hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner",
            "+hydra.sweeper.pruner.lower=0.3",
            *QUICK,
            "epochs=2",
            "batch_size=128",
            "hidden=choice(64, 0, abc)",  # 0 is refused by the trainer, abc does not compose
            "lr=choice(0.1, 0.0001)",
            f"hydra.sweep.dir={tmp_path}/sweep",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.output
    assert "n_trials 20 clamped to the grid size 6" in proc.output
    study = optuna.load_study(study_name="grid", storage=url)
    by_params = {(t.params["hidden"], t.params["lr"]): t for t in study.trials}
    assert len(study.trials) == 6 and len(by_params) == 6

    complete = by_params[(64, 0.1)]
    assert complete.state == TrialState.COMPLETE
    assert sorted(complete.intermediate_values) == [1, 2] and complete.value > 0.3

    pruned = by_params[(64, 0.0001)]
    assert pruned.state == TrialState.PRUNED
    assert list(pruned.intermediate_values) == [1]
    result = record(pruned)
    assert result["status"] == "pruned" and result["epochs_run"] == 1  # the partial record
    assert "pruned by ThresholdPruner after epoch 1" in result["reason"]
    assert pruned.user_attrs["reason"] == result["reason"]

    for lr in (0.1, 0.0001):
        refused = by_params[(0, lr)]
        assert refused.state == TrialState.FAIL
        assert refused.user_attrs["reason"].startswith("failed: ")
        assert "=0 is not allowed" in refused.user_attrs["reason"]
        assert record(refused)["status"] == "failed"
        not_composed = by_params[("abc", lr)]
        assert not_composed.state == TrialState.FAIL
        assert not_composed.user_attrs["reason"].startswith("config: ")
        assert not Path(not_composed.user_attrs["run_dir"]).exists()


def test_two_worker_processes_one_with_joblib_share_a_study(tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    common = [
        "-m",
        "hydra/sweeper=optuna",
        "hydra/sweeper/sampler=random",
        "hydra.sweeper.direction=maximize",
        f"hydra.sweeper.storage={url}",
        "hydra.sweeper.study_name=shared",
        "hydra.sweeper.n_trials=6",
        *QUICK,
        "batch_size=256",
        "hidden=choice(32, 64)",
        "lr=tag(log, interval(0.01, 0.2))",
        f"hydra.sweep.dir={tmp_path}/sweep",  # the same folder: trial numbers keep them apart
    ]
    workers = [
        start_py([*common, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], tmp_path),
        start_py(common, tmp_path),
    ]
    outputs = []
    for worker in workers:
        out, _ = worker.communicate(timeout=300)
        outputs.append(out)
        assert worker.returncode == 0, out
    study = optuna.load_study(study_name="shared", storage=url)
    trials = study.get_trials()
    # Each worker counts finished + running trials and asks under one claim (a file lock beside
    # the database): exactly n_trials, however the asks race.
    assert len(trials) == 6
    assert all(t.state == TrialState.COMPLETE for t in trials), outputs
    run_dirs = [t.user_attrs["run_dir"] for t in trials]
    assert len(set(run_dirs)) == len(trials)
    assert sorted(p.name for p in (tmp_path / "sweep").glob("trial_*")) == [
        f"trial_{t.number:04d}" for t in trials
    ]
    for trial in trials:
        assert record(trial)["trial"]["number"] == trial.number
        assert trial.intermediate_values == {1: trial.value}  # reported from joblib workers too
        assert trial.user_attrs["test_acc"] == record(trial)["final"]["test/acc"]
    assert {t.user_attrs["worker"]["pid"] for t in trials} == {w.pid for w in workers}
    # the sweeper's batch follows the joblib launcher's n_jobs: two trials per launch
    assert "Joblib.Parallel(n_jobs=2" in outputs[0] and "\t#1 : " in outputs[0]


def test_the_regularised_search_starts_from_the_preset_once(tmp_path):
    """`hparams_search=mlp_regularised` enqueues the preset's recipe as its first trial, and a
    resumed study does not run that trial again; an enqueued key outside the search space is
    refused in one line."""
    url = f"sqlite:///{tmp_path}/optuna.db"
    common = ["-m", "hparams_search=mlp_regularised", "data.train_subset=300", "epochs=1",
              "trainer.device=cpu", "hidden=16", "model.dropout=0.25",
              f"hydra.sweeper.storage={url}"]  # fmt: skip
    for n, folder in ((2, "first"), (3, "second")):
        proc = run_py(
            [*common, f"hydra.sweeper.n_trials={n}", f"hydra.sweep.dir={tmp_path}/{folder}"],
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.output
    study = optuna.load_study(study_name="mlp_regularised", storage=url)
    trials = study.get_trials(states=[TrialState.COMPLETE])
    assert len(trials) == 3
    # model.dropout=0.25 on the command line fixes it: no longer searched, not enqueued.
    preset = {"model.input_dropout": 0.1, "trainer.label_smoothing": 0.1, "trainer.max_norm": 3.5,
              "optimizer.weight_decay": 0.0, "lr": 0.05}  # fmt: skip
    assert trials[0].params == preset
    assert [t.params == preset for t in trials] == [True, False, False]
    bad = run_py(
        [*common, "hydra.sweeper.n_trials=1", "+hydra.sweeper.enqueue_trials=[{momentum: 0.5}]",
         f"hydra.sweep.dir={tmp_path}/bad"],
        cwd=tmp_path,
    )  # fmt: skip
    lines = [line for line in bad.output.splitlines() if line.strip()]
    assert bad.returncode == 2 and len(lines) == 1, bad.output
    assert "enqueue_trials" in lines[0] and "momentum" in lines[0]
    # The study keeps what its trials trained: resuming it with another length is refused.
    assert study.user_attrs["recipe"]["data.deskew"] is True  # the preset's, stored
    longer = [arg if arg != "epochs=1" else "epochs=2" for arg in common]
    other = run_py(
        [*longer, "hydra.sweeper.n_trials=4", f"hydra.sweep.dir={tmp_path}/longer"], cwd=tmp_path
    )
    # (Optuna's own log line, "Using an existing study", comes first.)
    lines = [line for line in other.output.splitlines() if line.strip()]
    assert other.returncode == 2 and "Traceback" not in other.output, other.output
    assert "study 'mlp_regularised' was run with epochs=1; this sweep has epochs=2" in lines[-1]
    assert "hydra.sweeper.study_name=NAME" in lines[-1]
    assert len(optuna.load_study(study_name="mlp_regularised", storage=url).trials) == 3
