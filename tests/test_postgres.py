"""The scale-out recipes of docs/SWEEPS.md against a real PostgreSQL server (the `postgres_server` fixture):
two sweep processes on one study, Hydra's joblib launcher with 2 workers, and Hydra's submitit
launcher with its local executor (each trial its own process, as on Slurm minus the scheduler).

Each reaches the exact trial count with every epoch reported to the shared study (what pruning
across processes reads), and the database password reaches no file and no output. Short trainings:
the point is the storage, not the accuracy.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from mnist_lab.records.reading import read_record

RUN_PY = Path(__file__).resolve().parent.parent / "experiments" / "run.py"
EPOCHS = 2
# The recipe of docs/SWEEPS.md: the URL comes from the environment, never from the command line.
RECIPE = [
    "-m",
    "hparams_search=mlp_optuna",
    "hydra.sweeper.storage=${oc.env:MNIST_LAB_STORAGE}",
    f"epochs={EPOCHS}",
    "data.train_subset=1024",  # the search space has batch sizes up to 1024
    "trainer.device=cpu",
    "lr=tag(log, interval(1e-3, 1e-1))",  # no diverging trial: every one reports its epochs
]


def _start(tmp_path: Path, url: str, name: str, *extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["MNIST_LAB_STORAGE"] = url
    cmd = [sys.executable, str(RUN_PY), *RECIPE, *extra, f"hydra.sweep.dir={tmp_path / name}"]
    log = open(tmp_path / f"{name}.out", "w")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)


def _finish(procs: list[subprocess.Popen], timeout: float = 400) -> None:
    for proc in procs:
        proc.wait(timeout=timeout)
        proc.stdout and proc.stdout.close()
    codes = [proc.returncode for proc in procs]
    assert codes == [0] * len(procs), codes


def _check_study(url: str, study_name: str, n_trials: int) -> list[optuna.trial.FrozenTrial]:
    """Exactly n_trials finished, none left running, every epoch reported to the server."""
    trials = optuna.load_study(study_name=study_name, storage=url).get_trials()
    assert len(trials) == n_trials, [(t.number, t.state) for t in trials]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials), trials
    for t in trials:
        assert 1 in t.intermediate_values, (t.number, t.intermediate_values)
        if t.state == TrialState.COMPLETE:
            assert sorted(t.intermediate_values) == list(range(1, EPOCHS + 1))
            assert t.value == pytest.approx(t.intermediate_values[EPOCHS])
    return trials


def _job_pids(tmp_path: Path) -> set[int]:
    records = [read_record(p) for p in tmp_path.rglob("result.json")]
    assert records and all(r is not None for r in records)
    return {r["writer"]["pid"] for r in records}


def _assert_no_password(tmp_path: Path, password: str) -> None:
    leaks = [
        str(p.relative_to(tmp_path))
        for p in tmp_path.rglob("*")
        if p.is_file() and password.encode() in p.read_bytes()
    ]
    assert not leaks, f"the database password is written in {leaks}"


def test_two_sweep_processes_share_one_study(postgres_server, postgres_url, tmp_path):
    n = 6
    extra = (f"hydra.sweeper.n_trials={n}", "hydra.sweeper.study_name=shared")
    _finish([_start(tmp_path, postgres_url, f"worker{i}", *extra) for i in (1, 2)])
    trials = _check_study(postgres_url, "shared", n)
    assert len({t.user_attrs["worker"]["pid"] for t in trials}) == 2  # both ran trials
    for i in (1, 2):
        assert (tmp_path / f"worker{i}" / "optimization_results.yaml").is_file()
    _assert_no_password(tmp_path, postgres_server.password)


def test_joblib_launcher_with_two_workers(postgres_server, postgres_url, tmp_path):
    n = 4
    extra = (f"hydra.sweeper.n_trials={n}", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    _finish([_start(tmp_path, postgres_url, "joblib", *extra)])
    _check_study(postgres_url, "mlp", n)
    assert len(_job_pids(tmp_path)) >= 2  # the trials ran in worker processes
    _assert_no_password(tmp_path, postgres_server.password)


def test_submitit_local_launcher(postgres_server, postgres_url, tmp_path):
    """The README's Slurm recipe with `submitit_local`: each trial is its own process."""
    n = 2
    extra = (
        f"hydra.sweeper.n_trials={n}",
        "hydra/launcher=submitit_local",
        "hydra.sweeper.n_jobs=2",
        "hydra.launcher.timeout_min=10",
    )
    proc = _start(tmp_path, postgres_url, "submitit", *extra)
    _finish([proc])
    _check_study(postgres_url, "mlp", n)
    pids = _job_pids(tmp_path)
    assert len(pids) == n and proc.pid not in pids
    _assert_no_password(tmp_path, postgres_server.password)


def test_optunas_storage_warnings_keep_their_first_line(caplog):
    """Optuna's storage logs a lost connection's whole SQLAlchemy error (SQL, parameters, the
    driver's hint) as a warning before the error reaches the sweeper; inside `reaching` the
    terminal gets its first line only, so an outage still ends in one line of ours."""
    from mnist_lab.job.optuna_study import reaching

    storage_log = optuna.logging.get_logger("optuna.storages._rdb.storage")
    with caplog.at_level("WARNING"), reaching("postgresql://lab:pw@db/optuna"):
        storage_log.warning("Caught an error: %s.\n[SQL: SELECT 1]\n\tThis probably means", "lost")
    assert [r.getMessage() for r in caplog.records] == ["Caught an error: lost."]


def test_a_storage_outage_ends_the_sweep_in_one_line_and_the_resume_completes(
    postgres_server, postgres_url, tmp_path
):
    """The server stops while trial 1 trains: one line naming the storage (no password) and how
    to resume, exit 1; restarted, the same command marks trial 1 failed (`storage unavailable`,
    from its job's record) and tops the study up to the exact count."""
    n = 3
    # Long enough to stop the server mid-trial; small and fixed enough to be quick.
    extra = (f"hydra.sweeper.n_trials={n}", "hydra.sweeper.study_name=outage", "epochs=20",
             "hidden=choice(16, 32)", "batch_size=256", "optimizer=sgd", "lr=0.05")  # fmt: skip
    proc = _start(tmp_path, postgres_url, "outage", *extra)
    deadline = time.monotonic() + 120
    running = tmp_path / "outage" / "trial_0001" / "result.json"
    while not (running.exists() and (read_record(running, warn=False) or {}).get("epochs_run")):
        assert proc.poll() is None and time.monotonic() < deadline, tmp_path / "outage.out"
        time.sleep(0.05)
    postgres_server.pause()
    try:
        proc.wait(timeout=120)
    finally:
        postgres_server.resume()
    output = (tmp_path / "outage.out").read_text()
    assert proc.returncode == 1 and "Traceback" not in output, output
    # Plain lines: the running job's own error, then the command's one line naming the storage.
    said = [line for line in output.splitlines() if line.strip() and not line.startswith("[")]
    assert said[-1].startswith("storage unavailable: postgresql://lab:***@"), output
    assert "rerun the same command to resume" in said[-1]
    assert all(line.startswith("job failed: storage unavailable: ") for line in said[:-1]), output
    assert postgres_server.password not in output
    _finish([_start(tmp_path, postgres_url, "resumed", *extra)])
    trials = optuna.load_study(study_name="outage", storage=postgres_url).get_trials()
    assert len(trials) == n and trials[0].state == TrialState.COMPLETE, trials
    assert trials[1].state == TrialState.FAIL
    assert "storage unavailable" in trials[1].user_attrs["reason"]
    assert trials[2].state == TrialState.COMPLETE
    _assert_no_password(tmp_path, postgres_server.password)


class _Orig(Exception):
    def __init__(self, sqlstate):
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("sqlstate", "retried"), [("42710", True), ("42P07", True), ("42501", False)]
)
def test_a_schema_race_is_retried_other_database_errors_are_not(monkeypatch, sqlstate, retried):
    """Two sweeps creating a new PostgreSQL database's schema at once: the loser's "type
    studydirection already exists" (seen in CI) is retried; a permission error is not."""
    from sqlalchemy.exc import ProgrammingError

    from mnist_lab.job import optuna_study

    calls = []

    def storage(url, engine_kwargs):
        calls.append(url)
        if len(calls) == 1:
            raise ProgrammingError("CREATE TYPE studydirection", {}, _Orig(sqlstate))
        return "storage"

    monkeypatch.setattr(optuna.storages, "RDBStorage", storage)
    monkeypatch.setattr(optuna_study.time, "sleep", lambda s: None)
    if retried:
        assert optuna_study.open_storage("postgresql://h/db") == "storage" and len(calls) == 2
    else:
        with pytest.raises(ProgrammingError):
            optuna_study.open_storage("postgresql://h/db")
        assert len(calls) == 1
