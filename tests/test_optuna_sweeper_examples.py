"""The behaviours of Hydra's official Optuna sweeper, checked on our plugin with small apps of our
own modelled on its three examples (tests/apps: sphere.py, custom_space.py, binh_korn.py), each
run as a subprocess: the results file a script reads, the search space a config describes, the
grid's trial counts and the failure policy (docs/SWEEPS.md, "Compatibility with Hydra's Optuna sweeper")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

APPS = Path(__file__).parent / "apps"


def run_app(app: str, args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    options = [a for a in args if a.startswith("--")]  # before the overrides
    overrides = [a for a in args if not a.startswith("--")]
    proc = subprocess.run(
        [
            sys.executable,
            str(APPS / app),
            *options,
            "-m",
            f"hydra.sweep.dir={tmp_path}/sweep",
            *overrides,
        ],  # fmt: skip
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    proc.output = proc.stdout + proc.stderr
    return proc


def results(tmp_path: Path):
    return OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")


def trial_values(tmp_path: Path, key: str) -> list[str]:
    """The value of `key` each trial's job got, from its `.hydra/overrides.yaml`."""
    values = []
    for path in sorted((tmp_path / "sweep").glob("trial_*/.hydra/overrides.yaml")):
        for override in OmegaConf.load(path):
            if override.startswith(f"{key}="):
                values.append(override.split("=", 1)[1])
    return values


def message_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """stderr without log lines (`[...]`): the one-line error and Hydra's hint."""
    return [x for x in proc.stderr.splitlines() if x.strip() and not x.startswith("[")]


def test_sphere_finds_its_minimum_with_the_configured_space(tmp_path):
    proc = run_app("sphere.py", ["~z"], tmp_path)  # ~z: a deletion reaches every job
    assert proc.returncode == 0, proc.output
    out = results(tmp_path)
    assert out.name == "optuna" and out.trials == {"complete": 20}
    assert set(out.best_params) == {"x", "y"}
    assert out.best_value == out.best_params.x**2 + out.best_params.y**2
    assert out.best_value <= 1.0  # x on a 0.5 grid in [-4, 4], y in {-3, 0, 3}: 0 is reachable
    xs = [float(x) for x in trial_values(tmp_path, "x")]
    assert len(xs) == 20 and all(-4 <= x <= 4 and (x * 2) % 1 == 0 for x in xs)
    for config in (tmp_path / "sweep").glob("trial_*/.hydra/config.yaml"):
        assert "z" not in OmegaConf.load(config)  # deleted in every job


def test_sphere_with_command_line_space_and_fixed_value(tmp_path):
    proc = run_app("sphere.py", ["x=choice(0, 1, 2)", "y=0", "hydra.sweeper.n_trials=8"], tmp_path)
    assert proc.returncode == 0, proc.output
    out = results(tmp_path)
    assert set(out.best_params) == {"x"}  # y is fixed, not searched
    assert out.best_params.x == 0 and out.best_value == 0


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_range_includes_its_stop_under_random_and_tpe(tmp_path, sampler):
    args = ["x=range(4,6)", "y=0", f"hydra/sweeper/sampler={sampler}"]
    proc = run_app("sphere.py", [*args, "hydra.sweeper.n_trials=12"], tmp_path)
    assert proc.returncode == 0, proc.output
    assert set(trial_values(tmp_path, "x")) == {"4", "5", "6"}


@pytest.mark.parametrize("n_trials, expected", [(10, 8), (1, 1)])
def test_grid_runs_each_point_once_clamped_to_its_size(tmp_path, n_trials, expected):
    args = ["--config-name=grid", f"hydra.sweeper.n_trials={n_trials}"]
    proc = run_app("sphere.py", args, tmp_path)
    assert proc.returncode == 0, proc.output
    points = set(zip(*(trial_values(tmp_path, k) for k in ("x", "y", "label")), strict=True))
    assert len(trial_values(tmp_path, "x")) == len(points) == expected
    assert all(y in ("-1.0", "0.0") for _, y, _ in points)  # the grid's range excludes its stop
    if expected == 8:
        assert results(tmp_path).best_value == 4  # x = ±2, y = 0


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_failure_rate_of_failing_jobs(tmp_path, rate):
    args = ["error=true", "hydra.sweeper.n_trials=4", f"hydra.sweeper.max_failure_rate={rate}"]
    proc = run_app("sphere.py", args, tmp_path)
    assert proc.returncode == 1
    lines = message_lines(proc)
    assert "Traceback" not in proc.output
    if rate == 0.0:  # stops at the first failure, its reason in the one line
        assert lines[0].startswith("stopping the sweep: 1 of the trials it ran failed")
        assert "RuntimeError: this job was asked to fail" in lines[0]
        assert results(tmp_path).trials == {"fail": 1}
    else:  # runs them all, then says none completed
        assert lines[0] == (
            "no trial of study 'sphere' completed (4 fail); see each trial's `reason` user "
            "attribute"
        )
        assert results(tmp_path).trials == {"fail": 4}


def test_custom_search_space_adds_parameters_from_code(tmp_path):
    proc = run_app("custom_space.py", [], tmp_path)
    assert proc.returncode == 0, proc.output
    best = results(tmp_path).best_params
    assert set(best) == {"x", "y", "z", "+w"}
    assert abs(best.x - best.z) <= 0.25 and 0 <= best["+w"] <= 1


@pytest.mark.parametrize("command_line", [[], ["x=range(0, 5)", "y=range(0, 3)"]])
def test_two_objectives_give_solutions_on_the_pareto_front(tmp_path, command_line):
    proc = run_app("binh_korn.py", command_line, tmp_path)
    assert proc.returncode == 0, proc.output
    out = results(tmp_path)
    assert out.name == "optuna" and out.metric_names == ["f1", "f2"]
    solutions = out.solutions
    assert solutions and all({"params", "values"} <= set(s) for s in solutions)
    step = 1 if command_line else 0.5
    for a in solutions:
        assert (a.params.x / step) % 1 == 0 and (a.params.y / step) % 1 == 0
        assert a["values"] == [4 * a.params.x**2 + 4 * a.params.y**2,
                               (a.params.x - 5) ** 2 + (a.params.y - 5) ** 2]  # fmt: skip
        for b in solutions:  # no solution dominates another
            assert not (
                all(u <= v for u, v in zip(b["values"], a["values"], strict=True))
                and b["values"] != a["values"]
            )
