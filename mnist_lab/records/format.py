"""The run record's file names and columns: what every writer and reader of a record agrees on."""

from __future__ import annotations

RESULT_FILE = "result.json"
METRICS_FILE = "metrics.csv"

# Trained weights (mnist_lab.job.weights writes them; result.json's `weights` names those that exist).
WEIGHTS_FILES = {"best": "weights_best.pt", "final": "weights_final.pt"}
# An epoch row's keys are its metrics.csv columns, in order, but these: its evaluation time (summed
# into result.json's `eval_seconds`) and the flag the epoch hooks see (docs/ARCHITECTURE.md).
ROW_ONLY = ("eval_seconds", "last_epoch")
# A metric is named `<split>/<name>` (train/loss, val/acc, test/acc, ...); the training split is
# not measured before training, so `initial` and `best` hold the other splits' metrics.
TRAIN_SPLIT = "train/"

# 2: `config.model` holds the chosen model's own keys and its `_target_` (no `name`); `choices`
# names the option picked in each config group (`choices.model`: mlp, scratch, resmlp, ...).
SCHEMA_VERSION = 2
