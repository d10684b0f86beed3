"""What checking the data's provenance costs a run: reading MNIST with and without it.

  baseline   torchvision's IDX reader on the unpacked files, no hashing or checks (what a run
             paid before data.root was checked: the old size-keyed cache)
  checked    the dataset's loader as a run's first job calls it: SHA-256 of the four .gz files,
             the unpacked copies found by that hash, their bytes checked against the digest stored
             when they were made (SHA-256 again), parsed and checked
  digests    of which: the SHA-256 of the unpacked copies' bytes alone (the check that a copy
             still holds what its .gz holds), timed on the bytes in memory
  reused     the loader again in the same process (every later job of a multirun): the loader
             built from the config, one stat per file, the tensors from the per-process cache

Usage: python benchmarks/data_load.py [--repeats 7]
Prints the median milliseconds of each and the checked/baseline ratio.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from torchvision.datasets.mnist import read_image_file, read_label_file

from mnist_lab.config.schema import CONF_DIR, register
from mnist_lab.data.dataset import dataset_of
from mnist_lab.data.idx import CACHE


def median_ms(fn, repeats: int) -> float:
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        data_cfg = compose("config").data
    root = Path(data_cfg.root)
    fingerprint = dataset_of(data_cfg).read(root, root, False).fingerprint  # makes the cache
    copies = [
        root / CACHE / f["sha256"] / f["name"].removesuffix(".gz") for f in fingerprint["files"]
    ]
    unpacked = [path.read_bytes() for path in copies]

    def baseline(_):
        for path in copies:
            read = read_image_file if "images" in path.name else read_label_file
            read(str(path))

    links = Path(tempfile.mkdtemp())

    def checked(i):
        # Another path to the same folder each time: the per-process cache is keyed on it.
        link = links / str(i)
        link.symlink_to(root)
        dataset_of(data_cfg).read(link, root, False)

    def digests(_):
        for blob in unpacked:
            hashlib.sha256(blob).hexdigest()

    rows = {
        "baseline": median_ms(baseline, args.repeats),
        "checked": median_ms(checked, args.repeats),
        "digests": median_ms(digests, args.repeats),
        "reused": median_ms(lambda _: dataset_of(data_cfg).read(root, root, False), args.repeats),
    }
    print("| variant | ms (median) |\n|---|---|")
    for name, ms in rows.items():
        print(f"| {name} | {ms:.2f} |")
    print(
        f"\nchecked / baseline: {rows['checked'] / rows['baseline']:.2f}x "
        f"(+{rows['checked'] - rows['baseline']:.0f} ms once per process, of which "
        f"{rows['digests']:.0f} ms verify the unpacked copies)"
    )


if __name__ == "__main__":
    main()
