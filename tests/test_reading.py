"""The one reader of run records: older versions read in today's form, malformed ones skipped with
one warning (mnist_lab.records.reading)."""

from __future__ import annotations

import json
import logging

import pytest

from mnist_lab.records.reading import read_record


def write(tmp_path, record) -> object:
    path = tmp_path / "result.json"
    path.write_text(json.dumps(record))
    return path


def test_a_schema_1_record_is_read_in_todays_form(tmp_path):
    """Schema 1 named the model in config.model.name and had no `choices` nor `data.deskew`."""
    old = {
        "status": "completed",
        "config": {
            "model": {"name": "mlp", "hidden_sizes": [128], "_target_": "mnist_lab.models.MLP"},
            "optimizer": {"_target_": "torch.optim.Adam", "lr": 0.001},
            "data": {"batch_size": 32},
        },
    }
    record = read_record(write(tmp_path, old))
    assert record["choices"] == {"model": "mlp", "optimizer": "adam"}
    assert record["config"]["model"] == {
        "hidden_sizes": [128],
        "_target_": "mnist_lab.models.mlp.MLP",
    }
    assert record["config"]["data"] == {"batch_size": 32, "deskew": False}


def test_a_record_of_today_is_read_as_it_is(tmp_path):
    now = {
        "status": "completed",
        "choices": {"model": "resmlp", "optimizer": "sgd"},
        "config": {"model": {"width": 64}, "data": {"deskew": True}},
    }
    assert read_record(write(tmp_path, now)) == now


@pytest.mark.parametrize(
    ("record", "says"),
    [
        ({"status": 5}, "status: 5 is not a string"),
        ({"status": "completed", "config": []}, "config: [] is not an object"),
        ({"status": "completed", "final": {"val/acc": "high"}}, 'final.val/acc: "high"'),
        ({"status": "completed", "trial": {"number": "3"}}, 'trial.number: "3" is not an integer'),
        ({"status": "completed", "overrides": ["lr=1", 2]}, "overrides: 2 is not a string"),
        ({"status": "completed", "wall_seconds": True}, "wall_seconds: true is not a number"),
        ([1, 2], "not a JSON object"),
    ],
)
def test_a_malformed_record_is_skipped_with_one_warning(tmp_path, caplog, record, says):
    path = write(tmp_path, record)
    with caplog.at_level(logging.WARNING, logger="mnist_lab.records.reading"):
        assert read_record(path) is None
    (message,) = [r.getMessage() for r in caplog.records]
    assert message.startswith(f"skipping malformed record {path} (") and says in message
