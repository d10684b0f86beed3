"""Datasets stored as gzipped IDX files (MNIST's format): read, checked, and cached unpacked.

A dataset in this format is one YAML and no code: `conf/data/<name>.yaml` names `IdxDataset` as
its `dataset._target_` and gives its four files, image shape, classes, item counts and
normalisation statistics (`IdxDatasetConfig` is the schema; `conf/data/mnist.yaml` the example).

Provenance: the data a run uses is exactly what `data.root` holds. Every `.gz` there is hashed
(SHA-256, checked against `SHA256SUMS` when the folder has one); its unpacked copy in
`data.cache_dir` lives under that hash, with the SHA-256 of the unpacked bytes beside it, written
when the copy was made from the `.gz`. Reading a copy checks its bytes against that digest, so a
copy that no longer holds what its `.gz` holds (changed labels, a truncated file) is never served:
it is remade from the `.gz`, with one warning. A file unpacked for the first time is fully decoded
(gzip CRC) and checked (IDX header, the image shape, the item counts, labels below the number of
classes). The run's record carries the fingerprint (per-file SHA-256 and item counts, and a short
combined id). The IDX reader is a few lines here (unsigned bytes only, what image datasets hold)
so that a file is read once into memory, hashed and parsed from the same bytes.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import logging
import math
import os
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import MISSING

from mnist_lab.config.checks import check_positive
from mnist_lab.data.dataset import DatasetFacts, RawData
from mnist_lab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

ROLES = ("train_images", "train_labels", "test_images", "test_labels")  # the fingerprint's order
MANIFEST = "SHA256SUMS"
CACHE = Path("unpacked") / "sha256"  # below data.cache_dir: <sha256 of the .gz>/<unpacked name>
DIGEST = ".sha256"  # beside each unpacked copy: the SHA-256 of its bytes, written when it is made
UNSIGNED_BYTE = 0x08  # the IDX type code of unsigned bytes


@dataclass
class IdxFilesConfig:
    """The four gzipped IDX files in `data.root`, by what they hold."""

    train_images: str = MISSING
    train_labels: str = MISSING
    test_images: str = MISSING
    test_labels: str = MISSING


@dataclass
class IdxDatasetConfig:
    """conf/data/<name>.yaml's `dataset` node for a dataset in gzipped IDX files."""

    _target_: str = MISSING
    files: IdxFilesConfig = field(default_factory=IdxFilesConfig)
    image_shape: list[int] = MISSING
    classes: list[str] = MISSING  # label i is classes[i]
    train_items: int = MISSING
    test_items: int = MISSING
    normalization: dict[str, list[float]] = MISSING  # name -> [mean, std] of pixels in [0, 1]
    # Where data.download=true fetches a missing file (each URL + the file name), and the MD5 of
    # each file the mirrors serve; none: the files must be copied into data.root by hand.
    mirrors: list[str] = field(default_factory=list)
    md5: dict[str, str] = field(default_factory=dict)


class IdxDataset:
    """The loader a YAML names: the description checked, its facts, and `read`."""

    def __init__(
        self,
        files: dict,
        image_shape: list,
        classes: list,
        train_items: int,
        test_items: int,
        normalization: dict,
        mirrors: list,
        md5: dict,
    ):
        if len(image_shape) != 2:
            raise ConfigError("data.dataset.image_shape", image_shape, "[height, width]")
        for i, side in enumerate(image_shape):
            check_positive(f"data.dataset.image_shape[{i}]", side)
        if len(classes) < 2:
            raise ConfigError("data.dataset.classes", classes, "at least two class names")
        check_positive("data.dataset.train_items", train_items)
        check_positive("data.dataset.test_items", test_items)
        if not normalization:
            raise ConfigError("data.dataset.normalization", normalization, "at least one entry")
        for name, stats in normalization.items():
            if len(stats) != 2:
                raise ConfigError(f"data.dataset.normalization.{name}", stats, "[mean, std]")
            check_positive(f"data.dataset.normalization.{name}[1]", stats[1])
        self.files = {role: files[role] for role in ROLES}
        self.mirrors = tuple(mirrors)
        self.md5 = dict(md5)
        self.facts = DatasetFacts(
            image_shape=tuple(int(s) for s in image_shape),
            class_names=tuple(str(c) for c in classes),
            train_size=int(train_items),
            test_size=int(test_items),
            normalization={k: (float(m), float(s)) for k, (m, s) in normalization.items()},
        )

    def read(self, root: Path, cache_dir: Path, download: bool) -> RawData:
        """The training and test sets exactly as the files in `root` hold them, checked.

        Cached per process while the files are unchanged (same mtime, size, inode): every job of
        a multirun reuses the tensors; hashing and reading cost once (docs/PERFORMANCE.md).
        """
        stamp = tuple(_stat(root / self.files[role]) for role in ROLES)
        return _read(self, str(root), str(cache_dir), download, stamp)

    def items(self, role: str) -> int:
        return self.facts.train_size if role.startswith("train") else self.facts.test_size


def _stat(path: Path):
    """What a file looks like to `stat`: a changed, replaced or touched file changes it."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


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


def _download(root: Path, names: list[str], mirrors: tuple, md5: dict) -> None:
    """Fetch missing files into `root` from the dataset's mirrors (asked for only)."""
    from torchvision.datasets.utils import download_url

    if not mirrors:
        raise DataError(
            f"{root / names[0]}: missing, and the dataset names no mirrors to download it from; "
            f"copy its files into {root}"
        )
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        errors = []
        for mirror in mirrors:
            try:
                download_url(mirror + name, str(root), name, md5.get(name))
                break
            except Exception as e:  # urllib, SSL, checksum: each mirror may fail its own way
                errors.append(f"{mirror}: {(str(e).splitlines() or [type(e).__name__])[0]}")
        else:
            raise DataError(
                f"{root / name}: missing and could not be downloaded ({'; '.join(errors)}); "
                f"copy the dataset's files into {root}"
            )


def _locate(root: Path, names: tuple, download: bool, dataset: IdxDataset) -> list[Path]:
    """The dataset's files in `root`, downloading missing ones only when asked to."""
    wanted = [root / name for name in names]
    missing = [path.name for path in wanted if not path.is_file()]
    if missing and download:
        _download(root, missing, dataset.mirrors, dataset.md5)
    elif not root.is_dir():
        raise DataError(
            f"data.root={root}: no such folder; point it at a folder with the dataset's "
            f"{len(names)} .gz files (or add data.download=true to fetch them)"
        )
    elif missing:
        raise DataError(
            f"{root / missing[0]}: missing ({len(missing)} of the dataset's {len(names)} files "
            f"are); copy them into {root} (or add data.download=true to fetch them)"
        )
    return wanted


def _parse(buffer: bytearray, role: str, dataset: IdxDataset) -> torch.Tensor:
    """One unpacked IDX file's bytes as a tensor, checked against what the dataset must hold."""
    facts, items = dataset.facts, dataset.items(role)
    if len(buffer) < 4 or buffer[0] or buffer[1]:
        raise ValueError("not an IDX file (no IDX magic number)")
    if buffer[2] != UNSIGNED_BYTE:
        raise ValueError(f"holds IDX type 0x{buffer[2]:02x}; expected unsigned bytes (0x08)")
    start = 4 + 4 * buffer[3]
    if len(buffer) < start:
        raise ValueError("not an IDX file (its header is cut short)")
    dims = tuple(int.from_bytes(buffer[4 + 4 * i : 8 + 4 * i], "big") for i in range(buffer[3]))
    if len(buffer) - start != math.prod(dims):
        raise ValueError(f"holds {len(buffer) - start} bytes of data; its header says {dims}")
    if role.endswith("images"):
        ok = dims == (items, *facts.image_shape)
        what = f"{items} images of {'x'.join(map(str, facts.image_shape))}"
    else:
        ok = dims == (items,)
        what = f"{items} labels in 0-{facts.n_classes - 1}"
    if not ok:
        raise ValueError(f"holds shape {dims}; the dataset's has {what}")
    tensor = torch.frombuffer(buffer, dtype=torch.uint8, offset=start).reshape(dims)
    if role.endswith("labels"):
        tensor = tensor.long()
        if int(tensor.max()) >= facts.n_classes:
            raise ValueError(f"holds label {int(tensor.max())}; the dataset's has {what}")
    return tensor


def _verified_copy(copy: Path) -> bytearray | None:
    """The unpacked copy's bytes if they are those it was made with (its digest file), else None
    with one warning; None without a word when there is no copy yet."""
    try:
        with copy.open("rb") as f:
            buffer = bytearray(os.fstat(f.fileno()).st_size)
            f.readinto(buffer)
    except FileNotFoundError:
        return None
    except OSError as e:
        log.warning("remaking the unpacked copy %s (unreadable: %s)", copy, e.strerror or e)
        return None
    try:
        expected = copy.with_name(copy.name + DIGEST).read_text().strip()
    except OSError:
        expected = None
    if hashlib.sha256(buffer).hexdigest() != expected:
        log.warning(
            "remaking the unpacked copy %s: its bytes are not those it was made with from its .gz",
            copy,
        )
        return None
    return buffer


def _write(path: Path, data: bytes) -> None:
    """Atomically: a racing process sees the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.part")  # one per writer
    try:
        with tmp.open("xb") as f:  # "x": the umask's file mode, never someone else's file
            f.write(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _unpacked(gz: Path, blob: bytes, digest: str, role: str, cache_dir: Path, dataset):
    """The file's tensor from its verified unpacked copy (under its SHA-256), made if needed."""
    name = gz.name.removesuffix(".gz")
    folder = cache_dir / CACHE / digest
    copy = folder / name
    buffer = _verified_copy(copy)
    if buffer is not None:  # the bytes decompressing this .gz gave: a bad one is the .gz's fault
        try:
            return _parse(buffer, role, dataset)
        except ValueError as e:
            raise DataError(f"{gz}: {e}; replace it") from None
    try:
        buffer = bytearray(gzip.decompress(blob))  # checks the CRC and length of every member
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{gz}: not a valid gzip file ({e}); replace it") from None
    try:
        tensor = _parse(buffer, role, dataset)
    except ValueError as e:
        raise DataError(f"{gz}: {e}; replace it") from None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # The digest first: a copy is never seen without the digest of what it must hold (the
        # same for every writer, since the folder is the .gz's own hash).
        _write(copy.with_name(name + DIGEST), hashlib.sha256(buffer).hexdigest().encode() + b"\n")
        _write(copy, buffer)
    except OSError as e:
        raise DataError(
            f"data.cache_dir={cache_dir}: cannot unpack {gz.name} there ({e}); "
            f"point data.cache_dir at a writable folder"
        ) from None
    return tensor


@functools.lru_cache(maxsize=2)
def _read(dataset: IdxDataset, root: str, cache_dir: str, download: bool, stamp) -> RawData:
    """`IdxDataset.read` for one description, folder and state of its files (the cache key)."""
    root_path = Path(root)
    names = tuple(dataset.files[role] for role in ROLES)
    expected = _read_manifest(root_path) if root_path.is_dir() else {}
    tensors, files = {}, []
    for role, gz in zip(ROLES, _locate(root_path, names, download, dataset), strict=True):
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
        tensors[role] = _unpacked(gz, blob, digest, role, Path(cache_dir), dataset)
        files.append({"name": gz.name, "sha256": digest, "items": dataset.items(role)})
    combined = "".join(f"{f['sha256']}  {f['name']}\n" for f in files)
    fingerprint = {"id": hashlib.sha256(combined.encode()).hexdigest()[:12], "files": files}
    return RawData(
        train_x=tensors["train_images"],
        train_y=tensors["train_labels"],
        test_x=tensors["test_images"],
        test_y=tensors["test_labels"],
        facts=dataset.facts,
        fingerprint=fingerprint,
    )
