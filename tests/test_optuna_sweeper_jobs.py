"""The Optuna sweeper driving jobs of a fake task (tests/apps/fake_task.py: no torch, outcome set
by overrides): failures, resume, pruning, stale trials, grid, several objectives, config errors.

Most sweeps run in this process (Hydra's test runner, basic launcher); the ones that need a real
process (one-line CLI error, `kill -9`) run the fake app in a subprocess. Storage and sweep
folders live under tmp_path.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import optuna
import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.test_utils.test_utils import SweepTaskFunction
from omegaconf import OmegaConf
from optuna.trial import TrialState

from hydra_plugins.mnist_lab_optuna_sweeper import _batches, _workers
from hydra_plugins.mnist_lab_optuna_sweeper._errors import SweeperError
from mnist_lab.errors import SweepFailed
from mnist_lab.job import optuna_study
from mnist_lab.signals import Terminated

APP = Path(__file__).parent / "apps" / "fake_task.py"
_spec = importlib.util.spec_from_file_location("fake_task", APP)
fake_task = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fake_task)


class Sweep:
    """A finished in-process sweep: its study, trials and folders (copied out of Hydra's runner)."""

    def __init__(self, url: str, name: str, sweep_dir: Path):
        self.url, self.name, self.dir = url, name, sweep_dir
        self.study = optuna.load_study(study_name=name, storage=url)
        self.trials = self.study.get_trials()

    def states(self) -> list[str]:
        return [t.state.name for t in self.trials]

    def record(self, trial) -> dict:
        return json.loads((Path(trial.user_attrs["run_dir"]) / "result.json").read_text())

    def results(self) -> dict:
        return OmegaConf.to_container(OmegaConf.load(self.dir / "optimization_results.yaml"))


@pytest.fixture
def sweep(tmp_path):
    """`sweep(*overrides, study="s", n_trials=3, name="run1") -> Sweep` (SweeperError propagates).

    Storage: sqlite in tmp_path; sweep dir: tmp_path/<name> (kept after the run).
    """
    url = f"sqlite:///{tmp_path}/optuna.db"

    def _sweep(*overrides, study="s", n_trials=3, name="run1", storage=url):
        sweep_dir = tmp_path / name
        runner = SweepTaskFunction()
        runner.calling_file, runner.calling_module = str(APP), None
        runner.task_function = fake_task.task
        runner.config_path, runner.config_name = "conf", "fake"
        runner.temp_dir = str(sweep_dir)
        runner.overrides = [
            "hydra/sweeper=optuna",
            f"hydra.sweeper.storage={storage}" if storage else "hydra.sweeper.storage=null",
            f"hydra.sweeper.study_name={study}",
            f"hydra.sweeper.n_trials={n_trials}",
            "hydra.sweeper.direction=maximize",
            *overrides,
        ]
        runner.__enter__()  # runs the sweep; __exit__ would delete the sweep dir
        return Sweep(storage or url, study, sweep_dir) if storage else runner

    yield _sweep
    HydraConfig.instance().cfg = None  # the last job's config must not leak into other tests


# ---------------------------------------------------------------- failures


def test_each_failure_fails_only_its_trial_with_a_reason(sweep):
    expected = {  # mode: (state, status user attribute, reason user attribute)
        "value": ("COMPLETE", "completed", None),
        "raise": ("FAIL", "failed", "RuntimeError: boom"),
        "return_nan": ("FAIL", "completed", "objective returned nan"),
        "return_inf": ("FAIL", "completed", "objective returned inf"),
        "return_string": ("FAIL", "completed", "objective returned 'not a number', not a number"),
        "return_none": ("FAIL", "completed", "objective returned None, not a number"),
        "diverged": ("FAIL", "diverged", "diverged: training loss became nan in epoch 1"),
        "failed_record": ("FAIL", "failed", "failed: ConfigError: hidden=0 is not allowed"),
    }
    s = sweep(
        "hydra/sweeper/sampler=grid",  # every mode once
        f"mode=choice({','.join(expected)})",
        "hydra.sweeper.max_failure_rate=1.0",
        n_trials=20,
    )
    outcome = {
        t.params["mode"]: (t.state.name, t.user_attrs["status"], t.user_attrs.get("reason"))
        for t in s.trials
    }
    assert outcome == expected
    best = s.study.best_trial
    assert best.params == {"mode": "value"} and s.results()["best_trial"]["number"] == best.number


def test_all_trials_failed_gives_a_clear_message(sweep, tmp_path):
    with pytest.raises(SweepFailed) as error:
        sweep("mode=raise", "hydra.sweeper.max_failure_rate=1.0", n_trials=3)
    message = str(error.value)
    assert message == (
        "no trial of study 's' completed (3 fail); see each trial's `reason` user attribute"
    )
    s = Sweep(f"sqlite:///{tmp_path}/optuna.db", "s", tmp_path / "run1")
    assert s.states() == ["FAIL"] * 3
    assert s.results()["best_trial"] is None and s.results()["trials"] == {"fail": 3}


def test_interrupted_sweep_leaves_no_trial_running(sweep, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        sweep("mode=interrupt", n_trials=3)
    s = Sweep(f"sqlite:///{tmp_path}/optuna.db", "s", tmp_path / "run1")
    assert s.states() == ["FAIL"]
    assert s.trials[0].user_attrs["reason"] == "interrupted: KeyboardInterrupt"


def test_max_failure_rate_stops_the_sweep(sweep, tmp_path):
    with pytest.raises(SweepFailed, match="stopping the sweep: 3 of the trials it ran failed"):
        sweep("mode=raise", "hydra.sweeper.max_failure_rate=0.2", n_trials=10)
    s = Sweep(f"sqlite:///{tmp_path}/optuna.db", "s", tmp_path / "run1")
    assert s.states() == ["FAIL"] * 3  # 3 > 0.2 * 10


def test_terminated_sweep_fails_its_trial_as_terminated(sweep, tmp_path):
    with pytest.raises(Terminated):  # re-raised: the entry point turns it into exit 143
        sweep("mode=terminate", n_trials=3)
    s = Sweep(f"sqlite:///{tmp_path}/optuna.db", "s", tmp_path / "run1")
    assert s.states() == ["FAIL"]
    assert s.trials[0].user_attrs["status"] == "terminated"
    assert s.trials[0].user_attrs["reason"] == "terminated: Terminated"


@pytest.mark.parametrize("stop", ["interrupt", "terminate"])
def test_a_job_that_finished_before_the_stop_is_complete(sweep, tmp_path, stop):
    """Its record is the truth: a batch stopped by a signal after one job completed tells that
    trial COMPLETE with the value its record states, and only the stopped one FAIL."""
    with pytest.raises(KeyboardInterrupt):
        sweep(
            f"mode=choice(value, {stop})",
            f"+hydra.sweeper.enqueue_trials=[{{mode: value}}, {{mode: {stop}}}]",
            "hydra.sweeper.n_jobs=2",  # one batch: the launcher raises after job 0 finished
            "x=0.7",
            n_trials=2,
        )
    s = Sweep(f"sqlite:///{tmp_path}/optuna.db", "s", tmp_path / "run1")
    done, stopped = s.trials
    assert done.state == TrialState.COMPLETE and done.value == s.record(done)["final"]["val/acc"]
    assert done.user_attrs["status"] == "completed" and done.value == pytest.approx(0.7)
    status = {"interrupt": "interrupted", "terminate": "terminated"}[stop]
    assert stopped.state == TrialState.FAIL and stopped.user_attrs["status"] == status


def test_a_dead_sweepers_trial_is_told_what_its_record_says(sweep, tmp_path):
    here = _workers.this_worker()
    if not here["pidns"]:
        pytest.skip("no /proc/self/ns/pid on this system")
    url = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    records = {  # the dead sweeper's jobs: one finished, one failed, one still running
        "completed": {"final": {"val/acc": 0.81, "test/acc": 0.8}},
        "failed": {"reason": "storage unavailable: sqlite:///x.db: database is locked"},
        "running": {},
    }
    numbers = {}
    for status, facts in records.items():
        run_dir = tmp_path / "dead" / status
        run_dir.mkdir(parents=True)
        (run_dir / "result.json").write_text(json.dumps({"status": status, **facts}))
        numbers[status] = _running(study, {**here, "pid": dead.pid}, 0, run_dir=str(run_dir))
    s = sweep("x=interval(0, 1)", n_trials=3)
    by_number = {t.number: t for t in s.trials}
    completed = by_number[numbers["completed"]]
    assert completed.state == TrialState.COMPLETE and completed.value == 0.81
    assert completed.user_attrs["test_acc"] == 0.8
    failed = by_number[numbers["failed"]]
    assert failed.state == TrialState.FAIL
    assert failed.user_attrs["reason"] == f"failed: {records['failed']['reason']}"
    running = by_number[numbers["running"]]
    assert running.state == TrialState.FAIL and running.user_attrs["status"] == "stale"
    assert len(s.trials) == 3  # all three count: nothing more to run


@pytest.mark.parametrize(
    "rate, n_failed, message",
    [  # 0 (the official plugin's default) stops at the first failure; 1 never stops early
        (0.0, 1, "stopping the sweep: 1 of the trials it ran failed"),
        (0.3, 2, "stopping the sweep: 2 of the trials it ran failed, more than "
         "max_failure_rate=0.3 of 6"),
        (1.0, 3, None),
    ],
)  # fmt: skip
def test_max_failure_rate_counts_failures_over_the_sweep(sweep, tmp_path, rate, n_failed, message):
    overrides = [
        "hydra/sweeper/sampler=grid",  # 6 trials, 3 of which raise, in the grid's random order
        "mode=choice(value, raise)",
        "x=choice(0.1, 0.2, 0.3)",
        f"hydra.sweeper.max_failure_rate={rate}",
    ]
    if message is None:
        s = sweep(*overrides, n_trials=6)
        assert len(s.trials) == 6
    else:
        with pytest.raises(SweepFailed) as error:
            sweep(*overrides, n_trials=6)
        assert str(error.value).startswith(message) and "\n" not in str(error.value)
        assert "RuntimeError: boom" in str(error.value)  # the last failure's reason
        s = Sweep(f"sqlite:///{tmp_path}/optuna.db", "s", tmp_path / "run1")
        assert s.states()[-1] == "FAIL"  # stopped right after the failure that crossed it
    assert s.states().count("FAIL") == n_failed


def test_values_with_spaces_and_commas_and_a_value_that_does_not_compose(sweep):
    s = sweep(
        "hydra/sweeper/sampler=grid",
        "flavor=choice(plain, no_such_flavor)",
        "name=choice('a b', 'c,d', \"it's\")",
        "hydra.sweeper.max_failure_rate=1.0",
        n_trials=6,
    )
    complete = [t for t in s.trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["name"] for t in complete) == ["a b", "c,d", "it's"]
    for trial in complete:
        assert s.record(trial)["config"]["name"] == trial.params["name"]
    failed = [t for t in s.trials if t.state == TrialState.FAIL]
    assert len(failed) == 3 and all(t.params["flavor"] == "no_such_flavor" for t in failed)
    for trial in failed:
        assert trial.user_attrs["reason"].startswith("config: ")
        assert "no_such_flavor" in trial.user_attrs["reason"]
        assert not Path(trial.user_attrs["run_dir"]).exists()  # never launched
    assert not any(t.state == TrialState.RUNNING for t in s.trials)


# ---------------------------------------------------------------- search space and resume


def test_command_line_wins_over_config_params(sweep):
    s = sweep("hparams_search=fake_optuna", "x=0.25", "name=choice(c)", study="fake")
    assert len(s.trials) == 3
    assert all(t.params == {"name": "c"} for t in s.trials)
    assert all(t.value == 0.25 for t in s.trials)


def test_resume_tops_up_numbering_continues_directories_never_reused(sweep, tmp_path):
    first = sweep("x=interval(0, 1)", n_trials=2, name="run1")
    assert [t.number for t in first.trials] == [0, 1]
    second = sweep("x=interval(0, 1)", n_trials=4, name="run2")
    assert [t.state.name for t in second.trials] == ["COMPLETE"] * 4
    assert sorted(p.name for p in (tmp_path / "run2").glob("trial_*")) == [
        "trial_0002",
        "trial_0003",
    ]
    assert second.trials[0].user_attrs == first.trials[0].user_attrs  # kept as they were
    # the same command again: nothing to run, the summary is still written
    third = sweep("x=interval(0, 1)", n_trials=4, name="run3")
    assert len(third.trials) == 4 and not list((tmp_path / "run3").glob("trial_*"))
    assert third.results()["best_trial"]["number"] == third.study.best_trial.number
    # a sweep dir reused by another study: trial folders get a suffix, nothing is overwritten
    other = sweep("x=interval(0, 1)", study="other", n_trials=1, name="run1")
    assert other.trials[0].user_attrs["run_dir"].endswith("run1/trial_0000_2")
    assert json.loads((tmp_path / "run1/trial_0000/result.json").read_text())["trial"] == {
        "study_name": "s",
        "number": 0,
    }


def extend(cfg, trial):
    """custom_search_space of the official plugin: suggest more parameters from code."""
    trial.suggest_float("y", 0.0, cfg.x)


def test_custom_search_space_function(sweep):
    s = sweep("x=0.5", f"hydra.sweeper.custom_search_space={__name__}.extend", n_trials=2)
    for trial in s.trials:
        assert 0.0 <= trial.params["y"] <= 0.5
        assert trial.value == pytest.approx(0.5 + trial.params["y"])  # the job got y


def test_grid_is_clamped_to_its_size(sweep):
    s = sweep("hydra/sweeper/sampler=grid", "x=choice(0.1, 0.2, 0.3)", n_trials=10)
    assert sorted(t.params["x"] for t in s.trials) == [0.1, 0.2, 0.3]
    again = sweep("hydra/sweeper/sampler=grid", "x=choice(0.1, 0.2, 0.3)", n_trials=10)
    assert len(again.trials) == 3


def test_official_plugin_configs_work(sweep, tmp_path):
    # lightning-hydra-template style: the config itself sets hydra.mode=MULTIRUN (no -m)
    proc = _fake_cli(["hparams_search=official_style", f"hydra.sweep.dir={tmp_path}/s"], tmp_path)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    results = OmegaConf.load(tmp_path / "s" / "optimization_results.yaml")
    assert set(results.best_params) == {"x", "y", "name"} and results.trials.complete == 3
    assert results.best_trial.retrain.endswith(" hydra.mode=RUN")  # a retrain is a single run
    runner = sweep("hparams_search=official_search_space", storage=None)
    results = OmegaConf.load(Path(runner.temp_dir) / "optimization_results.yaml")
    assert set(results.best_params) == {"x", "y", "epochs"}


def test_several_objectives_give_the_pareto_front(sweep):
    s = sweep(
        "hydra.sweeper.direction=[maximize,minimize]",
        "hydra/sweeper/sampler=grid",
        "mode=two",
        "x=choice(0.2, 0.8)",
        "y=choice(0.1, 0.5)",
        n_trials=4,
    )
    results = s.results()
    front = results["solutions"]  # the official plugin's key for the Pareto front
    assert "best_trial" not in results and "pareto_front" not in results
    assert all({"params", "values"} <= set(p) for p in front)
    # values (x, x + y): (0.2, 0.3) and (0.8, 0.9) are not dominated
    assert sorted((round(a, 6), round(b, 6)) for a, b in (p["values"] for p in front)) == [
        (0.2, 0.3),
        (0.8, 0.9),
    ]
    assert all("retrain" in p and p["run_dir"] for p in front)
    assert all(t.intermediate_values == {} for t in s.trials)  # Optuna: no reports for several


def test_several_objectives_none_completed_gives_empty_solutions(sweep, tmp_path):
    with pytest.raises(SweepFailed, match="no trial of study 's' completed"):
        sweep(
            "hydra.sweeper.direction=[maximize,minimize]",
            "mode=raise",
            "hydra.sweeper.max_failure_rate=1.0",
            n_trials=2,
        )
    results = Sweep(f"sqlite:///{tmp_path}/optuna.db", "s", tmp_path / "run1").results()
    assert results["solutions"] == [] and results["trials"] == {"fail": 2}


# ---------------------------------------------------------------- pruning


def test_pruned_trial_is_pruned_with_partial_record(sweep):
    median = ["hydra/sweeper/pruner=median", "hydra.sweeper.pruner.n_startup_trials=1", "epochs=3"]
    # x is searched, each sweep's first trial enqueued at the value it needs (one recipe).
    searched = [*median, "x=interval(0, 1)"]
    first = sweep(*searched, "+hydra.sweeper.enqueue_trials=[{x: 0.9}]", n_trials=1)
    assert first.trials[0].intermediate_values == pytest.approx({1: 0.3, 2: 0.6, 3: 0.9})
    # below the median after epoch 1
    s = sweep(*searched, "+hydra.sweeper.enqueue_trials=[{x: 0.1}]", n_trials=2, name="run2")
    assert s.states() == ["COMPLETE", "PRUNED"]
    assert s.trials[1].intermediate_values == pytest.approx({1: 0.1 / 3})
    record = s.record(s.trials[1])
    assert record["status"] == "pruned" and record["epochs_run"] == 1
    assert record["trial"] == {"study_name": "s", "number": 1}
    assert s.trials[1].user_attrs["status"] == "pruned"
    assert s.trials[1].user_attrs["epochs_run"] == 1
    assert "pruned by MedianPruner after epoch 1" in s.trials[1].user_attrs["reason"]


def test_any_pruner_by_target_and_in_memory_study_prunes_in_this_process(sweep):
    runner = sweep(
        "hydra/sweeper/sampler=grid",
        "hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner",
        "+hydra.sweeper.pruner.lower=0.2",
        "x=choice(0.9, 0.3)",
        "epochs=3",
        study="memory",
        storage=None,
    )
    study = optuna.load_study(study_name="memory", storage=optuna_study.in_memory_storage("memory"))
    states = {t.params["x"]: t.state.name for t in study.trials}
    assert states == {0.9: "COMPLETE", 0.3: "PRUNED"}  # 0.3 / 3 < 0.2 after epoch 1
    assert runner.returns is None  # like the official sweeper: nothing held per trial


def test_a_trial_that_trains_all_its_epochs_is_complete(sweep):
    threshold = [
        "hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner",
        "+hydra.sweeper.pruner.lower=0.99",  # every value below it: prunes whenever asked
    ]
    s = sweep(*threshold, "x=0.5", "epochs=1", n_trials=1)
    assert s.states() == ["COMPLETE"]  # no pruning decision after the last epoch
    assert s.trials[0].intermediate_values == {1: 0.5}  # but the value is reported
    assert s.record(s.trials[0])["status"] == "completed"
    with pytest.raises(SweepFailed, match="no trial of study 'three' completed"):
        sweep(*threshold, "x=0.5", "epochs=3", n_trials=1, study="three", name="run2")
    s = Sweep(s.url, "three", s.dir.parent / "run2")
    assert s.states() == ["PRUNED"]  # before the last epoch the pruner decides
    assert s.trials[0].intermediate_values == pytest.approx({1: 0.5 / 3})


def test_nan_accuracy_is_not_a_pruning_reason(sweep):
    s = sweep(
        "hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner",
        "+hydra.sweeper.pruner.lower=0.99",
        "mode=nan_acc",
        "x=0.5",
        "epochs=3",
        n_trials=1,
    )
    assert s.states() == ["COMPLETE"]
    assert s.trials[0].intermediate_values == {}  # nothing reported, nothing pruned


# ---------------------------------------------------------------- stale trials


def _running(study, worker, heartbeat_age_s, **attrs):
    trial = study.ask()
    trial.set_user_attr("worker", worker)
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    beat = _workers.now().timestamp() - heartbeat_age_s
    trial.set_user_attr(
        "heartbeat_at", _workers.datetime.fromtimestamp(beat, _workers.timezone.utc).isoformat()
    )
    return trial.number


def test_stale_trials_failed_live_workers_left_alone(sweep, tmp_path):
    here = _workers.this_worker()
    if not here["pidns"]:
        pytest.skip("no /proc/self/ns/pid on this system")
    url = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    elsewhere = {"host": "node-7", "pidns": "pid:[1]", "pid": 99}
    try:
        numbers = {
            "dead here": _running(study, {**here, "pid": dead.pid}, 0),
            "live here": _running(study, {**here, "pid": live.pid}, 10_000),
            "silent elsewhere": _running(study, elsewhere, 400),
            "beating elsewhere": _running(study, elsewhere, 5),
        }
        study.ask()  # RUNNING without our attributes: another tool's trial
        s = sweep("x=interval(0, 1)", n_trials=7)
    finally:
        live.kill()
        live.wait()
    by_number = {t.number: t for t in s.trials}
    dead_trial = by_number[numbers["dead here"]]
    assert dead_trial.state == TrialState.FAIL
    assert (
        dead_trial.user_attrs["reason"]
        == f"stale: its sweeper (pid {dead.pid} on {here['host']}) is gone"
    )
    assert by_number[numbers["silent elsewhere"]].state == TrialState.FAIL
    assert (
        by_number[numbers["silent elsewhere"]]
        .user_attrs["reason"]
        .startswith("stale: no heartbeat from node-7 pid 99 for 40")
    )
    for key in ("live here", "beating elsewhere"):
        assert by_number[numbers[key]].state == TrialState.RUNNING
    assert by_number[4].state == TrialState.RUNNING
    # 2 failed + 3 still running count toward n_trials=7: 2 more were run
    assert [t.state.name for t in s.trials[5:]] == ["COMPLETE", "COMPLETE"]


def _fake_cli(args, cwd, **kwargs):
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.Popen(
        [sys.executable, str(APP), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_killed_sweeper_trial_is_failed_on_resume(sweep, tmp_path):
    if not _workers.this_worker()["pidns"]:
        pytest.skip("no /proc/self/ns/pid on this system: a killed trial waits for grace_period")
    url = f"sqlite:///{tmp_path}/optuna.db"
    args = ["-m", "hydra/sweeper=optuna", f"hydra.sweeper.storage={url}", "hydra.sweeper.study_name=s",
            "hydra.sweeper.direction=maximize", "hydra.sweeper.n_trials=1", "mode=sleep",
            "sleep=interval(60, 61)", f"hydra.sweep.dir={tmp_path}/killed"]  # fmt: skip
    proc = _fake_cli(args, tmp_path)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "killed" / "trial_0000" / ".hydra").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the trial never started"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    study = optuna.load_study(study_name="s", storage=url)
    assert [t.state for t in study.trials] == [TrialState.RUNNING]
    # The same recipe (a study refuses another); `sleep` is searched, so the new trial is quick.
    s = sweep("mode=sleep", "sleep=interval(0, 0.01)", n_trials=2, name="resumed")
    assert s.states() == ["FAIL", "COMPLETE"]
    assert s.trials[0].user_attrs["reason"].startswith(f"stale: its sweeper (pid {proc.pid}")
    assert s.trials[1].user_attrs["run_dir"] == str(tmp_path / "resumed" / "trial_0001")


# ---------------------------------------------------------------- invalid sweeper config


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["x=interval(2, 1)"], "x=interval(2, 1): the lower bound must be below the upper bound"),
        (["x=tag(log, interval(0, 1))"], "a log interval needs a lower bound above 0"),
        (["hydra.sweeper.sampler._target_=optuna.samplers.Nope"], "unknown class"),
        (["hydra.sweeper.direction=up"], "hydra.sweeper.direction='up'"),
        (["hydra.sweeper.max_failure_rate=2"], "max_failure_rate=2"),
        (["hydra.sweeper.n_jobs=0"], "n_jobs=0"),
        (["hydra.sweeper.n_trials=-1"], "n_trials=-1"),
        (["hydra/sweeper/sampler=grid", "x=interval(0, 1)"], "grid sampler: x is continuous"),
        (["hydra/sweeper/pruner=median", "hydra.sweeper.pruner.n_warmup_steps=-1"], "MedianPruner"),
        (["hydra.sweeper.metric_names=[a,b]"], "metric_names=['a', 'b'] is not allowed: 1 name"),
        (
            ["hydra/sweeper/sampler=motpe"],
            "hydra.sweeper.sampler: MOTPESampler was removed in Optuna 4: use "
            "hydra/sweeper/sampler=tpe",
        ),
    ],
)
def test_invalid_sweeper_config_fails_before_any_trial(sweep, tmp_path, overrides, message):
    with pytest.raises(SweeperError) as error:
        sweep(*overrides)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "optuna.db").exists() or not optuna.get_all_study_names(
        f"sqlite:///{tmp_path}/optuna.db"
    )


def test_direction_must_match_the_stored_study(sweep):
    sweep("x=interval(0, 1)", n_trials=1)
    with pytest.raises(SweeperError, match="created with direction"):
        sweep("x=interval(0, 1)", "hydra.sweeper.direction=minimize", n_trials=2)


def test_invalid_config_on_the_command_line_is_one_line(tmp_path):
    proc = _fake_cli(
        ["-m", "hydra/sweeper=optuna", "x=interval(2, 1)", f"hydra.sweep.dir={tmp_path}/s"],
        tmp_path,
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    # the message is the first line (Hydra adds its HYDRA_FULL_ERROR hint below)
    assert err.splitlines()[0] == "x=interval(2, 1): the lower bound must be below the upper bound"
    assert "Traceback" not in err
    assert not (tmp_path / "s").exists()


def test_unknown_sampler_group_is_refused_by_hydra(tmp_path):
    proc = _fake_cli(["-m", "hydra/sweeper=optuna", "hydra/sweeper/sampler=nope"], tmp_path)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "Could not find 'hydra/sweeper/sampler/nope'" in err
    assert "tpe" in err and "nsgaii" in err  # Hydra lists the available options


# ---------------------------------------------------------------- memory


def test_a_sweep_keeps_nothing_per_finished_trial(sweep, monkeypatch):
    """Each job's return holds its whole composed config (~160 KB for the real app): none is
    alive after the sweep, and the sweep returns nothing (like Hydra's official sweeper)."""
    returned = []
    tell_job = _batches.tell_job

    def watched(study, trial, ret, n_objectives):
        returned.append(weakref.ref(ret))
        return tell_job(study, trial, ret, n_objectives)

    monkeypatch.setattr(_batches, "tell_job", watched)
    runner = sweep("x=interval(0, 1)", "hydra.sweeper.n_jobs=4", study="memory", storage=None,
                   n_trials=20)  # fmt: skip
    gc.collect()
    assert len(returned) == 20 and runner.returns is None
    assert [r for r in returned if r() is not None] == []


# ---------------------------------------------------------------- samplers and metric names


def test_gp_sampler_runs_a_study(sweep, caplog):
    caplog.set_level("INFO")
    s = sweep(
        "hydra/sweeper/sampler=gp",
        "hydra.sweeper.sampler.seed=0",
        "hydra.sweeper.sampler.n_startup_trials=2",  # then the Gaussian process proposes
        "x=interval(0, 1)",
        n_trials=4,
    )
    assert s.states() == ["COMPLETE"] * 4
    assert "sampler GPSampler" in caplog.text
    assert len({t.params["x"] for t in s.trials}) == 4


class SamplerWithoutScipy(optuna.samplers.RandomSampler):
    """Fails as GPSampler does without scipy: once its start-up trials are done."""

    def sample_independent(self, study, trial, name, distribution):
        if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) >= 2:
            raise ModuleNotFoundError("No module named 'scipy'")
        return super().sample_independent(study, trial, name, distribution)


def test_a_sampler_that_fails_fails_its_trial_in_one_line(sweep, tmp_path):
    with pytest.raises(SweeperError) as error:
        sweep(f"hydra.sweeper.sampler._target_={__name__}.SamplerWithoutScipy", "x=interval(0, 1)")
    assert str(error.value) == (
        "hydra.sweeper.sampler: SamplerWithoutScipy could not propose trial 2: "
        "ModuleNotFoundError: No module named 'scipy'"
    )
    s = Sweep(f"sqlite:///{tmp_path}/optuna.db", "s", tmp_path / "run1")
    assert s.states() == ["COMPLETE", "COMPLETE", "FAIL"]  # none left RUNNING
    assert "No module named 'scipy'" in s.trials[2].user_attrs["reason"]


def test_objective_names_recorded_for_the_dashboard(sweep):
    s = sweep("x=interval(0, 1)", "hydra.sweeper.metric_names=[val/acc]", n_trials=1)
    assert s.study.metric_names == ["val/acc"]
    assert s.results()["metric_names"] == ["val/acc"]
    s = sweep("x=interval(0, 1)", n_trials=1, study="unnamed", name="run2")
    assert s.study.metric_names is None  # the default: Optuna's "Objective 0"
