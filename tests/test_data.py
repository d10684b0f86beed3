"""The data layer on the real MNIST files shipped in data/mnist, and a dataset a test adds."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from mnist_lab.config.schema import CONF_DIR, REPO_ROOT
from mnist_lab.data import idx
from mnist_lab.data.dataset import dataset_of, load_data, split_indices
from mnist_lab.data.deskew import deskew
from mnist_lab.data.idx import CACHE, DIGEST
from mnist_lab.errors import DataError

SHIPPED = REPO_ROOT / "data" / "mnist"
CPU = torch.device("cpu")
TRAIN_SIZE = 60_000
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
MNIST_DATASET = OmegaConf.load(CONF_DIR / "data" / "mnist.yaml").dataset  # the files and facts
FILES = [name.removesuffix(".gz") for name in MNIST_DATASET.files.values()]
SHIPPED_ID = "eee3ce93c2df"  # the fingerprint's id of the shipped files (records keep it)


def data_cfg(**changes):
    """A data config as the job hands it to load_data (conf/data/mnist.yaml's dataset)."""
    values = dict(
        dataset=MNIST_DATASET,
        root=str(SHIPPED),
        cache_dir=str(SHIPPED),
        download=False,
        normalize="mnist",
        deskew=False,
        val_size=5000,
        split_seed=0,
        train_subset=None,
    )
    values.update(changes)
    return OmegaConf.create(values)


def load_raw(root, cache_dir, download=False):
    """MNIST's files in `root` as the loader reads them (uint8 images, the fingerprint)."""
    return dataset_of(data_cfg()).read(Path(root), Path(cache_dir), download)


@pytest.fixture
def mnist_copy(tmp_path):
    """A private copy of the shipped files (and manifest), safe to damage."""
    root = tmp_path / "mnist"
    root.mkdir()
    for name in [*(f"{n}.gz" for n in FILES), "SHA256SUMS"]:
        shutil.copy(SHIPPED / name, root / name)
        (root / name).chmod(0o644)
    return root


def test_shipped_files_and_manifest():
    manifest = (SHIPPED / "SHA256SUMS").read_text()
    for name in FILES:
        assert (SHIPPED / f"{name}.gz").is_file()
        assert f"{name}.gz" in manifest


def test_raw_shapes_dtypes_and_label_counts():
    raw = load_raw(str(SHIPPED), str(SHIPPED), False)
    train_x, train_y, test_x, test_y = raw.train_x, raw.train_y, raw.test_x, raw.test_y
    assert train_x.shape == (60000, 28, 28) and train_x.dtype == torch.uint8
    assert test_x.shape == (10000, 28, 28) and test_x.dtype == torch.uint8
    assert train_y.shape == (60000,) and test_y.shape == (10000,)
    assert train_y.dtype == test_y.dtype == torch.int64
    assert torch.bincount(train_y, minlength=10).tolist() == TRAIN_COUNTS
    assert torch.bincount(test_y, minlength=10).tolist() == TEST_COUNTS
    assert int(train_x.max()) == 255 and int(train_x.min()) == 0


def test_tensors_shapes_and_default_split():
    d = load_data(data_cfg(), CPU)
    assert d.train_x.shape == (60000, 784) and d.train_x.dtype == torch.float32
    assert d.test_x.shape == (10000, 784) and d.test_y.shape == (10000,)
    assert d.val_x.shape == (5000, 784) and d.val_y.shape == (5000,)
    assert d.n_train == 55000
    assert torch.bincount(d.test_y, minlength=10).tolist() == TEST_COUNTS


def test_normalisation_mnist_gives_zero_mean_unit_std():
    d = load_data(data_cfg(normalize="mnist"), CPU)
    assert float(d.train_x.mean()) == pytest.approx(0.0, abs=2e-3)
    assert float(d.train_x.std()) == pytest.approx(1.0, abs=2e-3)
    assert float(d.train_x.min()) == pytest.approx(-0.1307 / 0.3081, rel=1e-5)


def test_normalisation_none_is_pixels_in_unit_interval():
    d = load_data(data_cfg(normalize="none"), CPU)
    assert float(d.train_x.min()) == 0.0 and float(d.train_x.max()) == 1.0
    assert float(d.train_x.mean()) == pytest.approx(0.1307, abs=1e-3)
    assert float(d.test_x.min()) == 0.0 and float(d.test_x.max()) == 1.0


def test_normalisation_half_maps_to_minus_one_one():
    d = load_data(data_cfg(normalize="half"), CPU)
    assert float(d.train_x.min()) == -1.0 and float(d.train_x.max()) == 1.0
    assert float(d.test_x.min()) == -1.0 and float(d.test_x.max()) == 1.0


def test_validation_split_and_train_do_not_overlap():
    d = load_data(data_cfg(), CPU)
    train_idx, val_idx = split_indices(TRAIN_SIZE, 5000, 0, None)
    assert torch.equal(d.train_idx, train_idx)
    train_set, val_set = set(train_idx.tolist()), set(val_idx.tolist())
    assert len(train_set) == 55000 and len(val_set) == 5000
    assert not train_set & val_set
    assert train_set | val_set == set(range(TRAIN_SIZE))
    # the val tensors are exactly the held-out training rows
    assert torch.equal(d.val_x, d.train_x[val_idx]) and torch.equal(d.val_y, d.train_y[val_idx])


def test_split_is_deterministic_for_a_split_seed():
    a_train, a_val = split_indices(TRAIN_SIZE, 5000, 3, None)
    b_train, b_val = split_indices(TRAIN_SIZE, 5000, 3, None)
    assert torch.equal(a_train, b_train) and torch.equal(a_val, b_val)
    c_train, c_val = split_indices(TRAIN_SIZE, 5000, 4, None)
    assert not torch.equal(a_val, c_val)
    # the split does not depend on the global RNG state
    torch.manual_seed(123)
    assert torch.equal(split_indices(TRAIN_SIZE, 5000, 3, None)[1], a_val)


def test_val_size_zero_trains_on_everything():
    d = load_data(data_cfg(val_size=0), CPU)
    assert d.n_train == TRAIN_SIZE
    assert len(d.val_y) == 0 and d.val_x.shape == (0, 784)


def test_train_subset_takes_the_first_rows_of_the_training_split():
    full_train, val = split_indices(TRAIN_SIZE, 5000, 0, None)
    sub_train, sub_val = split_indices(TRAIN_SIZE, 5000, 0, 1234)
    assert len(sub_train) == 1234
    assert torch.equal(sub_train, full_train[:1234]) and torch.equal(sub_val, val)
    d = load_data(data_cfg(train_subset=1234), CPU)
    assert d.n_train == 1234 and len(d.val_y) == 5000
    assert not set(d.train_idx.tolist()) & set(val.tolist())


def test_loaded_once_per_process():
    a = load_data(data_cfg(), CPU)
    b = load_data(data_cfg(train_subset=100), CPU)
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
        load_raw(str(mnist_copy), str(tmp_path / "cache"), False)
    assert_one_line_naming(info.value, victim)
    assert "checksum" in str(info.value)
    assert not list((tmp_path / "cache").rglob("train-labels-idx1-ubyte"))


def test_truncated_file_names_the_file(mnist_copy, tmp_path):
    victim = mnist_copy / "t10k-images-idx3-ubyte.gz"
    victim.write_bytes(victim.read_bytes()[:1000])
    with pytest.raises(DataError) as info:
        load_raw(str(mnist_copy), str(tmp_path / "cache"), False)
    assert_one_line_naming(info.value, victim)


def test_truncated_file_without_manifest_names_the_file(mnist_copy, tmp_path):
    (mnist_copy / "SHA256SUMS").unlink()
    victim = mnist_copy / "train-labels-idx1-ubyte.gz"
    victim.write_bytes(victim.read_bytes()[:5000])
    with pytest.raises(DataError) as info:
        load_raw(str(mnist_copy), str(tmp_path / "cache"), False)
    assert_one_line_naming(info.value, victim)
    assert not list((tmp_path / "cache").rglob("*.part"))  # the half-unpacked file was removed


def test_wrong_content_of_right_format_is_refused_without_manifest(mnist_copy, tmp_path):
    (mnist_copy / "SHA256SUMS").unlink()
    victim = mnist_copy / "t10k-labels-idx1-ubyte.gz"
    with gzip.open(victim, "wb") as f:
        f.write(b"\0" * 100)
    with pytest.raises(DataError) as info:
        load_raw(str(mnist_copy), str(tmp_path / "cache"), False)
    assert_one_line_naming(info.value, victim)


def test_bit_flip_without_manifest_fails_the_gzip_check(mnist_copy, tmp_path):
    (mnist_copy / "SHA256SUMS").unlink()
    victim = mnist_copy / "train-images-idx3-ubyte.gz"
    blob = bytearray(victim.read_bytes())
    blob[len(blob) // 2] ^= 0x01  # deflate may still decode it: the CRC must catch it
    victim.write_bytes(bytes(blob))
    with pytest.raises(DataError) as info:
        load_raw(str(mnist_copy), str(tmp_path / "cache"), False)
    assert_one_line_naming(info.value, victim)


def test_wrong_counts_or_labels_are_refused(mnist_copy, tmp_path):
    """Valid gzip and IDX, but not MNIST's shape: too few items, a label outside 0-9."""
    (mnist_copy / "SHA256SUMS").unlink()
    victim = mnist_copy / "t10k-labels-idx1-ubyte.gz"
    header = (2049).to_bytes(4, "big")
    victim.write_bytes(gzip.compress(header + (9999).to_bytes(4, "big") + bytes(9999), mtime=0))
    with pytest.raises(DataError, match="10000 labels") as info:
        load_raw(str(mnist_copy), str(tmp_path / "cache"), False)
    assert_one_line_naming(info.value, victim)
    victim.write_bytes(gzip.compress(header + (10000).to_bytes(4, "big") + bytes([10]) * 10000))
    with pytest.raises(DataError, match="0-9"):
        load_raw(str(mnist_copy), str(tmp_path / "cache"), False)


def zero_test_labels(root) -> str:
    """Replace the test labels by zeros (no manifest); returns the new file's SHA-256."""
    (root / "SHA256SUMS").unlink()
    header = (2049).to_bytes(4, "big") + (10000).to_bytes(4, "big")
    blob = gzip.compress(header + bytes(10000), mtime=0)  # mtime 0: the same bytes every time
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(blob)
    return hashlib.sha256(blob).hexdigest()


def test_cache_is_keyed_on_content_not_on_size(mnist_copy, tmp_path):
    """A changed file in data.root is read even when the cache holds the old one (same size)."""
    cache = str(tmp_path / "cache")
    shipped = load_raw(str(mnist_copy), cache, False)
    digest = zero_test_labels(mnist_copy)
    changed = load_raw(str(mnist_copy), cache, False)
    assert int(changed.test_y.abs().sum()) == 0 and int(shipped.test_y.abs().sum()) > 0
    assert changed.fingerprint["id"] != shipped.fingerprint["id"]
    labels = {f["name"]: f for f in changed.fingerprint["files"]}["t10k-labels-idx1-ubyte.gz"]
    assert labels == {"name": "t10k-labels-idx1-ubyte.gz", "sha256": digest, "items": 10000}
    assert (tmp_path / "cache" / CACHE / digest / "t10k-labels-idx1-ubyte").is_file()


def test_fingerprint_of_the_shipped_files_matches_the_manifest():
    fingerprint = load_raw(str(SHIPPED), str(SHIPPED), False).fingerprint
    manifest = dict(
        reversed(line.split()) for line in (SHIPPED / "SHA256SUMS").read_text().splitlines()
    )
    assert {f["name"]: f["sha256"] for f in fingerprint["files"]} == manifest
    assert [f["items"] for f in fingerprint["files"]] == [60000, 60000, 10000, 10000]
    assert fingerprint["id"] == SHIPPED_ID


def zero_cached_test_labels(cache) -> Path:
    """Set every test label of the unpacked copy in `cache` to 0 (its size and header kept)."""
    (copy,) = Path(cache).rglob("t10k-labels-idx1-ubyte")
    copy.write_bytes(copy.read_bytes()[:8] + bytes(10000))
    return copy


@pytest.mark.parametrize("damage", ["labels zeroed", "truncated", "digest lost"])
def test_damaged_cached_copy_is_remade_with_one_warning(mnist_copy, tmp_path, caplog, damage):
    """The unpacked copy no longer holds what its .gz holds: it is never served, but remade."""
    cache = tmp_path / "cache"
    shipped = load_raw(str(mnist_copy), str(cache))
    (copy,) = cache.rglob("t10k-labels-idx1-ubyte")
    if damage == "labels zeroed":  # the same size and a valid IDX file: only the digest tells
        zero_cached_test_labels(cache)
    elif damage == "truncated":
        copy.write_bytes(copy.read_bytes()[:100])
    else:
        copy.with_name(copy.name + DIGEST).unlink()
    os.utime(mnist_copy / "t10k-labels-idx1-ubyte.gz")  # a touched file is read again
    with caplog.at_level(logging.WARNING, logger="mnist_lab.data.idx"):
        again = load_raw(str(mnist_copy), str(cache))
    assert torch.bincount(again.test_y, minlength=10).tolist() == TEST_COUNTS
    assert again.fingerprint == shipped.fingerprint
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning.startswith(f"remaking the unpacked copy {copy}") and "\n" not in warning
    assert (
        copy.read_bytes()[8:]
        == gzip.decompress((mnist_copy / "t10k-labels-idx1-ubyte.gz").read_bytes())[8:]
    )
    caplog.clear()
    os.utime(mnist_copy / "t10k-labels-idx1-ubyte.gz")
    load_raw(str(mnist_copy), str(cache))  # the remade copy is served as it is
    assert not caplog.records


def test_missing_folder_or_file_is_one_line_naming_it(mnist_copy, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(idx, "_download", lambda *a: calls.append(a))
    with pytest.raises(DataError) as info:
        load_raw(str(tmp_path / "nowhere"), str(tmp_path / "cache"), False)
    assert_one_line_naming(info.value, tmp_path / "nowhere")
    assert "data.download=true" in str(info.value)
    victim = mnist_copy / "t10k-images-idx3-ubyte.gz"
    victim.unlink()
    with pytest.raises(DataError) as info:
        load_raw(str(mnist_copy), str(tmp_path / "cache"), False)
    assert_one_line_naming(info.value, victim)
    assert calls == []  # never downloads unless asked


def test_download_only_when_asked_and_offline_is_one_line(tmp_path, monkeypatch):
    """data.download=true fetches the missing files into data.root; no network: one line."""
    import torchvision.datasets.utils

    fetched = []

    def offline(url, root, filename, md5):
        fetched.append(filename)
        raise OSError("simulated: no network")

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", offline)
    root = tmp_path / "fresh"
    with pytest.raises(DataError) as info:
        load_raw(str(root), str(tmp_path / "cache"), True)
    assert "\n" not in str(info.value) and "no network" in str(info.value)
    assert str(root / "train-images-idx3-ubyte.gz") in str(info.value)
    assert fetched == ["train-images-idx3-ubyte.gz"] * 2  # both mirrors tried, then stopped


# ---------------------------------------------------------------------------------------------
# end to end: the real CLI with default settings (the default data.cache_dir included)


def test_cli_trains_on_the_data_root_it_is_given(mnist_copy, run_cli):
    """Zeroed test labels in another folder: chance-level test accuracy on the first try, with
    the default cache (which holds the shipped labels, the same size), and their fingerprint."""
    digest = zero_test_labels(mnist_copy)
    proc = run_cli(
        [f"data.root={mnist_copy}", "epochs=1", "data.train_subset=2000", "trainer.device=cpu"]
    )
    assert proc.returncode == 0, proc.output
    record = json.loads((proc.run_dir / "result.json").read_text())
    assert record["final"]["test/acc"] < 0.2 < record["final"]["val/acc"]
    files = {f["name"]: f["sha256"] for f in record["data"]["files"]}
    assert files["t10k-labels-idx1-ubyte.gz"] == digest
    shipped = load_raw(str(SHIPPED), str(SHIPPED), False).fingerprint["id"]
    assert record["data"]["id"] != shipped


@pytest.mark.parametrize("damage", ["missing folder", "bit flip", "truncated"])
def test_cli_bad_data_is_one_line_exit_2(mnist_copy, run_cli, damage):
    (mnist_copy / "SHA256SUMS").unlink()
    victim = mnist_copy / "train-images-idx3-ubyte.gz"
    root = mnist_copy
    if damage == "missing folder":
        root, victim = mnist_copy / "nonexistent", mnist_copy / "nonexistent"
    elif damage == "bit flip":
        blob = bytearray(victim.read_bytes())
        blob[len(blob) // 2] ^= 0x01
        victim.write_bytes(bytes(blob))
    else:
        victim.write_bytes(victim.read_bytes()[:100_000])
    proc = run_cli([f"data.root={root}", "epochs=1", "trainer.device=cpu"])
    assert proc.returncode == 2, proc.output
    errors = [line for line in proc.output.splitlines() if str(victim) in line]
    assert len(errors) == 1 and "Traceback" not in proc.output
    record = json.loads((proc.run_dir / "result.json").read_text())
    assert record["status"] == "failed" and record["refused"]  # bad input: never a result


def test_cli_damaged_cache_is_remade_and_the_record_names_the_data_trained_on(
    mnist_copy, tmp_path, run_cli
):
    """Test labels zeroed in the unpacked copy: the run warns, trains and tests on the data the
    .gz files hold (not chance-level test accuracy), and its fingerprint is theirs."""
    cache = tmp_path / "cache"
    shipped = load_raw(str(mnist_copy), str(cache)).fingerprint
    copy = zero_cached_test_labels(cache)
    proc = run_cli(
        [
            f"data.root={mnist_copy}",
            f"data.cache_dir={cache}",
            "epochs=1",
            "data.train_subset=2000",
            "trainer.device=cpu",
            "trainer.save_figures=false",
        ]
    )
    assert proc.returncode == 0, proc.output
    (warning,) = proc.stderr.splitlines()  # a plain line on stderr, like every warning
    assert warning.startswith(f"remaking the unpacked copy {copy}"), proc.output
    record = json.loads((proc.run_dir / "result.json").read_text())
    assert record["status"] == "completed" and record["final"]["test/acc"] > 0.5
    assert record["data"] == shipped and record["data"]["id"] == SHIPPED_ID
    assert int.from_bytes(copy.read_bytes()[8:9]) == 7  # the first test label, restored


def moments(images):
    """Centre of mass (row, col) and shear cov(row, col) / var(row) of each (28, 28) image."""
    rows = torch.arange(28.0).view(1, 28, 1)
    cols = torch.arange(28.0).view(1, 1, 28)
    mass = images.sum((1, 2))
    r0 = (images * rows).sum((1, 2)) / mass
    c0 = (images * cols).sum((1, 2)) / mass
    dr, dc = rows - r0.view(-1, 1, 1), cols - c0.view(-1, 1, 1)
    shear = (images * dr * dc).sum((1, 2)) / (images * dr**2).sum((1, 2))
    return r0, c0, shear


def slanted_bar(slope, shift=0):
    """A bar leaning by `slope` columns per row, drawn off centre by `shift` columns."""
    image = torch.zeros(28, 28)
    for row in range(5, 23):
        image[
            row, round(12 + shift + slope * (row - 14)) : round(15 + shift + slope * (row - 14))
        ] = 1
    return image


def test_deskew_stands_a_slanted_stroke_upright_and_centres_it():
    images = torch.stack([slanted_bar(0.4, shift=3), slanted_bar(-0.3), slanted_bar(0.0)])
    before = moments(images)
    assert before[2][0] == pytest.approx(0.4, abs=0.05) and before[2][1] == pytest.approx(
        -0.3, abs=0.05
    )
    r0, c0, shear = moments(deskew(images))
    assert shear.abs().max() < 0.02  # upright
    assert torch.allclose(r0, torch.full((3,), 14.0), atol=0.1)  # mass at the centre
    assert torch.allclose(c0, torch.full((3,), 14.0), atol=0.1)
    assert torch.allclose(deskew(images).sum((1, 2)), images.sum((1, 2)), rtol=0.02)  # no ink lost


def test_deskew_leaves_blank_images_blank_and_an_upright_centred_one_nearly_as_it_was():
    blank = torch.zeros(2, 28, 28)
    assert torch.equal(deskew(blank), blank)
    upright = torch.zeros(28, 28)
    upright[5:24, 13:16] = 1.0  # mass exactly at (14, 14)
    assert moments(upright[None])[0].item() == pytest.approx(14.0)
    assert (deskew(upright[None])[0] - upright).abs().max() < 1e-5


def test_deskew_applies_to_train_val_and_test_alike():
    raw = load_raw(str(SHIPPED), str(SHIPPED), False)
    plain = load_data(data_cfg(normalize="none"), CPU)
    d = load_data(data_cfg(normalize="none", deskew=True), CPU)
    assert not torch.equal(plain.train_x, d.train_x)  # both cached side by side
    assert d.deskewed and not plain.deskewed
    expected_test = deskew(raw.test_x.float() / 255.0).reshape(10_000, -1)
    assert torch.allclose(d.test_x, expected_test)
    expected_train = deskew(raw.train_x[:100].float() / 255.0).reshape(100, -1)
    assert torch.allclose(d.train_x[:100], expected_train)
    assert torch.equal(d.val_x, d.train_x[split_indices(TRAIN_SIZE, 5000, 0, None)[1]])
    # MNIST's own digits lean: deskewing removes nearly all of it.
    lean = moments(raw.test_x[:2000].float())[2].abs().mean()
    left = moments(d.test_x[:2000].reshape(-1, 28, 28))[2].abs().mean()
    assert lean > 0.15 and left < 0.2 * lean


# ---------------------------------------------------------------------------------------------
# a dataset added in one room: one YAML of the test's own, in a config folder of its own


TINY_YAML = """\
# Three classes of 8x8 images: the bright band says which.
defaults:
  - /schema/mnist_lab.data.idx.IdxDatasetConfig@dataset
  - _self_
dataset:
  _target_: mnist_lab.data.idx.IdxDataset
  files:
    train_images: bands-train-images.gz
    train_labels: bands-train-labels.gz
    test_images: bands-test-images.gz
    test_labels: bands-test-labels.gz
  image_shape: [8, 8]
  classes: [left, middle, right]
  train_items: 300
  test_items: 90
  normalization:
    plain: [0.0, 1.0]
root: {root}
cache_dir: {root}
download: false
normalize: plain
deskew: false
val_size: 60
split_seed: 0
shuffle: true
drop_last: false
train_subset: null
batch_size: ${{batch_size}}
eval_batch_size: 1000
"""


def write_idx(path: Path, tensor: torch.Tensor) -> str:
    """`tensor` (uint8) as a gzipped IDX file; returns the file's SHA-256."""
    header = bytes([0, 0, idx.UNSIGNED_BYTE, tensor.dim()])
    header += b"".join(size.to_bytes(4, "big") for size in tensor.shape)
    blob = gzip.compress(header + tensor.numpy().tobytes(), mtime=0)
    path.write_bytes(blob)
    return hashlib.sha256(blob).hexdigest()


def bands(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n noisy 8x8 images whose label (0-2) is the column band drawn brighter."""
    labels = torch.randint(0, 3, (n,), generator=generator)
    images = torch.randint(0, 90, (n, 8, 8), generator=generator)
    for k, cols in enumerate((slice(0, 3), slice(3, 5), slice(5, 8))):
        images[labels == k, :, cols] += 150
    return images.to(torch.uint8), labels.to(torch.uint8)


@pytest.fixture(scope="module")
def bands_dataset(tmp_path_factory):
    """(config folder with data/bands.yaml, {file name: SHA-256}) of a dataset the test makes."""
    folder = tmp_path_factory.mktemp("bands")
    root, conf = folder / "files", folder / "conf"
    root.mkdir()
    (conf / "data").mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    digests = {}
    for split, n in (("train", 300), ("test", 90)):
        images, labels = bands(n, generator)
        digests[f"bands-{split}-images.gz"] = write_idx(root / f"bands-{split}-images.gz", images)
        digests[f"bands-{split}-labels.gz"] = write_idx(root / f"bands-{split}-labels.gz", labels)
    (conf / "data" / "bands.yaml").write_text(TINY_YAML.format(root=root))
    return conf, digests


def test_a_dataset_added_by_its_own_config_trains_end_to_end(bands_dataset, run_cli, capsys):
    """One YAML in a config folder of the run's own (`--config-dir`), no code: the model is sized
    by the dataset (64 inputs, 3 classes), the record names the data, the figures and the
    evaluation use its class names."""
    conf, digests = bands_dataset
    proc = run_cli(
        [
            "--config-dir",
            str(conf),
            "data=bands",
            "epochs=3",
            "batch_size=30",
            "lr=0.1",
            "hidden=16",
            "trainer.device=cpu",
        ]
    )
    assert proc.returncode == 0, proc.output
    record = json.loads((proc.run_dir / "result.json").read_text())
    assert record["status"] == "completed" and record["choices"]["data"] == "bands"
    assert record["param_count"] == (64 * 16 + 16) + (16 * 3 + 3)
    assert record["n_train"] == 240 and record["n_val"] == 60
    assert {f["name"]: f["sha256"] for f in record["data"]["files"]} == digests
    combined = "".join(f"{f['sha256']}  {f['name']}\n" for f in record["data"]["files"])
    assert record["data"]["id"] == hashlib.sha256(combined.encode()).hexdigest()[:12]
    assert [f["items"] for f in record["data"]["files"]] == [300, 300, 90, 90]
    assert record["final"]["test/acc"] > 0.9  # learnable: the bands are far apart
    assert (proc.run_dir / "samples.png").is_file() and (proc.run_dir / "confusion.png").is_file()

    from mnist_lab.saved.evaluate import main

    assert main([str(proc.run_dir), "--out", str(proc.run_dir / "eval")]) == 0
    out = capsys.readouterr().out
    assert "matches the record to 4 decimals" in out
    assert "per-class test accuracy: left: " in out and "middle: " in out and "right: " in out
