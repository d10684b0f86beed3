"""A dataset as resident tensors: read once per process, normalised once, batches cut by index.

Why not a DataLoader: MNIST is 47 MB of pixels. Holding it as one float tensor on the training
device and slicing batches out of it with a seeded permutation removes worker processes, PIL
conversions and per-sample transforms, which cost several times the training compute of a small MLP
(see docs/PERFORMANCE.md).

Which dataset is config: `conf/data/<name>.yaml`'s `dataset` node names its loader (`_target_`)
and describes the files. The loader (`mnist_lab.data.idx.IdxDataset` for IDX files) gives the
dataset's facts (`DatasetFacts`: known from the description alone, before any file is read, so the
config checks and the model's shape use them) and reads the files (`RawData`: the images as the
files hold them, checked against those facts, and the fingerprint of what was read). Everything
after that, the same for every dataset, is here: normalisation with the dataset's own statistics
(`data.normalize` names an entry of its table), deskewing, the validation split.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mnist_lab.data.deskew import deskew
from mnist_lab.errors import ConfigError


@dataclass(frozen=True)
class DatasetFacts:
    """What a model, the config checks, figures and predictions need to know about a dataset."""

    image_shape: tuple[int, ...]  # (height, width) of one image
    class_names: tuple[str, ...]  # label i is class_names[i]
    train_size: int  # items in the training file (the validation split is cut from them)
    test_size: int
    normalization: dict  # name (data.normalize) -> (mean, std) of the pixels scaled to [0, 1]

    @property
    def in_features(self) -> int:
        return math.prod(self.image_shape)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True, eq=False)  # eq=False: hashed by identity, a key of the caches below
class RawData:
    """uint8 images (N, *image_shape), int64 labels, the dataset's facts, and the fingerprint of
    the files they came from (the run's record carries it)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    facts: DatasetFacts
    fingerprint: dict


@dataclass(frozen=True)
class DataTensors:
    """The whole dataset on one device; train/val are index vectors into `train_x`."""

    train_x: torch.Tensor  # (train_size, in_features) float32, normalised
    train_y: torch.Tensor
    train_idx: torch.Tensor  # rows used for training (after the val split and the subset)
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    fingerprint: dict  # of the files read (RawData.fingerprint): the record carries it
    facts: DatasetFacts
    deskewed: bool = False  # every image sheared upright (data.deskew): pictures say so

    @property
    def n_train(self) -> int:
        return int(self.train_idx.numel())


def dataset_of(data_cfg):
    """The loader `data.dataset._target_` names, built from the dataset's description (once per
    description and process: every job's checks and data loading ask for it)."""
    description = OmegaConf.to_container(data_cfg.dataset, resolve=True)
    return _built(json.dumps(description))  # unsorted: refusals list names in the YAML's order


@functools.lru_cache(maxsize=8)
def _built(description: str):
    node = json.loads(description)
    try:
        return instantiate(node, _convert_="all")
    except Exception as e:  # an unknown class, a key its signature does not take, a bad value
        cause = e.__cause__ or e
        if isinstance(cause, ConfigError):
            raise cause from None
        target = node.get("_target_") if isinstance(node, dict) else None
        raise ConfigError("data.dataset", target, " ".join(str(cause).split())) from e


def dataset_facts(data_cfg) -> DatasetFacts:
    """The dataset's facts from its description alone (no file is read)."""
    return dataset_of(data_cfg).facts


def split_indices(train_size: int, val_size: int, split_seed: int, train_subset: int | None):
    """Fixed validation split of the training items (CPU generator: the same on any device)."""
    perm = torch.randperm(train_size, generator=torch.Generator().manual_seed(split_seed))
    val_idx, train_idx = perm[:val_size], perm[val_size:]
    if train_subset is not None:
        train_idx = train_idx[:train_subset]
    return train_idx, val_idx


def load_data(data_cfg, device: torch.device) -> DataTensors:
    """The dataset for one run; cached, so every later job of the process reuses it."""
    dataset = dataset_of(data_cfg)
    raw = dataset.read(Path(data_cfg.root), Path(data_cfg.cache_dir), bool(data_cfg.download))
    mean, std = raw.facts.normalization[str(data_cfg.normalize)]
    return _load(
        raw,
        mean,
        std,
        bool(data_cfg.deskew),
        data_cfg.val_size,
        data_cfg.split_seed,
        data_cfg.train_subset,
        str(device),
    )


@functools.lru_cache(maxsize=4)
def _normalised(raw: RawData, mean: float, std: float, deskewed: bool, device: str):
    def prepare(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device).float().div_(255.0)
        if deskewed:
            x = deskew(x)
        return x.reshape(len(x), -1).sub_(mean).div_(std)

    return prepare(raw.train_x), raw.train_y.to(device), prepare(raw.test_x), raw.test_y.to(device)


@functools.lru_cache(maxsize=4)
def _load(raw, mean, std, deskewed, val_size, split_seed, train_subset, device) -> DataTensors:
    train_x, train_y, test_x, test_y = _normalised(raw, mean, std, deskewed, device)
    train_idx, val_idx = split_indices(len(train_y), val_size, split_seed, train_subset)
    train_idx, val_idx = train_idx.to(device), val_idx.to(device)
    return DataTensors(
        train_x=train_x,
        train_y=train_y,
        train_idx=train_idx,
        val_x=train_x[val_idx],
        val_y=train_y[val_idx],
        test_x=test_x,
        test_y=test_y,
        fingerprint=raw.fingerprint,
        facts=raw.facts,
        deskewed=deskewed,
    )
