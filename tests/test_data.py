"""The data layer on the real MNIST files shipped in data/mnist."""

from __future__ import annotations

import gzip
import shutil
from types import SimpleNamespace

import pytest
import torch
import torchvision.datasets

from mnist_lab import data as mnist_data
from mnist_lab.config import REPO_ROOT, Normalize
from mnist_lab.data import RAW_SIZES, TRAIN_SIZE, load_mnist, load_raw, split_indices
from mnist_lab.errors import DataError

SHIPPED = REPO_ROOT / "data" / "mnist"
CPU = torch.device("cpu")
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def data_cfg(**changes):
    """A data config as the schema hands it to load_mnist (enums for choices)."""
    values = dict(
        root=str(SHIPPED),
        cache_dir=str(SHIPPED),
        normalize=Normalize.mnist,
        val_size=5000,
        split_seed=0,
        train_subset=None,
    )
    values.update(changes)
    if isinstance(values["normalize"], str):
        values["normalize"] = Normalize(values["normalize"])
    return SimpleNamespace(**values)


@pytest.fixture
def mnist_copy(tmp_path):
    """A private copy of the shipped files (and manifest), safe to damage."""
    root = tmp_path / "mnist"
    root.mkdir()
    for name in [*(f"{n}.gz" for n in RAW_SIZES), "SHA256SUMS"]:
        shutil.copy(SHIPPED / name, root / name)
        (root / name).chmod(0o644)
    return root


def test_shipped_files_and_manifest():
    manifest = (SHIPPED / "SHA256SUMS").read_text()
    for name in RAW_SIZES:
        assert (SHIPPED / f"{name}.gz").is_file()
        assert f"{name}.gz" in manifest


def test_raw_shapes_dtypes_and_label_counts():
    train_x, train_y, test_x, test_y = load_raw(str(SHIPPED), str(SHIPPED))
    assert train_x.shape == (60000, 28, 28) and train_x.dtype == torch.uint8
    assert test_x.shape == (10000, 28, 28) and test_x.dtype == torch.uint8
    assert train_y.shape == (60000,) and test_y.shape == (10000,)
    assert train_y.dtype == test_y.dtype == torch.int64
    assert torch.bincount(train_y, minlength=10).tolist() == TRAIN_COUNTS
    assert torch.bincount(test_y, minlength=10).tolist() == TEST_COUNTS
    assert int(train_x.max()) == 255 and int(train_x.min()) == 0


def test_tensors_shapes_and_default_split():
    d = load_mnist(data_cfg(), CPU)
    assert d.train_x.shape == (60000, 784) and d.train_x.dtype == torch.float32
    assert d.test_x.shape == (10000, 784) and d.test_y.shape == (10000,)
    assert d.val_x.shape == (5000, 784) and d.val_y.shape == (5000,)
    assert d.n_train == 55000
    assert torch.bincount(d.test_y, minlength=10).tolist() == TEST_COUNTS


def test_normalisation_mnist_gives_zero_mean_unit_std():
    d = load_mnist(data_cfg(normalize="mnist"), CPU)
    assert float(d.train_x.mean()) == pytest.approx(0.0, abs=2e-3)
    assert float(d.train_x.std()) == pytest.approx(1.0, abs=2e-3)
    assert float(d.train_x.min()) == pytest.approx(-0.1307 / 0.3081, rel=1e-5)


def test_normalisation_none_is_pixels_in_unit_interval():
    d = load_mnist(data_cfg(normalize="none"), CPU)
    assert float(d.train_x.min()) == 0.0 and float(d.train_x.max()) == 1.0
    assert float(d.train_x.mean()) == pytest.approx(0.1307, abs=1e-3)
    assert float(d.test_x.min()) == 0.0 and float(d.test_x.max()) == 1.0


def test_normalisation_half_maps_to_minus_one_one():
    d = load_mnist(data_cfg(normalize="half"), CPU)
    assert float(d.train_x.min()) == -1.0 and float(d.train_x.max()) == 1.0
    assert float(d.test_x.min()) == -1.0 and float(d.test_x.max()) == 1.0


def test_validation_split_and_train_do_not_overlap():
    d = load_mnist(data_cfg(), CPU)
    train_idx, val_idx = split_indices(5000, 0, None)
    assert torch.equal(d.train_idx, train_idx)
    train_set, val_set = set(train_idx.tolist()), set(val_idx.tolist())
    assert len(train_set) == 55000 and len(val_set) == 5000
    assert not train_set & val_set
    assert train_set | val_set == set(range(TRAIN_SIZE))
    # the val tensors are exactly the held-out training rows
    assert torch.equal(d.val_x, d.train_x[val_idx]) and torch.equal(d.val_y, d.train_y[val_idx])


def test_split_is_deterministic_for_a_split_seed():
    a_train, a_val = split_indices(5000, 3, None)
    b_train, b_val = split_indices(5000, 3, None)
    assert torch.equal(a_train, b_train) and torch.equal(a_val, b_val)
    c_train, c_val = split_indices(5000, 4, None)
    assert not torch.equal(a_val, c_val)
    # the split does not depend on the global RNG state
    torch.manual_seed(123)
    assert torch.equal(split_indices(5000, 3, None)[1], a_val)


def test_val_size_zero_trains_on_everything():
    d = load_mnist(data_cfg(val_size=0), CPU)
    assert d.n_train == TRAIN_SIZE
    assert len(d.val_y) == 0 and d.val_x.shape == (0, 784)


def test_train_subset_takes_the_first_rows_of_the_training_split():
    full_train, val = split_indices(5000, 0, None)
    sub_train, sub_val = split_indices(5000, 0, 1234)
    assert len(sub_train) == 1234
    assert torch.equal(sub_train, full_train[:1234]) and torch.equal(sub_val, val)
    d = load_mnist(data_cfg(train_subset=1234), CPU)
    assert d.n_train == 1234 and len(d.val_y) == 5000
    assert not set(d.train_idx.tolist()) & set(val.tolist())


def test_loaded_once_per_process():
    a = load_mnist(data_cfg(), CPU)
    b = load_mnist(data_cfg(train_subset=100), CPU)
    assert a.train_x is b.train_x and a.test_x is b.test_x


# ---------------------------------------------------------------------------------------------
# damaged or missing files


def assert_one_line_naming(error: DataError, path) -> None:
    message = str(error)
    assert "\n" not in message
    assert str(path) in message


def test_checksum_mismatch_names_the_file(mnist_copy, tmp_path):
    victim = mnist_copy / "train-labels-idx1-ubyte.gz"
    blob = bytearray(victim.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    victim.write_bytes(bytes(blob))
    with pytest.raises(DataError) as info:
        load_raw(str(mnist_copy), str(tmp_path / "cache"))
    assert_one_line_naming(info.value, victim)
    assert "checksum" in str(info.value)
    assert not (tmp_path / "cache" / "MNIST" / "raw" / "train-labels-idx1-ubyte").exists()


def test_truncated_file_names_the_file(mnist_copy, tmp_path):
    victim = mnist_copy / "t10k-images-idx3-ubyte.gz"
    victim.write_bytes(victim.read_bytes()[:1000])
    with pytest.raises(DataError) as info:
        load_raw(str(mnist_copy), str(tmp_path / "cache"))
    assert_one_line_naming(info.value, victim)


def test_truncated_file_without_manifest_names_the_file(mnist_copy, tmp_path):
    (mnist_copy / "SHA256SUMS").unlink()
    victim = mnist_copy / "train-labels-idx1-ubyte.gz"
    victim.write_bytes(victim.read_bytes()[:5000])
    with pytest.raises(DataError) as info:
        load_raw(str(mnist_copy), str(tmp_path / "cache"))
    assert_one_line_naming(info.value, victim)
    raw = tmp_path / "cache" / "MNIST" / "raw"
    assert not list(raw.glob("*.part"))  # the half-unpacked file was removed


def test_wrong_content_of_right_format_is_refused_without_manifest(mnist_copy, tmp_path):
    (mnist_copy / "SHA256SUMS").unlink()
    victim = mnist_copy / "t10k-labels-idx1-ubyte.gz"
    with gzip.open(victim, "wb") as f:
        f.write(b"\0" * 100)
    with pytest.raises(DataError) as info:
        load_raw(str(mnist_copy), str(tmp_path / "cache"))
    assert_one_line_naming(info.value, victim)


def test_truncated_unpacked_copy_is_remade(mnist_copy, tmp_path):
    cache = tmp_path / "cache"
    raw = cache / "MNIST" / "raw"
    raw.mkdir(parents=True)
    with gzip.open(mnist_copy / "t10k-labels-idx1-ubyte.gz", "rb") as f:
        (raw / "t10k-labels-idx1-ubyte").write_bytes(f.read()[:100])
    *_, test_y = load_raw(str(mnist_copy), str(cache))
    assert torch.bincount(test_y, minlength=10).tolist() == TEST_COUNTS
    assert (raw / "t10k-labels-idx1-ubyte").stat().st_size == RAW_SIZES["t10k-labels-idx1-ubyte"]


class FakeMNIST:
    """Stands in for torchvision's MNIST: records the call and fails as if offline."""

    calls: list = []

    def __init__(self, root, train=True, download=False, **kwargs):
        FakeMNIST.calls.append((root, train, download))
        raise RuntimeError("simulated: no internet")


def test_missing_files_fall_back_to_torchvision_download(tmp_path, monkeypatch):
    FakeMNIST.calls = []
    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    empty, cache = tmp_path / "empty", tmp_path / "cache"
    empty.mkdir()
    with pytest.raises(DataError) as info:
        load_raw(str(empty), str(cache))
    assert FakeMNIST.calls and FakeMNIST.calls[0] == (str(cache), True, True)
    message = str(info.value)
    assert "\n" not in message and "download" in message and str(cache) in message


def test_partial_files_fall_back_to_download(mnist_copy, tmp_path, monkeypatch):
    FakeMNIST.calls = []
    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    (mnist_copy / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError):
        load_raw(str(mnist_copy), str(tmp_path / "cache"))
    assert FakeMNIST.calls[0][2] is True


def test_shipped_files_never_download(mnist_copy, tmp_path, monkeypatch):
    """With the files present, torchvision is asked to read them, never to download."""
    calls = []
    real = torchvision.datasets.MNIST

    def spy(root, train=True, download=False, **kwargs):
        calls.append(download)
        return real(root, train=train, download=download, **kwargs)

    monkeypatch.setattr(torchvision.datasets, "MNIST", spy)
    mnist_data.load_raw(str(mnist_copy), str(tmp_path / "cache"))
    assert calls == [False, False]
