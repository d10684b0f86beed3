"""Training in-process: reproducibility, batching, the model builder and the run record."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from torch import nn

from mnist_lab.job import build, task
from mnist_lab.models.build import count_parameters
from mnist_lab.records import files
from mnist_lab.records.reading import read_record
from mnist_lab.records.run_record import RunRecord
from mnist_lab.train.epoch import batch_plan

QUICK = [
    "data.train_subset=2000",
    "hidden=32",
    "epochs=2",
    "batch_size=64",
    "trainer.device=cpu",
    "trainer.progress=off",
    "trainer.save_figures=false",
    "trainer.cuda_graph=off",
]


def train_rows(job_config, tmp_path, name, overrides=(), spy=None, monkeypatch=None):
    """Run the task in-process; returns (returned value, metrics.csv's rows, result.json)."""
    if spy is not None:  # a forward hook: it sees the batches where the module's forward runs
        overrides = [*overrides, "trainer.backward=autograd"]  # (eager_epoch cuts them for both)
    cfg = job_config([*QUICK, *overrides], output_dir=tmp_path / name)
    if spy is not None:
        build_model = build.build_model

        def spied_build(*args):
            model = build_model(*args)
            model.register_forward_pre_hook(spy)
            return model

        monkeypatch.setattr(build, "build_model", spied_build)
    value = task.run_task(cfg)
    with open(tmp_path / name / "metrics.csv", newline="") as f:
        rows = [{k: float(v) if v else None for k, v in r.items()} for r in csv.DictReader(f)]
    return value, rows, read_record(tmp_path / name)


def without_seconds(rows):
    """Rows without their timings (`seconds`, `eval_seconds`, ...), which are never reproducible."""
    return [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in rows]


# ---------------------------------------------------------------------------------------------
# reproducibility


def test_same_seed_gives_identical_metrics(job_config, tmp_path):
    value_a, rows_a, _ = train_rows(job_config, tmp_path, "a", ["seed=5"])
    value_b, rows_b, _ = train_rows(job_config, tmp_path, "b", ["seed=5"])
    assert len(rows_a) == 3 and [r["epoch"] for r in rows_a] == [0, 1, 2]
    assert without_seconds(rows_a) == without_seconds(rows_b)
    assert value_a == value_b == rows_a[-1]["val/acc"]
    assert rows_a[-1]["val/acc"] > 0.6  # it did learn something


def test_different_seed_gives_different_metrics(job_config, tmp_path):
    _, rows_a, _ = train_rows(job_config, tmp_path, "a", ["seed=5"])
    _, rows_b, _ = train_rows(job_config, tmp_path, "b", ["seed=6"])
    assert rows_a[0]["val/loss"] != rows_b[0]["val/loss"]  # different initial weights
    assert rows_a[-1]["train/loss"] != rows_b[-1]["train/loss"]


def test_split_does_not_follow_the_training_seed(job_config, tmp_path):
    """Every run of a sweep is measured on the same validation images, whatever its seed."""
    _, _, record_a = train_rows(job_config, tmp_path, "a", ["seed=1", "epochs=1"])
    _, _, record_b = train_rows(job_config, tmp_path, "b", ["seed=2", "epochs=1"])
    assert record_a["n_val"] == record_b["n_val"] == 5000
    assert record_a["n_train"] == 2000


# ---------------------------------------------------------------------------------------------
# batching


@pytest.mark.parametrize(
    ("n", "batch", "drop_last", "expected"),
    [
        (10, 3, False, [(0, 3), (3, 6), (6, 9), (9, 10)]),
        (10, 3, True, [(0, 3), (3, 6), (6, 9)]),
        (9, 3, False, [(0, 3), (3, 6), (6, 9)]),
        (9, 3, True, [(0, 3), (3, 6), (6, 9)]),
        (5, 5, True, [(0, 5)]),
        (5, 8, False, [(0, 5)]),
        (5, 8, True, []),
    ],
)
def test_batch_plan(n, batch, drop_last, expected):
    assert batch_plan(n, batch, drop_last) == expected


def test_batch_plan_covers_every_row_once():
    plan = batch_plan(55000, 32, False)
    assert len(plan) == math.ceil(55000 / 32)
    covered = [i for start, end in plan for i in range(start, end)]
    assert covered == list(range(55000))


@pytest.mark.parametrize(("drop_last", "sizes"), [(False, [300, 300, 300, 100]), (True, [300] * 3)])
def test_training_batches_follow_drop_last(job_config, tmp_path, monkeypatch, drop_last, sizes):
    seen = []

    def spy(module, inputs):
        if module.training:
            seen.append(inputs[0].shape[0])

    overrides = ["data.train_subset=1000", "batch_size=300", "epochs=1"]
    overrides.append(f"data.drop_last={str(drop_last).lower()}")
    _, rows, _ = train_rows(job_config, tmp_path, "run", overrides, spy, monkeypatch)
    assert seen == sizes
    # train/acc is a fraction of the images actually trained on
    assert rows[1]["train/acc"] * sum(sizes) == pytest.approx(
        round(rows[1]["train/acc"] * sum(sizes))
    )


def test_epochs_see_the_training_rows_in_a_new_order(job_config, tmp_path, monkeypatch):
    batches = []

    def spy(module, inputs):
        if module.training:
            batches.append(inputs[0].clone())

    overrides = ["data.train_subset=500", "batch_size=100", "epochs=2", "data.normalize=none"]
    train_rows(job_config, tmp_path, "run", overrides, spy, monkeypatch)
    assert len(batches) == 10
    epoch1, epoch2 = torch.cat(batches[:5]), torch.cat(batches[5:])
    assert not torch.equal(epoch1, epoch2)  # shuffled per epoch
    # ... but the same 500 images each time
    assert torch.equal(epoch1.sum(1).sort().values, epoch2.sum(1).sort().values)
    assert 0.0 <= float(epoch1.min()) and float(epoch1.max()) <= 1.0


def test_no_shuffle_keeps_the_order(job_config, tmp_path, monkeypatch):
    batches = []

    def spy(module, inputs):
        if module.training:
            batches.append(inputs[0].clone())

    overrides = ["data.train_subset=200", "batch_size=100", "data.shuffle=false"]
    train_rows(job_config, tmp_path, "run", overrides, spy, monkeypatch)
    assert len(batches) == 4
    assert torch.equal(torch.cat(batches[:2]), torch.cat(batches[2:]))


# ---------------------------------------------------------------------------------------------
# the model builder


@pytest.mark.parametrize(
    ("hidden", "count"),
    [([128], 101770), ([16], 12730), ([256, 128], 235146), ([1], 805)],
)
def test_parameter_counts(hidden, count, mlp):
    assert count_parameters(mlp(hidden)) == count


def test_batch_norm_and_dropout_layers(mlp):
    model = mlp([64, 32], dropout=0.3, batch_norm=True)
    kinds = [type(m) for m in model]
    assert kinds == [
        nn.Linear,
        nn.BatchNorm1d,
        nn.ReLU,
        nn.Dropout,
        nn.Linear,
        nn.BatchNorm1d,
        nn.ReLU,
        nn.Dropout,
        nn.Linear,
    ]
    plain = count_parameters(mlp([64, 32]))
    assert count_parameters(model) == plain + 2 * (64 + 32)
    assert [type(m) for m in mlp([64], dropout=0.0)] == [nn.Linear, nn.ReLU, nn.Linear]


def test_dropout_only_in_training_mode(mlp):
    torch.manual_seed(0)
    model = mlp([64], dropout=0.5)
    x = torch.randn(8, 784)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


def test_log_softmax_head_returns_log_probabilities(mlp):
    model = mlp([32], head="log_softmax")
    assert isinstance(model[-1], nn.LogSoftmax)
    out = model(torch.randn(5, 784))
    assert torch.allclose(out.exp().sum(1), torch.ones(5), atol=1e-5)
    assert not isinstance(mlp([32], head="logits")[-1], nn.LogSoftmax)


def first_layer(mlp, init, std=0.01):
    """The first Linear of a 784-512-10 MLP, as (weight, bias) without grad."""
    torch.manual_seed(0)
    layer = mlp([512], init=init, init_std=std)[0]
    return layer.weight.detach(), layer.bias.detach()


def test_init_normal_uses_the_given_std(mlp):
    weight, bias = first_layer(mlp, "normal", std=0.05)
    assert float(weight.std()) == pytest.approx(0.05, rel=0.02)
    assert float(weight.mean()) == pytest.approx(0.0, abs=1e-3)
    assert float(bias.std()) == pytest.approx(0.05, rel=0.2)  # the lab's N(0, std^2) biases
    assert float(first_layer(mlp, "normal", std=1.0)[0].std()) == pytest.approx(1.0, rel=0.02)


def test_init_kaiming_and_xavier(mlp):
    weight, bias = first_layer(mlp, "kaiming")
    assert float(weight.std()) == pytest.approx(math.sqrt(2 / 784), rel=0.02)
    assert torch.count_nonzero(bias) == 0
    weight, bias = first_layer(mlp, "xavier")
    bound = math.sqrt(6 / (784 + 512))
    assert float(weight.abs().max()) <= bound
    assert float(weight.std()) == pytest.approx(bound / math.sqrt(3), rel=0.02)
    assert torch.count_nonzero(bias) == 0


def test_init_default_is_torchs_uniform(mlp):
    weight, bias = first_layer(mlp, "default")
    bound = 1 / math.sqrt(784)
    assert float(weight.abs().max()) <= bound
    assert float(weight.std()) == pytest.approx(bound / math.sqrt(3), rel=0.02)
    assert torch.count_nonzero(bias) > 0


# ---------------------------------------------------------------------------------------------
# the run record


def row(epoch, val_acc, test_acc, train_loss=0.5, seconds=1.0):
    return {
        "epoch": epoch,
        "train/loss": train_loss if epoch else math.nan,
        "train/acc": 0.8 if epoch else math.nan,
        "val/loss": 0.3,
        "val/acc": val_acc,
        "test/loss": 0.3,
        "test/acc": test_acc,
        "lr": 0.01 if epoch else math.nan,
        "seconds": seconds if epoch else 0.0,
    }


def no_nan_json(path):
    def refuse(token):
        raise AssertionError(f"{path} has a bare {token}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_best_is_chosen_on_validation_not_test(tmp_path):
    record = RunRecord(tmp_path, {"param_count": 1})
    for r in [row(0, 0.1, 0.1), row(1, 0.90, 0.99), row(2, 0.95, 0.91), row(3, 0.93, 0.97)]:
        record.add_epoch(r["epoch"], r)
    summary = record.summary()
    assert summary["best"] == {
        "epoch": 2,
        "val/loss": 0.3,
        "val/acc": 0.95,
        "test/loss": 0.3,
        "test/acc": 0.91,
    }
    assert summary["final"]["val/acc"] == 0.93 and summary["final"]["test/acc"] == 0.97
    assert summary["initial"]["val/acc"] == 0.1
    assert summary["epochs_run"] == 3
    assert summary["seconds_per_epoch"] == pytest.approx(1.0)


def test_best_without_validation_is_the_last_epoch(tmp_path):
    record = RunRecord(tmp_path, {})
    for r in [row(0, math.nan, 0.1), row(1, math.nan, 0.9), row(2, math.nan, 0.8)]:
        record.add_epoch(r["epoch"], r)
    best = record.summary()["best"]
    assert best["epoch"] == 2 and best["test/acc"] == 0.8 and math.isnan(best["val/acc"])
    record.finish("completed")
    result = no_nan_json(tmp_path / "result.json")
    assert result["best"] == {
        "epoch": 2,
        "val/loss": 0.3,
        "val/acc": None,
        "test/loss": 0.3,
        "test/acc": 0.8,
    }


def test_nan_becomes_null_and_record_files_follow_the_contract(tmp_path):
    record = RunRecord(tmp_path, {"param_count": 7})
    record.add_epoch(0, row(0, 0.1, 0.1))
    record.add_epoch(1, row(1, math.nan, math.nan, train_loss=math.inf))
    record.finish("diverged", "training loss became inf in epoch 1", wall_seconds=2.0)
    result = no_nan_json(tmp_path / "result.json")
    assert result["status"] == "diverged" and result["reason"].startswith("training loss")
    assert result["schema_version"] == 2 and result["param_count"] == 7
    assert result["final"]["train/loss"] is None and result["final"]["val/acc"] is None
    assert result["initial"] == {"val/loss": 0.3, "val/acc": 0.1, "test/loss": 0.3, "test/acc": 0.1}
    assert result["started_at"] and result["finished_at"] and result["wall_seconds"] == 2.0
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0] == "epoch,train/loss,train/acc,val/loss,val/acc,test/loss,test/acc,lr,seconds"
    assert lines[1].startswith("0,,,0.3,0.1,")  # epoch 0: train/* empty
    assert lines[2].split(",")[1] == ""  # inf is not a measurement either
    assert len(lines) == 3


def test_record_is_rewritten_after_every_epoch(tmp_path):
    record = RunRecord(tmp_path, {})
    record.add_epoch(0, row(0, 0.1, 0.1))
    assert no_nan_json(tmp_path / "result.json")["status"] == "running"
    record.add_epoch(1, row(1, 0.5, 0.5))
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 3
    assert no_nan_json(tmp_path / "result.json")["epochs_run"] == 1


def test_atomic_writes_leave_no_temp_files(tmp_path):
    record = RunRecord(tmp_path, {})
    for epoch in range(4):
        record.add_epoch(epoch, row(epoch, 0.5, 0.5))
    record.finish("completed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv", "result.json"]


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "result.json"
    files.atomic_write_text(target, "old\n")

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", crash)
    with pytest.raises(OSError):
        files.atomic_write_text(target, "new\n")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_run_task_single_run_failure_exits_with_one_line(job_config, tmp_path, caplog):
    cfg = job_config([*QUICK, "hidden=0"], output_dir=tmp_path / "job")
    with pytest.raises(SystemExit) as info:
        task.run_task(cfg)
    assert info.value.code not in (0, None)
    result = no_nan_json(tmp_path / "job" / "result.json")
    assert result["status"] == "failed"
    assert result["reason"] == "model.hidden_sizes[0]=0 is not allowed: must be > 0"
    assert result["config"]["hidden"] == 0 and "hydra" not in result["config"]


def test_a_metric_added_in_one_place_reaches_the_record_and_the_summary(
    job_config, tmp_path, monkeypatch
):
    """docs/ARCHITECTURE.md: a metric is one entry of `mnist_lab.train.evaluation.METRICS`."""
    import pandas as pd

    from mnist_lab.app.callbacks import configured_settings
    from mnist_lab.results.summary import summarize
    from mnist_lab.train import evaluation

    top2 = lambda out, y, loss: (out.topk(2, 1).indices == y[:, None]).any(1).sum()  # noqa: E731
    monkeypatch.setitem(evaluation.METRICS, "top2", top2)
    value, rows, record = train_rows(job_config, tmp_path, "run", ["epochs=1"])
    assert list(rows[0]) == [
        "epoch",
        "train/loss",
        "train/acc",
        "val/loss",
        "val/acc",
        "val/top2",
        "test/loss",
        "test/acc",
        "test/top2",
        "lr",
        "seconds",
    ]
    for section in ("initial", "final", "best"):
        assert record[section]["val/top2"] == rows[-1 if section != "initial" else 0]["val/top2"]
    assert record["final"]["val/acc"] < record["final"]["val/top2"] <= 1.0
    settings = {**configured_settings(), "plots": False}
    settings.pop("results_root")
    summarize([tmp_path / "run"], tmp_path / "summary", **settings)
    table = pd.read_csv(tmp_path / "summary" / "summary.csv")
    assert table["final.test/top2"].tolist() == [record["final"]["test/top2"]]
