"""MNIST as resident tensors: read once per process, normalised once, batches cut by index.

Why not a DataLoader: MNIST is 47 MB of pixels. Holding it as one float tensor on the training
device and slicing batches out of it with a seeded permutation removes worker processes, PIL
conversions and per-sample transforms, which cost several times the training compute of a small MLP
(see docs/PERFORMANCE.md).

Provenance: the data a run uses is exactly what `data.root` holds. Every `.gz` there is hashed
(SHA-256, checked against `SHA256SUMS` when the folder has one); its unpacked copy in
`data.cache_dir` lives under that hash, so a changed file can never be served from an old copy.
A file unpacked for the first time is fully decoded (gzip CRC) and checked (IDX header, 28x28
images, 60,000/10,000 items, labels 0-9); so is every cached copy when it is read. The run's
record carries the fingerprint (per-file SHA-256 and item counts, and a short combined id).
Reading the IDX format is torchvision's (`read_image_file`, `read_label_file`); what is written by
hand is only the checking and the content-keyed cache, which torchvision's MNIST class lacks.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import logging
import os
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

from mnist_lab.data.deskew import deskew
from mnist_lab.errors import DataError

log = logging.getLogger(__name__)

# The four official files (unpacked name: items in it) and where the training set ends.
FILES = {
    "train-images-idx3-ubyte": 60_000,
    "train-labels-idx1-ubyte": 60_000,
    "t10k-images-idx3-ubyte": 10_000,
    "t10k-labels-idx1-ubyte": 10_000,
}
IMAGE_SHAPE = (28, 28)
N_LABELS = 10
MANIFEST = "SHA256SUMS"
CACHE = Path("MNIST") / "sha256"  # below data.cache_dir: <sha256 of the .gz>/<unpacked name>
NORMALIZATION = {"mnist": (0.1307, 0.3081), "half": (0.5, 0.5), "none": (0.0, 1.0)}
TRAIN_SIZE = FILES["train-images-idx3-ubyte"]


@dataclass(frozen=True, eq=False)  # eq=False: hashed by identity, a key of the caches below
class RawMnist:
    """uint8 images, int64 labels, and the fingerprint of the files they came from."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    fingerprint: dict


def _read_manifest(root: Path) -> dict[str, str]:
    manifest = root / MANIFEST
    if not manifest.is_file():
        return {}
    entries = {}
    for number, line in enumerate(manifest.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2:
            raise DataError(f"{manifest}:{number}: expected '<sha256>  <file name>', got {line!r}")
        entries[fields[1].lstrip("*")] = fields[0].lower()
    return entries


def _download(root: Path, names: list[str]) -> None:
    """Fetch missing .gz files into `root` from torchvision's MNIST mirrors (asked for only)."""
    from torchvision.datasets import MNIST
    from torchvision.datasets.utils import download_url

    md5 = dict(MNIST.resources)
    root.mkdir(parents=True, exist_ok=True)
    for gz in names:
        errors = []
        for mirror in MNIST.mirrors:
            try:
                download_url(mirror + gz, str(root), gz, md5[gz])
                break
            except Exception as e:  # urllib, SSL, checksum: each mirror may fail its own way
                errors.append(f"{mirror}: {(str(e).splitlines() or [type(e).__name__])[0]}")
        else:
            raise DataError(
                f"{root / gz}: missing and could not be downloaded ({'; '.join(errors)}); "
                f"copy the four MNIST .gz files into {root}"
            )


def _locate(root: Path, download: bool) -> list[Path]:
    """The four .gz files in `root`, downloading missing ones only when asked to."""
    wanted = [root / f"{name}.gz" for name in FILES]
    missing = [path.name for path in wanted if not path.is_file()]
    if missing and download:
        _download(root, missing)
    elif not root.is_dir():
        raise DataError(
            f"data.root={root}: no such folder; point it at a folder with the four MNIST .gz "
            f"files (or add data.download=true to fetch them)"
        )
    elif missing:
        raise DataError(
            f"{root / missing[0]}: missing ({len(missing)} of the 4 MNIST .gz files are); "
            f"copy them into {root} (or add data.download=true to fetch them)"
        )
    return wanted


def _parse(path: Path, name: str) -> torch.Tensor:
    """One unpacked IDX file read by torchvision and checked against what MNIST must be."""
    from torchvision.datasets.mnist import read_image_file, read_label_file

    items = FILES[name]
    try:
        if "images" in name:
            tensor = read_image_file(str(path))
            ok = tuple(tensor.shape) == (items, *IMAGE_SHAPE)
            what = f"{items} images of 28x28"
        else:
            tensor = read_label_file(str(path))
            ok = (
                tuple(tensor.shape) == (items,)
                and 0 <= int(tensor.min()) <= int(tensor.max()) < N_LABELS
            )
            what = f"{items} labels in 0-{N_LABELS - 1}"
    except Exception as e:  # torchvision asserts/raises on a bad magic number, type or size
        raise ValueError(f"not an IDX file of the expected type ({type(e).__name__}: {e})") from e
    if not ok:
        raise ValueError(f"holds shape {tuple(tensor.shape)}; MNIST's has {what}")
    return tensor


def _unpacked(gz: Path, blob: bytes, digest: str, cache_dir: Path) -> torch.Tensor:
    """The file's tensor from its cached unpacked copy (keyed on its SHA-256), made if needed."""
    name = gz.name.removesuffix(".gz")
    folder = cache_dir / CACHE / digest
    cached = folder / name
    if cached.is_file():
        try:
            return _parse(cached, name)
        except ValueError as e:
            log.warning("remaking the damaged unpacked copy %s (%s)", cached, e)
    try:
        raw = gzip.decompress(blob)  # checks the CRC and length of every member
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{gz}: not a valid gzip file ({e}); replace it") from None
    tmp = folder / f".{name}.{os.getpid()}.{uuid.uuid4().hex}.part"  # one per writer
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tmp.open("xb") as f:  # "x": the umask's file mode, never someone else's file
            f.write(raw)
        tensor = _parse(tmp, name)
        os.replace(tmp, cached)  # atomic: a racing process sees the old copy or the whole new one
    except OSError as e:
        raise DataError(
            f"data.cache_dir={cache_dir}: cannot unpack {gz.name} there ({e}); "
            f"point data.cache_dir at a writable folder"
        ) from None
    except ValueError as e:
        raise DataError(f"{gz}: {e}; replace it") from None
    finally:
        tmp.unlink(missing_ok=True)
    return tensor


def _stamp(root: Path) -> tuple:
    """What the files look like to `stat`: a changed, replaced or touched file changes it."""
    stamps = []
    for name in FILES:
        try:
            st = (root / f"{name}.gz").stat()
            stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            stamps.append(None)
    return tuple(stamps)


def load_raw(root: str, cache_dir: str, download: bool) -> RawMnist:
    """The training and test sets exactly as the four .gz files in `root` hold them, checked.

    Cached per process while the files are unchanged (same mtime, size, inode): every job of a
    multirun reuses the tensors; hashing and reading cost about 0.1 s once (docs/PERFORMANCE.md).
    """
    return _read(root, cache_dir, download, _stamp(Path(root)))


@functools.lru_cache(maxsize=2)
def _read(root: str, cache_dir: str, download: bool, stamp: tuple) -> RawMnist:
    root_path = Path(root)
    expected = _read_manifest(root_path) if root_path.is_dir() else {}
    tensors, files = {}, []
    for gz in _locate(root_path, download):
        try:
            blob = gz.read_bytes()
        except OSError as e:
            raise DataError(f"{gz}: cannot be read ({e.strerror or e})") from None
        digest = hashlib.sha256(blob).hexdigest()
        if gz.name in expected and digest != expected[gz.name]:
            raise DataError(
                f"{gz}: checksum mismatch with {root_path / MANIFEST} (corrupt or truncated); "
                f"restore it (git checkout -- {gz.name}) or replace the file"
            )
        name = gz.name.removesuffix(".gz")
        tensors[name] = _unpacked(gz, blob, digest, Path(cache_dir))
        files.append({"name": gz.name, "sha256": digest, "items": FILES[name]})
    combined = "".join(f"{f['sha256']}  {f['name']}\n" for f in files)
    fingerprint = {"id": hashlib.sha256(combined.encode()).hexdigest()[:12], "files": files}
    return RawMnist(
        train_x=tensors["train-images-idx3-ubyte"],
        train_y=tensors["train-labels-idx1-ubyte"],
        test_x=tensors["t10k-images-idx3-ubyte"],
        test_y=tensors["t10k-labels-idx1-ubyte"],
        fingerprint=fingerprint,
    )


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
    fingerprint: dict  # of the files read (RawMnist.fingerprint): the record carries it
    deskewed: bool = False  # every image sheared upright (data.deskew): pictures say so

    @property
    def n_train(self) -> int:
        return int(self.train_idx.numel())


@functools.lru_cache(maxsize=4)
def _normalised(raw: RawMnist, normalize: str, deskewed: bool, device: str):
    mean, std = NORMALIZATION[normalize]

    def prepare(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device).float().div_(255.0)
        if deskewed:
            x = deskew(x)
        return x.reshape(len(x), -1).sub_(mean).div_(std)

    return (
        prepare(raw.train_x),
        raw.train_y.to(device),
        prepare(raw.test_x),
        raw.test_y.to(device),
        raw.fingerprint,
    )


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
        load_raw(data_cfg.root, data_cfg.cache_dir, data_cfg.download),
        str(data_cfg.normalize.value),
        bool(data_cfg.deskew),
        data_cfg.val_size,
        data_cfg.split_seed,
        data_cfg.train_subset,
        str(device),
    )


@functools.lru_cache(maxsize=4)
def _load_mnist(raw, normalize, deskewed, val_size, split_seed, train_subset, device):
    train_x, train_y, test_x, test_y, fingerprint = _normalised(raw, normalize, deskewed, device)
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
        fingerprint=fingerprint,
        deskewed=deskewed,
    )
