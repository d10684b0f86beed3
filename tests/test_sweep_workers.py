"""`hydra.sweeper.workers=N`: a study run by N worker processes of one command, without a batch
barrier, with an exact trial count, one device or CPU-thread share per worker, and one report.

The commands run tests/apps/worker_task.py (the fake task behind the real entry point's
`mnist_lab.app.cli.run`: no training, each trial sleeps as long as its parameters say, placed on
its device as the real task is); the real task's records are checked in this process on a small
MNIST subset. The exact count is stressed with 4 processes claiming trials of one tiny study,
round after round.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from itertools import pairwise
from pathlib import Path

import optuna
import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.test_utils.test_utils import SweepTaskFunction
from omegaconf import OmegaConf
from optuna.trial import TrialState

from hydra_plugins.mnist_lab_optuna_sweeper._batches import Batches
from hydra_plugins.mnist_lab_optuna_sweeper._claim import Claim
from hydra_plugins.mnist_lab_optuna_sweeper._errors import SweeperError
from mnist_lab.errors import ConfigError
from mnist_lab.job import open_storage, worker_share
from mnist_lab.job.task import run_task
from mnist_lab.records.reading import read_record

APPS = Path(__file__).parent / "apps"
WORKER_APP = APPS / "worker_task.py"
HERE = os.readlink("/proc/self/ns/pid") if os.path.exists("/proc/self/ns/pid") else ""


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "OMP_NUM_THREADS")}


def _command(tmp_path: Path, n_trials: int, trials: list[dict], *extra: str) -> list[str]:
    """A fake study of `n_trials` whose first trials are `trials` (enqueued: sleep and x)."""
    queued = ", ".join(f"{{sleep: {t['sleep']}, x: {t['x']}}}" for t in trials)
    return [
        sys.executable, str(WORKER_APP), "-m", "hydra/sweeper=optuna",
        f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db", "hydra.sweeper.study_name=s",
        "hydra.sweeper.direction=maximize", f"hydra.sweeper.n_trials={n_trials}",
        "hydra.sweeper.workers=2", "mode=sleep", "sleep=interval(0, 60)", "x=interval(0, 1)",
        f"+hydra.sweeper.enqueue_trials=[{queued}]", f"hydra.sweep.dir={tmp_path}/sweep", *extra,
    ]  # fmt: skip


def _start(cmd: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip


def _trials(tmp_path: Path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/optuna.db").trials


def _wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{what} did not happen in {timeout} s"
        time.sleep(0.1)


def _said(stderr: str) -> list[str]:
    """What the command said on stderr besides Optuna's log lines (`[I 2026-...]`)."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("[")]


# ---------------------------------------------------------------- no barrier, one report


def test_uneven_trials_keep_both_workers_busy_and_the_count_is_exact(tmp_path):
    """8 trials, one of them 3.5 s long and the others 0.3 s: while one worker runs the long
    trial, the other runs the short ones back to back; the study ends with exactly 8 trials and
    one report naming the best. Each record names its worker, its device (from
    hydra.sweeper.devices) and its threads: the two workers' shares add up to the usable cores."""
    trials = [{"sleep": 3.5, "x": 0.2}] + [{"sleep": 0.3, "x": 0.1 + i / 100} for i in range(7)]
    trials[4]["x"] = 0.9  # the best
    cmd = _command(tmp_path, 8, trials, "hydra.sweeper.devices=[cpu,cpu]")
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _said(proc.stderr) == [], proc.stderr
    study_trials = _trials(tmp_path)
    assert [t.state for t in study_trials] == [TrialState.COMPLETE] * 8
    assert proc.stdout.count("Best trial 4 of study 's': value 0.9") == 1, proc.stdout

    busy: dict[int, list[tuple[datetime, datetime]]] = {}
    threads: dict[int, set[int]] = {}
    for trial in study_trials:
        record = json.loads((Path(trial.user_attrs["run_dir"]) / "result.json").read_text())
        worker = trial.user_attrs["worker"]
        assert record["trial"]["number"] == trial.number
        assert record["writer"]["pid"] == worker["pid"] and record["device"] == "cpu"
        assert record["worker"] == {"index": worker["index"], "workers": 2}
        interval = tuple(datetime.fromisoformat(record[k]) for k in ("started_at", "finished_at"))
        busy.setdefault(worker["index"], []).append(interval)
        threads.setdefault(worker["index"], set()).add(record["threads"])
    assert sorted(busy) == [0, 1] and [len(t) for t in threads.values()] == [1, 1]
    assert sum(t.pop() for t in threads.values()) == worker_share.usable_cores()
    last_start = max(start for intervals in busy.values() for start, _ in intervals)
    for index, intervals in busy.items():
        intervals.sort()
        # Between two trials, only the sweeper's own steps (tell, ask, compose: about 0.25 s
        # here); a barrier would keep the short-trial worker waiting ~3.2 s for the long one.
        gaps = [(b[0] - a[1]).total_seconds() for a, b in pairwise(intervals)]
        assert all(gap < 1.5 for gap in gaps), (index, gaps)
        # and no worker stopped while another still had trials to start
        assert (last_start - intervals[-1][1]).total_seconds() < 1.5, (index, intervals)


# ---------------------------------------------------------------- signals and kill -9


@pytest.mark.parametrize("stop", ["SIGTERM", "kill -9"])
def test_a_stopped_command_fails_both_running_trials_and_a_rerun_tops_up(tmp_path, stop):
    """SIGTERM to the command reaches each worker once (exit 143, one line); `kill -9` of the
    command stops its workers too (each gets SIGTERM when it dies). Either way both running
    trials are FAIL `terminated`, none is left RUNNING, and the same command tops the study up."""
    trials = [{"sleep": 60, "x": 0.1}, {"sleep": 60, "x": 0.2}]
    trials += [{"sleep": 0.1, "x": 0.3}, {"sleep": 0.1, "x": 0.4}]
    proc = _start(_command(tmp_path, 4, trials), tmp_path)
    started = [tmp_path / "sweep" / f"trial_000{i}" / ".hydra" for i in (0, 1)]
    _wait_for(lambda: all(p.exists() for p in started), proc, "both long trials starting")
    proc.send_signal(signal.SIGTERM if stop == "SIGTERM" else signal.SIGKILL)
    out, err = proc.communicate(timeout=60)  # until the workers, which share its stdout, end
    if stop == "SIGTERM":
        assert proc.returncode == 143, out + err
        assert _said(err) == ["stopped by SIGTERM: the running jobs are recorded 'terminated'"]
    assert "Traceback" not in out + err
    first = _trials(tmp_path)
    assert [t.state for t in first[:2]] == [TrialState.FAIL] * 2
    assert {t.user_attrs["reason"] for t in first[:2]} == {"terminated: Terminated"}
    assert all(t.state == TrialState.WAITING for t in first[2:])  # enqueued, never asked
    if stop == "kill -9":
        return  # the rerun is the same as after SIGTERM

    rerun = subprocess.run(
        _command(tmp_path, 4, trials), cwd=tmp_path, env=_env(), capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    states = [t.state for t in _trials(tmp_path)]
    assert states == [TrialState.FAIL] * 2 + [TrialState.COMPLETE] * 2


def test_kill_9_of_one_worker_the_other_finishes_the_study_exactly(tmp_path):
    """The killed worker's trial is failed at once by its sibling (same machine, its process is
    gone), the sibling tops the study up to n_trials, and the command says so in one line."""
    if not HERE:
        pytest.skip("no /proc/self/ns/pid: a killed worker's trial waits for grace_period")
    trials = [{"sleep": 60, "x": 0.1}] + [{"sleep": 0.5, "x": 0.2 + i / 100} for i in range(4)]
    proc = _start(_command(tmp_path, 5, trials), tmp_path)
    _wait_for(lambda: (tmp_path / "sweep" / "trial_0000" / ".hydra").exists(), proc, "trial 0")
    victim = _trials(tmp_path)[0].user_attrs["worker"]
    os.kill(victim["pid"], signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, out + err
    assert _said(err) == [
        f"worker {victim['index']} (pid {victim['pid']}) was killed by SIGKILL; "
        "the study has 5 of 5 finished trials"
    ]
    study_trials = _trials(tmp_path)
    assert len(study_trials) == 5 and study_trials[0].state == TrialState.FAIL
    assert (
        study_trials[0].user_attrs["reason"].startswith(f"stale: its sweeper (pid {victim['pid']}")
    )
    assert [t.state for t in study_trials[1:]] == [TrialState.COMPLETE] * 4
    assert "Best trial 4 of study 's'" in out  # the report comes first


# ---------------------------------------------------------------- devices and threads


@pytest.mark.parametrize(
    ("index", "workers", "cores", "jobs", "expected"),
    [(0, 2, 2, 1, 1), (1, 2, 2, 1, 1), (0, 3, 8, 1, 3), (2, 3, 8, 1, 2), (0, 2, 16, 2, 4),
     (3, 4, 2, 1, 1)],
)  # fmt: skip
def test_thread_shares_add_up_to_the_cores(index, workers, cores, jobs, expected):
    assert worker_share.cpu_threads(index, workers, cores, jobs) == expected
    if workers <= cores:
        assert sum(worker_share.cpu_threads(i, workers, cores) for i in range(workers)) == cores


def test_auto_means_the_workers_device(monkeypatch):
    share = worker_share.Share(index=3, workers=4, devices=("cuda:0", "cuda:2"), parallel_jobs=1)
    assert worker_share.worker_device("auto", share) == "cuda:2"
    monkeypatch.setattr(worker_share.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(worker_share.torch.cuda, "device_count", lambda: 2)
    plain = worker_share.Share(index=3, workers=4, devices=None, parallel_jobs=1)
    assert worker_share.worker_device("auto", plain) == "cuda:1"
    assert worker_share.worker_device("cuda:0", plain) == "cuda:0"  # as written
    with pytest.raises(ConfigError, match=r"hydra.sweeper.devices=\['cuda:0', 'cuda:2'\]"):
        worker_share.worker_device("cuda:0", share)  # both set: refused, not dropped


def test_a_job_outside_a_worker_keeps_its_device_and_threads(job_config, tmp_path):
    threads = worker_share.torch.get_num_threads()
    job_config(["trainer.device=auto"])
    assert worker_share.current() is None and worker_share.identity() is None
    assert worker_share.place("auto").type == "cpu"
    assert worker_share.torch.get_num_threads() == threads


def test_the_task_records_its_workers_device_and_threads(job_config, tmp_path, monkeypatch):
    """The real task, as worker 1 of 2 on a 3-core machine: it trains on the worker's device
    with the worker's share of the cores (1; worker 0 gets 2), and its record says so."""
    threads = worker_share.torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(worker_share, "usable_cores", lambda: 3)
    cfg = job_config([
        "hydra/sweeper=optuna", "hydra.sweeper.workers=2", "hydra.sweeper.devices=[cpu]",
        f"++hydra.job.env_set.{worker_share.WORKER_ENV}='1'", "trainer.device=auto", "epochs=1",
        "data.train_subset=200", "trainer.save_figures=false", "trainer.save_weights=none",
    ])  # fmt: skip
    try:
        run_task(cfg)
    finally:
        worker_share.torch.set_num_threads(threads)
    record = read_record(tmp_path / "job")
    assert record["status"] == "completed", record["reason"]
    assert record["worker"] == {"index": 1, "workers": 2}
    assert record["device"] == "cpu" and record["threads"] == 1


def test_a_workers_job_gets_its_share(job_config, monkeypatch):
    threads = worker_share.torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(worker_share, "usable_cores", lambda: 5)
    try:
        job_config([
            "hydra/sweeper=optuna", "hydra.sweeper.workers=2", "hydra.sweeper.devices=[cpu]",
            f"++hydra.job.env_set.{worker_share.WORKER_ENV}='1'",
        ])  # fmt: skip
        assert worker_share.identity() == {"index": 1, "workers": 2}
        assert str(worker_share.place("auto")) == "cpu"
        assert worker_share.torch.get_num_threads() == 2  # 5 cores: 3 for worker 0, 2 for 1
    finally:
        worker_share.torch.set_num_threads(threads)


# ---------------------------------------------------------------- refused in one line


@pytest.fixture
def in_process_sweep(tmp_path):
    """`in_process_sweep(*overrides)`: the fake task swept in this process (Hydra's runner)."""

    def _sweep(*overrides):
        runner = SweepTaskFunction()
        runner.calling_file, runner.calling_module = str(APPS / "fake_task.py"), None
        runner.task_function = lambda cfg: cfg.x
        runner.config_path, runner.config_name = "conf", "fake"
        runner.temp_dir = str(tmp_path / "sweep")
        runner.overrides = ["hydra/sweeper=optuna", "x=interval(0, 1)", *overrides]
        runner.__enter__()

    yield _sweep
    HydraConfig.instance().cfg = None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["hydra.sweeper.workers=2"], "hydra.sweeper.workers=2 needs a storage its worker "
         "processes share, e.g. hydra.sweeper.storage=sqlite:///results/optuna.db"),
        (["hydra.sweeper.workers=0"], "hydra.sweeper.workers=0 is not allowed: an integer >= 1"),
        (["hydra.sweeper.workers=2", "hydra/sweeper/sampler=qmc", "+STORAGE"],
         "the QMC sampler needs hydra.sweeper.sampler.seed"),
        (["hydra.sweeper.devices=[]"], "hydra.sweeper.devices=[] is not allowed"),
        (["hydra.sweeper.devices=[cpu]", "trainer.device=cpu"], "hydra.sweeper.devices=['cpu'] "
         "is not allowed: gives each worker its device where trainer.device=auto, and this job "
         "has trainer.device=cpu"),
        (["hydra.sweeper.devices=[cpu,gpu0]"], "hydra.sweeper.devices=['cpu', 'gpu0'] is not "
         "allowed: one of auto, cpu, cuda, cuda:N, mps"),
        (["hydra.sweeper.workers=2", "+STORAGE"], "hydra.sweeper.workers starts this command "
         "again for each worker, but 'x=interval(0, 1)' is not on its command line"),
    ],
)  # fmt: skip
def test_what_workers_cannot_share_is_refused_before_any_trial(
    in_process_sweep, tmp_path, overrides, message
):
    storage = f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db"
    overrides = [storage if o == "+STORAGE" else o for o in overrides]
    with pytest.raises(SweeperError) as error:
        in_process_sweep(*overrides)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "optuna.db").exists()  # refused before the study was opened


# ---------------------------------------------------------------- the exact count, stressed


def _claim_trials(url: str, sweep_dir: str, target: int, start) -> None:
    """One worker's asking loop (`Batches.ask`, one trial a time, told at once) on study `c`."""
    study = optuna.load_study(study_name="c", storage=open_storage(url))
    config = OmegaConf.create({"hydra": {"sweep": {"dir": sweep_dir}, "sweeper": {"storage": url}}})
    batches = Batches(
        study=study, launcher=None, hydra_context=None, config=config, space=[], fixed=[],
        extend=None, url=url, worker={"pid": os.getpid()}, heartbeat_interval=30.0, size=1,
        n_objectives=1, claim=Claim(url, "c"),
    )  # fmt: skip
    start.wait()
    while batch := batches.ask(target):
        for trial, _ in batch:
            study.tell(trial, 1.0)
    batches.claim.close()


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_four_workers_never_overshoot(request, tmp_path, database):
    """4 processes claim trials of one study of 6 as fast as they can, round after round, each
    round a new study. Without the claim, 11 rounds of 12 overshot (two or more asked for the last slot)."""
    rounds = 4
    if database == "postgresql":
        base, rounds = request.getfixturevalue("postgres_url"), 2
    context = multiprocessing.get_context("fork")
    for round_ in range(rounds):
        if database == "postgresql":
            url = base
            if round_:
                optuna.delete_study(study_name="c", storage=url)
        else:
            url = f"sqlite:///{tmp_path}/claims{round_}.db"
        optuna.create_study(study_name="c", storage=url)
        start = context.Barrier(4)
        workers = [
            context.Process(target=_claim_trials, args=(url, str(tmp_path), 6, start))
            for _ in range(4)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
            assert worker.exitcode == 0
        trials = optuna.load_study(study_name="c", storage=url).trials
        assert len(trials) == 6, (round_, len(trials))
        assert all(t.state == TrialState.COMPLETE for t in trials)
