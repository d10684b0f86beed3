"""What checking the data's provenance costs a run: reading MNIST with and without it.

  baseline   torchvision's IDX reader on the unpacked files, no hashing or checks (what a run
             paid before data.root was checked: the old size-keyed cache)
  checked    mnist_lab.data.mnist.load_raw as a run's first job does it: SHA-256 of the four .gz files,
             the unpacked copies found by their hash, read by torchvision and checked
  reused     load_raw again in the same process (every later job of a multirun): one stat per file

Usage: python benchmarks/data_load.py [--repeats 7]
Prints the median milliseconds of each and the checked/baseline ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

from torchvision.datasets.mnist import read_image_file, read_label_file

from mnist_lab.config.schema import REPO_ROOT
from mnist_lab.data.mnist import CACHE, FILES, load_raw

ROOT = REPO_ROOT / "data" / "mnist"


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
    fingerprint = load_raw(str(ROOT), str(ROOT), False).fingerprint  # makes the cache
    copies = {
        f["name"].removesuffix(".gz"): ROOT / CACHE / f["sha256"] for f in fingerprint["files"]
    }

    def baseline(_):
        for name in FILES:
            read = read_image_file if "images" in name else read_label_file
            read(str(copies[name] / name))

    def checked(i):
        # A new spelling of the same folder each time: load_raw's per-process cache is keyed on it.
        load_raw(str(ROOT) + "/." * (i + 1), str(ROOT), False)

    rows = {
        "baseline": median_ms(baseline, args.repeats),
        "checked": median_ms(checked, args.repeats),
        "reused": median_ms(lambda _: load_raw(str(ROOT), str(ROOT), False), args.repeats),
    }
    print("| variant | ms (median) |\n|---|---|")
    for name, ms in rows.items():
        print(f"| {name} | {ms:.2f} |")
    print(
        f"\nchecked / baseline: {rows['checked'] / rows['baseline']:.2f}x "
        f"(+{rows['checked'] - rows['baseline']:.0f} ms once per process)"
    )


if __name__ == "__main__":
    main()
