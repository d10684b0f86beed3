"""MNIST as resident tensors: read once per process, normalised once, batches cut by index.

Why not a DataLoader: MNIST is 47 MB of pixels. Holding it as one float tensor on the training
device and slicing batches out of it with a seeded permutation removes worker processes, PIL
conversions and per-sample transforms, which cost several times the training compute of a small MLP
(see docs/PERFORMANCE.md).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from mnist_lab.errors import DataError

log = logging.getLogger(__name__)

# Uncompressed sizes of the official files: a truncated unpacked copy is re-made from the .gz.
RAW_SIZES = {
    "train-images-idx3-ubyte": 47040016,
    "train-labels-idx1-ubyte": 60008,
    "t10k-images-idx3-ubyte": 7840016,
    "t10k-labels-idx1-ubyte": 10008,
}
MANIFEST = "SHA256SUMS"
NORMALIZATION = {"mnist": (0.1307, 0.3081), "half": (0.5, 0.5), "none": (0.0, 1.0)}
TRAIN_SIZE = 60_000


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_manifest(root: Path) -> dict[str, str]:
    manifest = root / MANIFEST
    if not manifest.is_file():
        return {}
    entries = {}
    for line in manifest.read_text().splitlines():
        if line.strip():
            digest, name = line.split()
            entries[name.lstrip("*")] = digest
    return entries


def _unpack(root: Path, raw_dir: Path) -> None:
    """Check each shipped .gz against the manifest and unpack it where torchvision looks."""
    expected = _read_manifest(root)
    raw_dir.mkdir(parents=True, exist_ok=True)
    for name, size in RAW_SIZES.items():
        gz = root / f"{name}.gz"
        target = raw_dir / name
        if f"{name}.gz" in expected and _sha256(gz) != expected[f"{name}.gz"]:
            raise DataError(
                f"{gz}: checksum mismatch with {root / MANIFEST} (corrupt or truncated); "
                f"restore it (git checkout -- {gz.name}) or delete the .gz files to download them"
            )
        if target.is_file() and target.stat().st_size == size:
            continue
        tmp = target.with_suffix(".part")
        try:
            with gzip.open(gz, "rb") as src, tmp.open("wb") as dst:
                shutil.copyfileobj(src, dst)
        except (OSError, EOFError) as e:
            tmp.unlink(missing_ok=True)
            raise DataError(f"{gz}: cannot be unpacked ({e}); replace the file") from e
        if tmp.stat().st_size != size:
            tmp.unlink()
            raise DataError(f"{gz}: unpacks to the wrong size (expected {size} bytes); replace it")
        tmp.replace(target)


@functools.lru_cache(maxsize=2)
def load_raw(root: str, cache_dir: str) -> tuple[torch.Tensor, ...]:
    """uint8 images and int64 labels of the training and test sets, read by torchvision.

    Shipped files in `root` are checked and unpacked into `cache_dir/MNIST/raw`; if `root` has no
    .gz files, torchvision downloads them there (needs internet).
    """
    from torchvision.datasets import MNIST

    root_path, cache = Path(root), Path(cache_dir)
    shipped = all((root_path / f"{name}.gz").is_file() for name in RAW_SIZES)
    if shipped:
        _unpack(root_path, cache / "MNIST" / "raw")
    else:
        log.info("no MNIST .gz files in %s: torchvision downloads them into %s", root, cache)
    try:
        train = MNIST(str(cache), train=True, download=not shipped)
        test = MNIST(str(cache), train=False, download=not shipped)
    except (RuntimeError, OSError) as e:
        raise DataError(
            f"MNIST could not be read or downloaded into {cache}: {e}; "
            f"point data.root at a folder with the four IDX .gz files"
        ) from e
    return train.data, train.targets, test.data, test.targets


@dataclass(frozen=True)
class MnistTensors:
    """The whole dataset on one device; train/val are index vectors into `train_x`."""

    train_x: torch.Tensor  # (60000, 784) float32, normalised
    train_y: torch.Tensor
    train_idx: torch.Tensor  # rows used for training (after the val split and the subset)
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    @property
    def n_train(self) -> int:
        return int(self.train_idx.numel())


@functools.lru_cache(maxsize=4)
def _normalised(root: str, cache_dir: str, normalize: str, device: str):
    train_x, train_y, test_x, test_y = load_raw(root, cache_dir)
    mean, std = NORMALIZATION[normalize]

    def prepare(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device).reshape(len(x), -1).float().div_(255.0)
        return x.sub_(mean).div_(std)

    return prepare(train_x), train_y.to(device), prepare(test_x), test_y.to(device)


def split_indices(val_size: int, split_seed: int, train_subset: int | None):
    """Fixed validation split of the 60,000 training images (CPU generator: same on any device)."""
    perm = torch.randperm(TRAIN_SIZE, generator=torch.Generator().manual_seed(split_seed))
    val_idx, train_idx = perm[:val_size], perm[val_size:]
    if train_subset is not None:
        train_idx = train_idx[:train_subset]
    return train_idx, val_idx


def load_mnist(data_cfg, device: torch.device) -> MnistTensors:
    """The dataset for one run; cached, so every later job of the process reuses it."""
    return _load_mnist(
        data_cfg.root,
        data_cfg.cache_dir,
        str(data_cfg.normalize.value),
        data_cfg.val_size,
        data_cfg.split_seed,
        data_cfg.train_subset,
        str(device),
    )


@functools.lru_cache(maxsize=4)
def _load_mnist(root, cache_dir, normalize, val_size, split_seed, train_subset, device):
    train_x, train_y, test_x, test_y = _normalised(root, cache_dir, normalize, device)
    train_idx, val_idx = split_indices(val_size, split_seed, train_subset)
    train_idx, val_idx = train_idx.to(device), val_idx.to(device)
    return MnistTensors(
        train_x=train_x,
        train_y=train_y,
        train_idx=train_idx,
        val_x=train_x[val_idx],
        val_y=train_y[val_idx],
        test_x=test_x,
        test_y=test_y,
    )
