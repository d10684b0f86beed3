"""The run record's file names and columns: what every writer and reader of a record agrees on."""

from __future__ import annotations

RESULT_FILE = "result.json"
METRICS_FILE = "metrics.csv"

# Trained weights (mnist_lab.job.weights writes them; result.json's `weights` names those that exist).
WEIGHTS_FILES = {"best": "weights_best.pt", "final": "weights_final.pt"}
METRICS_COLUMNS = (
    "epoch",
    "train/loss",
    "train/acc",
    "val/loss",
    "val/acc",
    "test/loss",
    "test/acc",
    "lr",
    "seconds",
)
METRIC_KEYS = METRICS_COLUMNS[1:7]  # what an epoch measures: train/val/test loss and accuracy
EVAL_KEYS = METRICS_COLUMNS[3:7]  # what an evaluation measures: val/test loss and accuracy

# 2: `config.model` holds the chosen model's own keys and its `_target_` (no `name`); `choices`
# names the option picked in each config group (`choices.model`: mlp, scratch, resmlp, ...).
SCHEMA_VERSION = 2
