"""Trained weights next to the run record: the best-validation epoch's and the last epoch's.

A file is a plain state dict of tensors written by `torch.save`, so it loads with
`torch.load(path, weights_only=True)` (no pickled objects) into a model built from the run's
config; it is written to a temp file and renamed, like the record. While training, the weights of
the best epoch so far are copied on the device, and only when the objective's metric improves (by
the record's own rule, `records.objective`): it is a host float the evaluation already read, so
keeping them adds no synchronisation, and the copy reads the tensors a captured CUDA graph updates.

Which files (`trainer.save_weights`): `final`, `best`, `both` (the final file, plus the best one
only when another epoch was best; otherwise the record names the final file for both), `none`;
`auto` is `both` for a single run and `best` in a multirun (a study then keeps one file per trial
instead of up to two; docs/CONFIG.md, "Saved models", has the measured disk cost).
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from mnist_lab.records.files import atomic_write_bytes
from mnist_lab.records.format import WEIGHTS_FILES
from mnist_lab.records.objective import Objective


def resolve_mode(setting: str, multirun: bool) -> str:
    if setting == "auto":
        return "best" if multirun else "both"
    return setting


def save_state(state: dict[str, torch.Tensor], path: Path) -> None:
    buffer = io.BytesIO()
    # A copy on every device: a member of a stack holds views, and torch.save writes a view's
    # whole storage.
    torch.save({k: v.detach().to("cpu", copy=True) for k, v in state.items()}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_state(path: Path, device) -> dict[str, torch.Tensor]:
    """The state dict in `path`; refuses anything but tensors and plain containers."""
    return torch.load(path, map_location=device, weights_only=True)


class WeightKeeper:
    """Epoch hook that keeps the best epoch's weights on the device; `save` writes the files."""

    def __init__(self, model, mode: str, objective: Objective):
        self.model = model
        self.mode = mode
        self.objective = objective
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None

    def __call__(self, epoch: int, row: dict) -> None:
        value = row.get(self.objective.metric)
        if self.mode == "none" or epoch < 1 or not self.objective.better(value, self.best):
            return  # the record's `best`: the first epoch with the best value
        self.best, self.best_epoch = value, epoch
        if self.mode == "final" or row.get("last_epoch"):
            return  # not kept, or the model itself holds this epoch's weights: no copy
        state = self.model.state_dict()
        if self.best_state is None:
            self.best_state = {k: v.detach().clone() for k, v in state.items()}
        else:
            with torch.no_grad():
                for k, v in state.items():
                    self.best_state[k].copy_(v)

    def save(self, run_dir: Path, final_epoch: int) -> dict[str, str | None]:
        """Writes the files; returns the record's `weights`: {"best", "final"} -> file or None."""
        files: dict[str, str | None] = {"best": None, "final": None}
        if self.mode == "none":
            return files
        # No validation at all (data.val_size=0): the record's best is the final epoch, too.
        same = self.best_epoch in (None, final_epoch)
        if self.mode in ("final", "both"):
            save_state(self.model.state_dict(), Path(run_dir) / WEIGHTS_FILES["final"])
            files["final"] = WEIGHTS_FILES["final"]
            if same:
                files["best"] = files["final"]
        if self.mode == "best" or (self.mode == "both" and not same):
            state = self.model.state_dict() if same else self.best_state
            save_state(state, Path(run_dir) / WEIGHTS_FILES["best"])
            files["best"] = WEIGHTS_FILES["best"]
            if same:
                files["final"] = files["best"]
        return files
