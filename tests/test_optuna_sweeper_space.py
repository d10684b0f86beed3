"""Unit tests of the Optuna sweeper's pieces: sweep syntax → distributions, override quoting,
objective values, the stale-trial rule, sampler/pruner construction (no jobs run here)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from hydra_plugins.mnist_lab_optuna_sweeper import (
    _search_space,
    _study_setup,
    _telling,
    _workers,
)
from hydra_plugins.mnist_lab_optuna_sweeper._errors import SweeperError
from hydra_plugins.mnist_lab_optuna_sweeper._search_space import parse_search_space

PARSER = OverridesParser.create()


def one(text: str) -> _search_space.Param:
    space, fixed = parse_search_space(None, [text])
    assert not fixed and len(space) == 1
    return space[0]


def values_of(dist) -> list:
    """Every value an int/stepped float distribution can produce."""
    n = round((dist.high - dist.low) / dist.step) + 1
    return [dist.low + i * dist.step for i in range(n)]


def hydra_values(text: str) -> list:
    return list(PARSER.parse_override(text).sweep_iterator())


# ---------------------------------------------------------------- sweep syntax → distributions


@pytest.mark.parametrize(
    "text, expected",
    [
        ("b=choice(16, 32, 64)", CategoricalDistribution([16, 32, 64])),
        ("b=16,32", CategoricalDistribution([16, 32])),
        ("o=choice(sgd, adam)", CategoricalDistribution(["sgd", "adam"])),
        ("o=choice(true, false)", CategoricalDistribution([True, False])),
        ("o=choice(1, 2, 1)", CategoricalDistribution([1, 2])),  # duplicates once
        ("o=shuffle(range(3))", None),  # categorical over Hydra's values, checked below
        ("lr=interval(0.1, 1)", FloatDistribution(0.1, 1.0)),
        ("lr=interval(1, 10)", FloatDistribution(1.0, 10.0)),  # Hydra: intervals are floats
        ("h=int(interval(64, 2048))", IntDistribution(64, 2048)),
        ("h=tag(log, int(interval(64, 2048)))", IntDistribution(64, 2048, log=True)),
        ("lr=tag(log, interval(1e-4, 1.0))", FloatDistribution(1e-4, 1.0, log=True)),
    ],
)
def test_sweep_syntax_maps_to_distribution(text, expected):
    param = one(text)
    if expected is None:
        assert isinstance(param.distribution, CategoricalDistribution)
        assert sorted(param.distribution.choices) == [0, 1, 2]
    else:
        assert param.distribution == expected
    assert param.name == text.split("=")[0]


@pytest.mark.parametrize(
    "text, expected",
    [  # like Hydra's official Optuna sweeper: the stop is included when it falls on the step
        ("a=range(1, 3)", IntDistribution(1, 3)),
        ("a=range(4, 6)", IntDistribution(4, 6)),
        ("a=range(5)", IntDistribution(0, 5)),
        ("a=range(1, 10, 2)", IntDistribution(1, 9, step=2)),  # 10 is not on the step
        ("a=range(0, 7, 7)", IntDistribution(0, 7, step=7)),
        ("a=range(10, 0, -3)", IntDistribution(1, 10, step=3)),  # 10, 7, 4, 1
        ("a=range(3, 3)", IntDistribution(3, 3)),
        ("a=range(0.5, 5.5, step=1)", FloatDistribution(0.5, 5.5, step=1)),
        ("a=range(0, 5, step=0.5)", FloatDistribution(0, 5, step=0.5)),
        ("a=range(-5.5, 5.5, step=0.5)", FloatDistribution(-5.5, 5.5, step=0.5)),
        ("a=range(0, 1, 0.3)", FloatDistribution(0, 0.9, step=0.3)),
        ("a=range(0.1, 0.5, 0.1)", FloatDistribution(0.1, 0.5, step=0.1)),
        ("a=range(0, 5.0)", FloatDistribution(0, 5, step=1)),
    ],
)
def test_range_includes_its_stop_for_sampling(text, expected):
    dist = one(text).distribution
    assert type(dist) is type(expected)
    assert (dist.low, dist.high, dist.step) == pytest.approx(
        (expected.low, expected.high, expected.step)
    )


@pytest.mark.parametrize(
    "text",
    ["a=range(1, 10, 2)", "a=range(5)", "a=range(10, 0, -3)", "a=range(2, 3)", "a=range(0, 7, 7)"],
)
def test_grid_int_range_excludes_its_stop_like_hydra(text):
    param = one(text)
    assert param.grid == sorted(hydra_values(text))
    dist = param.for_grid().distribution
    assert isinstance(dist, IntDistribution)
    assert values_of(dist) == sorted(hydra_values(text))


def test_grid_float_range_matches_hydra_values():
    text = "a=range(0.1, 0.5, 0.1)"  # Hydra: 0.1, 0.2, 0.3, 0.4 (0.5 excluded)
    dist = one(text).for_grid().distribution
    assert isinstance(dist, FloatDistribution) and dist.step == pytest.approx(0.1)
    assert values_of(dist) == pytest.approx(hydra_values(text))
    assert dist.high == pytest.approx(0.4)


def test_range_4_6_samples_6_under_random_and_tpe():
    dist = one("x=range(4,6)").distribution
    for sampler in (optuna.samplers.RandomSampler(seed=0), optuna.samplers.TPESampler(seed=0)):
        study = optuna.create_study(sampler=sampler)
        seen = set()
        for _ in range(40):
            trial = study.ask({"x": dist})
            seen.add(trial.params["x"])
            study.tell(trial, trial.params["x"])
        assert seen == {4, 5, 6}, type(sampler).__name__


def test_sampled_range_values_stay_inside_hydra_range():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    dist = one("a=range(1, 10, 4)").distribution  # 1, 5, 9
    seen = {study.ask({"a": dist}).params["a"] for _ in range(60)}
    assert seen == {1, 5, 9}


@pytest.mark.parametrize(
    "arguments, searched, fixed",
    [  # the official plugin's cases: searched keys, fixed values, deletions
        (["key=choice(1,2)"], {"key": CategoricalDistribution([1, 2])}, []),
        (["key=5"], {}, ["key=5"]),
        (["key1=choice(1,2)", "key2=5"], {"key1": CategoricalDistribution([1, 2])}, ["key2=5"]),
        (
            ["key1=choice(1,2)", "key2=5", "key3=range(1,3)"],
            {"key1": CategoricalDistribution([1, 2]), "key3": IntDistribution(1, 3)},
            ["key2=5"],
        ),
        (["~z"], {}, ["~z"]),
        (["~z=10"], {}, ["~z=10"]),
        (
            ["key=choice('hello', 'world')"],
            {"key": CategoricalDistribution(["hello", "world"])},
            [],
        ),
        (["key=shuffle(range(1,3))"], {"key": CategoricalDistribution([1, 2])}, []),
    ],
)
def test_params_from_overrides(arguments, searched, fixed):
    space, plain = parse_search_space(None, arguments)
    dists = {p.name: p.distribution for p in space}
    if "shuffle" in arguments[0]:  # shuffle() orders the choices at random
        dists = {k: CategoricalDistribution(sorted(v.choices)) for k, v in dists.items()}
    assert dists == searched and plain == fixed


def test_plain_values_pass_through_unchanged():
    space, fixed = parse_search_space(
        None, ["epochs=3", "+extra=a b", "~data.train_subset", "model.hidden_sizes=[64,64]"]
    )
    assert space == []
    assert fixed == ["epochs=3", "+extra=a b", "~data.train_subset", "model.hidden_sizes=[64,64]"]


def test_command_line_wins_over_config_params():
    params = {"lr": "tag(log, interval(1e-4, 1))", "batch_size": "choice(16, 32)", "epochs": 2}
    space, fixed = parse_search_space(params, ["lr=0.05", "batch_size=choice(64,128)", "seed=1"])
    assert [p.name for p in space] == ["batch_size"]
    assert space[0].distribution == CategoricalDistribution([64, 128])
    assert fixed == ["lr=0.05", "epochs=2", "seed=1"]  # the config's order, then new keys
    space, fixed = parse_search_space({"lr": 0.01}, ["lr=interval(0.1, 0.2)"])
    assert space[0].distribution == FloatDistribution(0.1, 0.2) and fixed == []


def test_prefixed_and_packaged_keys():
    param = one("+model.extra=choice(1, 2)")
    assert param.name == "model.extra"
    assert param.override(2) == "+model.extra=2"


def test_choice_of_lists_passes_hydra_text():
    param = one("model.hidden_sizes=choice([64,64],[128])")
    assert param.distribution.choices == ("[64,64]", "[128]")
    override = param.override("[64,64]")
    assert PARSER.parse_override(override).value() == [64, 64]


def test_official_search_space_form():
    spec = {
        "y": {"type": "categorical", "choices": [32, 64]},
        "x": {"type": "float", "low": 1e-4, "high": 0.2, "log": True},
        "n": {"type": "int", "low": 1, "high": 9, "step": 2},
    }
    space, _ = parse_search_space(None, [], spec)
    dists = {p.name: p.distribution for p in space}
    assert dists == {
        "y": CategoricalDistribution([32, 64]),
        "x": FloatDistribution(1e-4, 0.2, log=True),
        "n": IntDistribution(1, 9, step=2),
    }


@pytest.mark.parametrize(
    "text, message",
    [
        ("lr=interval(2, 1)", "lower bound must be below"),
        ("lr=interval(1, 1)", "lower bound must be below"),
        ("lr=tag(log, interval(0, 1))", "log interval needs a lower bound above 0"),
        ("lr=tag(log, interval(-1, 1))", "log interval needs a lower bound above 0"),
        ("h=tag(log, int(interval(0, 8)))", "log interval needs a lower bound above 0"),
        ("lr=tag(lgo, interval(1, 2))", "unknown tag 'lgo'"),
        ("a=range(5, 3)", "is empty"),
        ("a=range(1, 5, 0)", "the step must not be 0"),
        ("a=choice(", "cannot parse"),
    ],
)
def test_invalid_search_space_is_one_line_error(text, message):
    with pytest.raises(SweeperError) as error:
        parse_search_space(None, [text])
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_grid_needs_discrete_values():
    space, _ = parse_search_space(
        None, ["a=choice(x, y)", "b=range(0, 6, 2)", "c=int(interval(1, 3))"]
    )
    assert _search_space.grid_of(space) == {"a": ["x", "y"], "b": [0, 2, 4], "c": [1, 2, 3]}
    space, _ = parse_search_space(None, ["lr=interval(0.1, 1)"])
    with pytest.raises(SweeperError, match="lr is continuous"):
        _search_space.grid_of(space)
    space, _ = parse_search_space(None, ["a=range(3, 3)"])  # Hydra's values: none
    with pytest.raises(SweeperError, match="a has no values"):
        _search_space.grid_of(space)


# ---------------------------------------------------------------- override rendering


@pytest.mark.parametrize(
    "value",
    [
        "sgd",
        "a b",
        "c,d",
        "x, y",
        "it's",
        "quote ' and \\' and \\\\",
        "trailing\\",
        "a=b",
        "[1, 2]",
        "{k: v}",
        "1",
        "1.5",
        "true",
        "null",
        "",
        " padded ",
        "ünïcode ✓",
        "choice(a)",
        0,
        -3,
        1.5,
        1e-05,
        True,
        False,
        None,
    ],
)
def test_rendered_value_parses_back_to_itself(value):
    parsed = PARSER.parse_override(f"key={_search_space.render_value(value)}")
    assert not parsed.is_sweep_override()
    assert type(parsed.value()) is type(value) and parsed.value() == value


def test_retrain_command_quotes_for_the_shell():
    assert _search_space.shell_quote("optimizer=adam") == "optimizer=adam"
    assert _search_space.shell_quote("name='c,d'") == "\"name='c,d'\""
    for arg in ["name='c,d'", "a=b c", "x='it\\'s'", "y=$HOME"]:
        echoed = subprocess.run(
            f"printf %s {_search_space.shell_quote(arg)}",
            shell=True,
            capture_output=True,
            text=True,
        )
        assert echoed.stdout == arg


# ---------------------------------------------------------------- objective values


@pytest.mark.parametrize(
    "value, n, expected, why",
    [
        (0.97, 1, [0.97], None),
        (1, 1, [1.0], None),
        (math.nan, 1, None, "returned nan"),
        (math.inf, 1, None, "returned inf"),
        (-math.inf, 1, None, "returned -inf"),
        ("0.5", 1, None, "not a number"),
        (None, 1, None, "not a number"),
        (True, 1, None, "not a number"),
        ([0.5], 1, None, "not a number"),
        ((0.5, 0.25), 2, [0.5, 0.25], None),
        ([0.5], 2, None, "1 values for 2 objectives"),
        (0.5, 2, None, "expected 2 numbers"),
        ([0.5, math.nan], 2, None, "returned nan"),
    ],
)
def test_objective_values(value, n, expected, why):
    values, reason = _telling.objective_values(value, n)
    assert values == expected
    assert (reason is None) if why is None else (why in reason)


def test_numpy_scalars_count_as_numbers():
    np = pytest.importorskip("numpy")
    assert _telling.objective_values(np.float32(0.5), 1) == ([0.5], None)


# ---------------------------------------------------------------- stale trials


def running_trial(worker, heartbeat_age_s: float, number: int = 0):
    now = datetime.now(timezone.utc)
    trial = create_trial(state=TrialState.RUNNING)
    trial.number = number
    trial.user_attrs["worker"] = worker
    trial.user_attrs["heartbeat_at"] = (now - timedelta(seconds=heartbeat_age_s)).isoformat()
    return trial, now


def test_stale_rule_same_machine_uses_the_process():
    here = _workers.this_worker()
    if not here["pidns"]:
        pytest.skip("no /proc/self/ns/pid on this system: only the heartbeat rule applies")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        for pid, stale in [(live.pid, False), (dead.pid, True), (os.getpid(), True)]:
            # an old heartbeat does not matter on this machine: the process decides
            trial, now = running_trial({**here, "pid": pid}, heartbeat_age_s=10_000)
            reason = _workers.stale_reason(trial, now, 300, here)
            assert (reason is not None) is stale, (pid, reason)
        trial, now = running_trial({**here, "pid": os.getpid()}, 0)
        assert _workers.stale_reason(trial, now, 300, here, mine={0}) is None  # in flight here
    finally:
        live.kill()
        live.wait()


def test_stale_rule_elsewhere_uses_the_heartbeat():
    here = _workers.this_worker()
    other = {"host": "another-host", "pidns": "pid:[1]", "pid": 1234}
    trial, now = running_trial(other, heartbeat_age_s=30)
    assert _workers.stale_reason(trial, now, 300, here) is None  # a live worker elsewhere
    trial, now = running_trial(other, heartbeat_age_s=301)
    assert "no heartbeat from another-host" in _workers.stale_reason(trial, now, 300, here)
    # same host name, other pid namespace (a container): heartbeat rule, not the pid
    container = {**other, "host": here["host"], "pid": os.getpid()}
    trial, now = running_trial(container, heartbeat_age_s=30)
    assert _workers.stale_reason(trial, now, 300, here) is None


def test_stale_rule_ignores_trials_of_other_tools():
    trial = create_trial(state=TrialState.RUNNING)
    assert (
        _workers.stale_reason(trial, datetime.now(timezone.utc), 1, _workers.this_worker()) is None
    )


def test_heartbeat_refreshes_trials_in_flight():
    study = optuna.create_study()
    trial = study.ask()
    trial.set_user_attr("heartbeat_at", "then")
    with _workers.Heartbeat([trial], interval=0.05):
        deadline = datetime.now() + timedelta(seconds=10)
        while study.trials[0].user_attrs["heartbeat_at"] == "then":
            assert datetime.now() < deadline
    beat = datetime.fromisoformat(study.trials[0].user_attrs["heartbeat_at"])
    assert abs((datetime.now(timezone.utc) - beat).total_seconds()) < 5


# ---------------------------------------------------------------- samplers and pruners


def test_samplers_and_pruners_from_config():
    tpe = {"_target_": "optuna.samplers.TPESampler", "seed": 3, "n_startup_trials": None}
    assert isinstance(_study_setup.build_sampler(tpe), optuna.samplers.TPESampler)
    # keys left null are not passed: another _target_ in a TPE node still works
    random = {**tpe, "_target_": "optuna.samplers.RandomSampler", "n_startup_trials": None}
    assert isinstance(_study_setup.build_sampler(random), optuna.samplers.RandomSampler)
    grid = _study_setup.build_sampler({"_target_": "optuna.samplers.GridSampler"}, {"a": [1, 2]})
    assert isinstance(grid, optuna.samplers.GridSampler)
    assert isinstance(_study_setup.build_pruner(None), optuna.pruners.NopPruner)
    median = _study_setup.build_pruner(
        {"_target_": "optuna.pruners.MedianPruner", "n_warmup_steps": 2}
    )
    assert isinstance(median, optuna.pruners.MedianPruner)


@pytest.mark.parametrize(
    "cfg, message",
    [
        (
            {"_target_": "optuna.samplers.NopeSampler"},
            "unknown class 'optuna.samplers.NopeSampler'",
        ),
        ({"_target_": "optuna.samplers.RandomSampler", "n_startup_trials": 3}, "RandomSampler"),
        ({"seed": 1}, "no _target_"),
    ],
)
def test_bad_sampler_config_is_one_line_error(cfg, message):
    with pytest.raises(SweeperError) as error:
        _study_setup.build_sampler(cfg)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert str(error.value).startswith("hydra.sweeper.sampler: ")


def test_sqlite_storage_url_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert (
        _study_setup.absolute_storage_url("sqlite:///results/o.db")
        == f"sqlite:///{tmp_path}/results/o.db"
    )
    assert _study_setup.absolute_storage_url("sqlite:////abs/o.db") == "sqlite:////abs/o.db"
    assert _study_setup.absolute_storage_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert _study_setup.absolute_storage_url(None) is None


def test_a_storage_folder_is_made_only_where_the_sweep_writes(tmp_path):
    sweep_dir = tmp_path / "results" / "multiruns" / "2026-01-01" / "00-00-00"
    _study_setup.storage_folder(f"sqlite:///{tmp_path}/results/o.db", sweep_dir)
    assert (tmp_path / "results").is_dir()  # the project's default: made with the outputs
    _study_setup.storage_folder(f"sqlite:///{tmp_path}/o.db", sweep_dir)  # exists: nothing to do
    _study_setup.storage_folder("postgresql://u@h/db", sweep_dir)
    with pytest.raises(SweeperError) as refused:
        _study_setup.storage_folder(f"sqlite:///{tmp_path}/nonexistent/dir/x.db", sweep_dir)
    assert str(refused.value) == (
        f"hydra.sweeper.storage='sqlite:///{tmp_path}/nonexistent/dir/x.db': folder "
        f"{tmp_path}/nonexistent/dir does not exist (make it first; only a folder the sweep's "
        "outputs go under is made)"
    )
    assert not (tmp_path / "nonexistent").exists()


# Every sampler key of Hydra's official Optuna sweeper schema (hydra-optuna-sweeper 1.4.0.dev9),
# by its sampler option name: ours has the same option with the same keys.
OFFICIAL_SAMPLER_KEYS = {
    "tpe": {"seed", "consider_prior", "prior_weight", "consider_magic_clip", "consider_endpoints",
            "n_startup_trials", "n_ei_candidates", "multivariate", "warn_independent_sampling"},
    "random": {"seed"},
    "grid": set(),
    "cmaes": {"seed", "x0", "sigma0", "independent_sampler", "warn_independent_sampling",
              "consider_pruned_trials", "restart_strategy", "inc_popsize", "use_separable_cma",
              "source_trials"},
    "nsgaii": {"seed", "population_size", "mutation_prob", "crossover_prob", "swapping_prob",
               "constraints_func"},
    "gp": {"seed", "independent_sampler", "n_startup_trials", "deterministic_objective",
           "constraints_func", "warn_independent_sampling"},
    "qmc": {"seed", "qmc_type", "scramble", "independent_sampler", "warn_asynchronous_seeding",
            "warn_independent_sampling"},
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(OFFICIAL_SAMPLER_KEYS))
def test_every_official_sampler_key_exists_and_reaches_optuna(name, compose):
    cfg = compose(["hydra/sweeper=optuna", f"hydra/sweeper/sampler={name}"], True)
    node = cfg.hydra.sweeper.sampler
    assert OFFICIAL_SAMPLER_KEYS[name] <= set(node), name
    grid = {"a": [1, 2]} if name == "grid" else None
    sampler = _study_setup.build_sampler(node, grid)  # every key null: Optuna's defaults
    assert type(sampler).__name__ == node._target_.rsplit(".", 1)[1]


def positive_is_infeasible(trial):
    """A constraints_func: the trial is feasible when its `a` is at most 0."""
    return [trial.params["a"]]


class CountingSampler(optuna.samplers.RandomSampler):
    calls = 0

    def sample_independent(self, *args, **kwargs):
        CountingSampler.calls += 1
        return super().sample_independent(*args, **kwargs)


@pytest.mark.parametrize(
    "target",
    ["optuna.samplers.NSGAIISampler", "optuna.samplers.TPESampler", "optuna.samplers.GPSampler"],
)
def test_constraints_func_by_dotted_path_or_target_node(target):
    for func in (
        f"{__name__}.positive_is_infeasible",
        {"_target_": "hydra.utils.get_method", "path": f"{__name__}.positive_is_infeasible"},
    ):
        cfg = {"_target_": target, "seed": 0, "constraints_func": func}
        study = optuna.create_study(sampler=_study_setup.build_sampler(cfg))
        study.optimize(lambda t: t.suggest_float("a", -1, 1), n_trials=3)
        for trial in study.trials:  # Optuna stored what the function said
            assert list(trial.system_attrs["constraints"]) == [trial.params["a"]]


@pytest.mark.parametrize(
    "target",
    ["optuna.samplers.QMCSampler", "optuna.samplers.CmaEsSampler", "optuna.samplers.GPSampler"],
)
def test_independent_sampler_from_a_target_node(target):
    cfg = {
        "_target_": target,
        "seed": 0,
        "independent_sampler": {"_target_": f"{__name__}.CountingSampler", "seed": 1},
    }
    study = optuna.create_study(sampler=_study_setup.build_sampler(cfg))
    CountingSampler.calls = 0
    # a categorical parameter is outside what these samplers model: the independent one draws it
    study.optimize(lambda t: len(t.suggest_categorical("c", ["p", "q"])), n_trials=3)
    assert CountingSampler.calls >= 1  # the node was built and handed to the sampler


def earlier_trials():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: t.suggest_float("a", -1, 1) ** 2, n_trials=20)
    return study.trials


def test_cmaes_source_trials_from_a_target_node():
    cfg = {
        "_target_": "optuna.samplers.CmaEsSampler",
        "seed": 0,
        "source_trials": {"_target_": f"{__name__}.earlier_trials"},
    }
    study = optuna.create_study(sampler=_study_setup.build_sampler(cfg))
    study.optimize(lambda t: t.suggest_float("a", -1, 1) ** 2, n_trials=3)
    assert len(study.trials) == 3
    # the trials reach Optuna, which refuses them together with use_separable_cma
    with pytest.raises(SweeperError, match="CmaEsSampler: .*source_trials"):
        _study_setup.build_sampler({**cfg, "use_separable_cma": True})
