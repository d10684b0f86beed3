"""Weights kept and saved, early stopping, and the regularisation knobs, on data the tests make."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    IN_FEATURES,
    N_CLASSES,
    autograd_learner,
    model_values,
    settings,
    tiny_data,
    tiny_trainer,
)
from torch import nn

from mnist_lab.errors import ConfigError
from mnist_lab.job.build import build_trainer
from mnist_lab.job.checks import check_config
from mnist_lab.job.weights import WeightKeeper, load_state
from mnist_lab.models.build import build_model
from mnist_lab.models.mlp import MLP
from mnist_lab.models.scratch import ScratchMLP
from mnist_lab.records.format import WEIGHTS_FILES
from mnist_lab.records.objective import Objective
from mnist_lab.train import stacked
from mnist_lab.train.learners import ScratchLearner
from mnist_lab.train.loop import EarlyStopping, Member, Trainer

VAL_ACC = Objective.of(None)  # the default objective, as records before objectives have it


def build_mlp(hidden_sizes, **keys):
    """784 -> hidden_sizes -> 10 with conf/model/mlp.yaml's values, `keys` changed."""
    return MLP(IN_FEATURES, N_CLASSES, list(hidden_sizes), **{**model_values("mlp"), **keys})


def build_scratch(hidden_sizes, **keys):
    values = {**model_values("scratch"), "init": "default", **keys}
    return ScratchMLP(IN_FEATURES, list(hidden_sizes), N_CLASSES, **values)


def row(epoch, val_acc, last=False):
    return {"epoch": epoch, "val/acc": val_acc, "last_epoch": last}


def keeper_of(model, mode, objective=VAL_ACC):
    return WeightKeeper(model, mode, objective)


def params(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def perturb(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)


def same(state, other):
    return state.keys() == other.keys() and all(torch.equal(state[k], other[k]) for k in state)


# --- saved weights ---------------------------------------------------------------------------


def test_both_writes_best_and_final_when_another_epoch_was_best(tmp_path):
    model = build_mlp([8], batch_norm=True)
    keeper = keeper_of(model, "both")
    keeper(0, row(0, 0.9))  # epoch 0 is the untrained model: never the best
    keeper(1, row(1, 0.5))
    at_best = params(model)
    perturb(model)  # the copy is taken on improvement, not a view of the live tensors
    keeper(2, row(2, 0.5, last=True))  # a tie is not an improvement (the record's first max)
    files = keeper.save(tmp_path, final_epoch=2)
    assert files == WEIGHTS_FILES
    best = torch.load(tmp_path / files["best"], weights_only=True)
    assert same(best, at_best)  # batch-norm running stats included
    assert same(load_state(tmp_path / files["final"], "cpu"), params(model))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_one_file_when_the_final_epoch_is_the_best(tmp_path):
    model = build_mlp([8])
    for mode, name in (("both", WEIGHTS_FILES["final"]), ("best", WEIGHTS_FILES["best"])):
        out = tmp_path / mode
        out.mkdir()
        keeper = keeper_of(model, mode)
        keeper(1, row(1, 0.5))
        keeper(2, row(2, 0.6, last=True))
        assert keeper.save(out, final_epoch=2) == {"best": name, "final": name}
        assert [p.name for p in out.iterdir()] == [name]
        assert same(load_state(out / name, "cpu"), params(model))


def test_best_only_and_final_only_and_none(tmp_path):
    model = build_mlp([8])
    keeper = keeper_of(model, "best")
    keeper(1, row(1, 0.7))
    at_best = params(model)
    perturb(model)
    keeper(2, row(2, 0.6, last=True))
    assert keeper.save(tmp_path, final_epoch=2) == {"best": WEIGHTS_FILES["best"], "final": None}
    assert same(load_state(tmp_path / WEIGHTS_FILES["best"], "cpu"), at_best)

    final_only = keeper_of(model, "final")
    final_only(1, row(1, 0.7))
    final_only(2, row(2, 0.6, last=True))
    assert final_only.best_state is None  # nothing kept on the device for `final`
    out = tmp_path / "final"
    out.mkdir()
    assert final_only.save(out, final_epoch=2) == {"best": None, "final": WEIGHTS_FILES["final"]}

    out = tmp_path / "none"
    out.mkdir()
    keeper = keeper_of(model, "none")
    keeper(1, row(1, 0.7))
    assert keeper.save(out, final_epoch=1) == {"best": None, "final": None}
    assert not list(out.iterdir())


def test_scratch_model_weights_are_copied_and_load_into_either_model(tmp_path):
    torch.manual_seed(0)
    scratch = build_scratch([16])
    keeper = keeper_of(scratch, "both")
    keeper(1, row(1, 0.8))
    at_best = params(scratch)
    scratch.load_state_dict({k: v + 1 for k, v in scratch.state_dict().items()})  # in place
    keeper(2, row(2, 0.1, last=True))
    files = keeper.save(tmp_path, final_epoch=2)
    best = load_state(tmp_path / files["best"], "cpu")
    assert same(best, at_best)
    net = build_mlp([16])  # the scratch model's keys follow build_mlp's
    net.load_state_dict(best)
    x = torch.randn(4, 784)
    scratch.load_state_dict(best)
    torch.testing.assert_close(net(x), scratch(x))


# --- early stopping ---------------------------------------------------------------------------


def test_early_stopping_counts_epochs_without_a_gain_over_min_delta():
    stop = EarlyStopping(patience=2, min_delta=0.01, objective=VAL_ACC)
    assert stop.update(1, row(1, 0.90)) is None
    assert stop.update(2, row(2, 0.905)) is None  # +0.005: not an improvement, 1 epoch waited
    assert stop.update(3, row(3, 0.92)) is None  # +0.02 over 0.90: improvement, counter reset
    assert stop.update(4, row(4, 0.92)) is None
    reason = stop.update(5, row(5, 0.925))
    assert reason == (
        "val/acc did not improve by more than 0.01 for 2 epoch(s) after epoch 3 (0.9200)"
    )


def test_early_stopping_and_the_best_weights_follow_a_minimised_objective(tmp_path):
    val_loss = Objective(("val/loss",), ("minimize",))
    stop = EarlyStopping(patience=1, min_delta=0.0, objective=val_loss)
    assert stop.update(1, {"val/loss": 0.5}) is None
    assert stop.update(2, {"val/loss": 0.4}) is None  # lower is better
    assert "val/loss did not improve" in stop.update(3, {"val/loss": 0.45})
    model = build_mlp([8])
    keeper = keeper_of(model, "both", val_loss)
    keeper(1, {"val/loss": 0.5, "val/acc": 0.9})
    at_best = params(model)
    perturb(model)
    keeper(2, {"val/loss": 0.6, "val/acc": 0.95, "last_epoch": True})  # more accurate, not better
    assert keeper.best_epoch == 1
    files = keeper.save(tmp_path, final_epoch=2)
    assert same(load_state(tmp_path / files["best"], "cpu"), at_best)


def test_training_stops_after_patience_epochs_and_flags_its_last_row():
    torch.manual_seed(0)
    rows = []
    model = build_mlp([16])
    # lr 0: the weights never change, so val/acc never improves after epoch 1.
    hooks = [lambda epoch, r: rows.append(dict(r))]
    trainer = tiny_trainer(autograd_learner(model, 0.0, 10, 8), 10, hooks, patience=3)
    trainer.fit()
    (member,) = trainer.members
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3, 4]
    assert [r["last_epoch"] for r in rows] == [False, False, False, False, True]
    assert member.stopped_early["epoch"] == 4 and member.error is None
    assert "for 3 epoch(s) after epoch 1" in member.stopped_early["reason"]


def test_without_patience_training_runs_every_epoch():
    torch.manual_seed(0)
    rows = []
    hooks = [lambda epoch, r: rows.append(dict(r))]
    trainer = tiny_trainer(autograd_learner(build_mlp([16]), 0.0, 3, 8), 3, hooks)
    trainer.fit()
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    assert trainer.members[0].stopped_early is None
    assert rows[-1]["last_epoch"] and not rows[-2]["last_epoch"]


def test_a_member_of_a_stack_stops_early_alone():
    """Early stopping runs inside a stack: the member that stops leaves it, and the other trains
    on exactly as it would alone."""

    def member(lr, patience=None):
        torch.manual_seed(0)  # the same initial weights for every member
        rows = []
        learner = autograd_learner(build_mlp([16]), lr, 6, 8)
        stopper = EarlyStopping(patience, 0.0, VAL_ACC) if patience else None
        return Member(learner, 0, [lambda epoch, r: rows.append(dict(r))], stopper), rows

    def fit(members):
        ended = []
        step = stacked.stack([m.learner for m in members])
        Trainer(members, tiny_data(), settings(6), step, on_stop=ended.append).fit()
        return ended

    (still, still_rows), (moving, moving_rows) = member(0.0, patience=2), member(0.1)
    assert fit([still, moving]) == [still]  # told at once; the other trained to the end
    assert [r["epoch"] for r in still_rows] == [0, 1, 2, 3] and still_rows[-1]["last_epoch"]
    assert still.stopped_early["epoch"] == 3 and still.error is None  # lr 0: no gain
    alone, alone_rows = member(0.1)
    fit([alone])
    assert [r["epoch"] for r in moving_rows] == [r["epoch"] for r in alone_rows] == list(range(7))
    for got, want in zip(moving_rows, alone_rows, strict=True):
        assert got["val/acc"] == pytest.approx(want["val/acc"], abs=1e-3)
        assert got["train/loss"] == pytest.approx(want["train/loss"], rel=1e-4, nan_ok=True)


# --- the knobs --------------------------------------------------------------------------------


def test_label_smoothing_changes_the_training_loss_not_the_evaluation_loss():
    x, y = torch.randn(32, 784), torch.randint(0, 10, (32,))
    losses = {}
    for eps in (0.0, 0.1):
        torch.manual_seed(0)
        learner = autograd_learner(build_mlp([16]), 0.0, 1, 1, label_smoothing=eps)
        losses[eps] = learner.step(x, y)[0].item()
        out = learner.model(x)
        assert learner.eval_loss(out, y).item() == pytest.approx(
            F.cross_entropy(out, y, reduction="sum").item()
        )
    torch.manual_seed(0)
    out = build_mlp([16])(x)
    assert losses[0.0] == pytest.approx(F.cross_entropy(out, y).item())
    assert losses[0.1] == pytest.approx(F.cross_entropy(out, y, label_smoothing=0.1).item())
    assert losses[0.1] != pytest.approx(losses[0.0])


def test_scratch_label_smoothing_matches_autograd_loss_and_gradient():
    torch.manual_seed(0)
    scratch = build_scratch([16], dtype=torch.float64)
    learner = ScratchLearner(scratch, [0.0], None, 0.1)
    x, y = torch.randn(8, 784, dtype=torch.float64), torch.randint(0, 10, (8,))
    net = build_mlp([16]).double()
    net.load_state_dict(scratch.state_dict())
    expected = F.cross_entropy(net(x), y, label_smoothing=0.1)
    expected.backward()
    loss, _ = learner.step(x, y)
    torch.testing.assert_close(loss, expected.detach())
    torch.testing.assert_close(scratch.grads[0], net[0].weight.grad)


@pytest.mark.parametrize("kind", ["autograd", "scratch"])
def test_max_norm_bounds_every_row_after_each_step(kind):
    torch.manual_seed(0)
    x, y = torch.randn(64, 784) * 5, torch.randint(0, 10, (64,))
    if kind == "autograd":
        model = build_mlp([32, 16])
        learner = autograd_learner(model, 5.0, 1, 1, max_norm=0.5)
        weights = [m.weight for m in model if isinstance(m, nn.Linear)]
    else:
        model = build_scratch([32, 16])
        learner = ScratchLearner(model, [5.0], 0.5, 0.0)
        weights = [layer.weight for layer in model.linears]
    assert max(w.norm(dim=1).max().item() for w in weights) > 0.5  # the bound must bind
    learner.step(x, y)
    assert len(weights) == 3
    for w in weights:
        assert w.norm(dim=1).max().item() <= 0.5 * (1 + 1e-5)


def test_input_dropout_drops_pixels_in_training_only(compose):
    cfg = compose(["model.input_dropout=0.5", "hidden=8"])
    model = build_model(cfg.model, torch.device("cpu"), IN_FEATURES, N_CLASSES)
    assert isinstance(model[0], nn.Dropout) and model[0].p == 0.5
    assert isinstance(model[1], nn.Linear)
    x = torch.ones(2, 784)
    assert (model[0](x) == 0).float().mean().item() == pytest.approx(0.5, abs=0.05)
    model.eval()
    assert torch.equal(model[0](x), x)


def test_knobs_reach_the_built_learner(job_config):
    cfg = job_config(
        [
            "trainer.device=cpu",
            "data.train_subset=256",
            "hidden=8",
            "trainer.max_norm=2.0",
            "trainer.label_smoothing=0.2",
            "trainer.early_stopping.patience=4",
            "trainer.early_stopping.min_delta=0.001",
        ]
    )
    trainer = build_trainer(cfg)
    assert trainer.learner.max_norm == 2.0 and len(trainer.learner.constrained) == 2
    assert trainer.learner.loss_fn.keywords == {"label_smoothing": 0.2}
    stopper = trainer.members[0].stopper
    assert (stopper.patience, stopper.min_delta, stopper.objective.metric) == (4, 0.001, "val/acc")


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["trainer.label_smoothing=1.0"], "trainer.label_smoothing"),
        (["trainer.max_norm=0"], "trainer.max_norm"),
        (["model.input_dropout=1.0"], "model.input_dropout"),
        (["trainer.early_stopping.patience=0"], "trainer.early_stopping.patience"),
        (["trainer.early_stopping.min_delta=-0.1"], "trainer.early_stopping.min_delta"),
        (
            ["trainer.early_stopping.patience=2", "data.val_size=0"],
            "trainer.early_stopping.patience",
        ),
        (
            ["trainer.early_stopping.patience=2", "trainer.eval_every_epoch=false"],
            "trainer.early_stopping.patience",
        ),
    ],
)
def test_out_of_range_knobs_are_refused_naming_the_key(compose, overrides, key):
    with pytest.raises(ConfigError) as err:
        check_config(compose(overrides))
    assert err.value.key == key


@pytest.mark.parametrize(
    "override", ["trainer.save_weights=sometimes", "model=scratch model.input_dropout=0.2"]
)
def test_values_outside_the_schema_do_not_compose(compose, override):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match=override.split()[-1].split("=")[0]):
        compose(override.split())


def test_a_trial_that_stops_early_is_complete_not_pruned(run_cli, tmp_path):
    """A pruner that would prune every report from epoch 2 on: the epoch early stopping ends on is
    reported but not put to the pruner, so the trial is COMPLETE with its stopped_early record."""
    import json

    import optuna
    from optuna.trial import TrialState

    url = f"sqlite:///{tmp_path}/optuna.db"
    proc = run_cli(
        [
            "-m",
            "hydra/sweeper=optuna",
            "hydra.sweeper.direction=maximize",
            f"hydra.sweeper.storage={url}",
            "hydra.sweeper.study_name=stops",
            "hydra.sweeper.n_trials=1",
            "hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner",
            "+hydra.sweeper.pruner.lower=1.01",
            "+hydra.sweeper.pruner.n_warmup_steps=2",
            "epochs=5",
            "data.train_subset=2000",
            "trainer.device=cpu",
            # no epoch can beat the first by 0.5: training stops after epoch 2
            "trainer.early_stopping.patience=1",
            "trainer.early_stopping.min_delta=0.5",
        ]
    )
    assert proc.returncode == 0, proc.output
    (trial,) = optuna.load_study(study_name="stops", storage=url).trials
    assert trial.state == TrialState.COMPLETE
    assert sorted(trial.intermediate_values) == [1, 2]
    result = json.loads((tmp_path / "sweep" / "trial_0000" / "result.json").read_text())
    assert result["status"] == "completed" and result["epochs_run"] == 2
    assert result["stopped_early"]["epoch"] == 2
    assert result["weights"]["best"] == "weights_best.pt"  # best-only in a multirun
    # The end-of-study report names the best trial's weights and how to evaluate them.
    from omegaconf import OmegaConf

    weights = f"{result['run_dir']}/weights_best.pt"
    best = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml").best_trial
    assert best.weights == weights and f"  weights: {weights}\n" in proc.output
    assert best.evaluate.endswith(f"experiments/evaluate.py {result['run_dir']}")
    assert f"  evaluate: {best.evaluate}" in proc.output


def test_resmlp_takes_input_dropout_too(compose):
    model = build_model(
        compose(["model=resmlp", "model.input_dropout=0.25", "hidden=8"]).model,
        "cpu",
        IN_FEATURES,
        N_CLASSES,
    )
    assert isinstance(model.input_dropout, nn.Dropout) and model.input_dropout.p == 0.25
    plain = build_model(compose(["model=resmlp", "hidden=8"]).model, "cpu", IN_FEATURES, N_CLASSES)
    assert isinstance(plain.input_dropout, nn.Identity)  # off: the model is as before
