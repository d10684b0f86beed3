"""Seconds per training epoch of the tutorial recipe, harness against the tutorials' own code.

Recipe (experiment=tutorial_relu128_sgd): 784-128-10 ReLU, cross-entropy, SGD lr 0.01, batch 32, shuffled, inputs normalised
with 0.1307/0.3081, all 60,000 training images (no validation split, so both sides do the same work).

  baseline   torchvision MNIST + ToTensor/Normalize/flatten transforms + DataLoader, the loop
             written the way the write-ups the presets cite write it (loss.item() every step)
  eager      the harness: resident normalised tensors, batches cut by index, eager steps (on the
             CPU by default the hand-written step of mnist_lab.train.stacked: trainer.backward=auto)
  eager, autograd  the same with trainer.backward=autograd (autograd + torch.optim; CPU only)
  graph      the harness on CUDA: the same step captured as a CUDA graph (trainer.cuda_graph=auto)
  graph+fused  the same with torch.optim.SGD(fused=True)
  graph+compile  the same with trainer.compile=true (torch.compile of forward + loss; the first
             epoch includes the compilation)

Usage: python benchmarks/epoch_speed.py [--epochs 3] [--device auto] [--baseline-batches N]
Prints one table row per variant: first epoch, steady epoch (median of the others), and the ratio
of the baseline's steady epoch to the variant's.
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from torch import nn

from mnist_lab.config.schema import REPO_ROOT, register
from mnist_lab.data.dataset import dataset_of
from mnist_lab.job.build import build_trainer
from mnist_lab.train.device import resolve_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def baseline_epochs(device: torch.device, epochs: int, max_batches: int | None) -> list[float]:
    """The tutorial loop; with max_batches, the time of that many batches scaled to an epoch."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        data_cfg = compose("config").data
    root, dataset = Path(data_cfg.root), dataset_of(data_cfg)
    dataset.read(root, root, False)  # checked once
    raw = Path(tempfile.mkdtemp()) / "MNIST" / "raw"  # torchvision's own layout, as tutorials use
    raw.mkdir(parents=True)
    for gz in dataset.files.values():
        (raw / gz.removesuffix(".gz")).write_bytes(gzip.decompress((root / gz).read_bytes()))
    transform = transforms.Compose(
        [
            transforms.ToTensor(),
            transforms.Normalize((0.1307,), (0.3081,)),
            transforms.Lambda(lambda x: x.view(-1)),
        ]
    )
    train = datasets.MNIST(str(raw.parent.parent), train=True, transform=transform)
    loader = DataLoader(train, batch_size=32, shuffle=True)
    model = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10)).to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    times = []
    for _ in range(epochs):
        _sync(device)
        start = time.perf_counter()
        running_loss = 0.0
        for i, (images, labels) in enumerate(loader):
            if max_batches is not None and i == max_batches:
                break
            images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad()
            loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
        _sync(device)
        elapsed = time.perf_counter() - start
        if max_batches is not None:
            elapsed *= len(loader) / min(max_batches, len(loader))
        times.append(elapsed)
    return times


def harness_epochs(device_spec: str, epochs: int, *extra: str) -> tuple[list[float], str]:
    overrides = [f"trainer.device={device_spec}", "data.val_size=0", f"epochs={epochs}", *extra]
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    trainer = build_trainer(cfg)
    device, runner = trainer.data.train_x.device, trainer.graph
    times, acc = [], None
    for epoch in range(1, epochs + 1):
        _sync(device)
        start = time.perf_counter()
        ((_, acc),) = trainer.train_epoch(epoch)  # reads the metrics: ends with a sync
        times.append(time.perf_counter() - start)
    note = f"{trainer.learner.backward} step; train/acc {acc:.4f}"
    if runner is not None and runner.failed:
        note += f"; capture failed: {runner.failed}"
    return times, note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--baseline-batches",
        type=int,
        default=None,
        help="time only this many baseline batches per epoch and scale up (saves time on CPU)",
    )
    args = parser.parse_args()
    register()
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"device: {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}"
    )

    rows = [("baseline", baseline_epochs(device, args.epochs, args.baseline_batches), "")]
    rows.append(("eager", *harness_epochs(args.device, args.epochs, "trainer.cuda_graph=off")))
    if device.type == "cpu":  # `eager` above is the default: the hand-written step on the CPU
        autograd = (args.device, args.epochs, "trainer.backward=autograd")
        rows.append(("eager, autograd", *harness_epochs(*autograd)))
    if device.type == "cuda":
        graph = (args.device, args.epochs, "trainer.cuda_graph=auto")
        rows.append(("graph", *harness_epochs(*graph)))
        rows.append(("graph+fused", *harness_epochs(*graph, "+optimizer.fused=true")))
        rows.append(("graph+compile", *harness_epochs(*graph, "trainer.compile=true")))

    def steady(times: list[float]) -> float:
        return statistics.median(times[1:]) if len(times) > 1 else times[0]

    base = steady(rows[0][1])
    print("\n| variant | first epoch s | steady epoch s | speed-up vs baseline | note |")
    print("|---|---|---|---|---|")
    for label, times, note in rows:
        print(
            f"| {label} | {times[0]:.3f} | {steady(times):.3f} | {base / steady(times):.1f}x | {note} |"
        )


if __name__ == "__main__":
    main()
