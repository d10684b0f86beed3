"""Pictures the write-ups show: test digits with true/predicted labels, and a confusion matrix."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from mnist_lab.data.mnist import MnistTensors
from mnist_lab.models.build import N_CLASSES
from mnist_lab.records.files import atomic_write_bytes


def _save(fig, path: Path) -> None:
    """PNG rendered in memory, then written whole (a full disk never leaves half an image)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


@torch.no_grad()
def predictions(model, data: MnistTensors, batch: int = 10_000) -> torch.Tensor:
    model.eval()
    preds = torch.cat(
        [model(data.test_x[s : s + batch]).argmax(1) for s in range(0, len(data.test_y), batch)]
    )
    model.train()
    return preds.cpu()


def confusion_matrix(truth: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """counts[t, p]: test images of digit t predicted as p."""
    flat = truth.long() * N_CLASSES + pred.long()
    return torch.bincount(flat, minlength=N_CLASSES * N_CLASSES).reshape(N_CLASSES, N_CLASSES)


def save_sample_grid(data: MnistTensors, pred: torch.Tensor, path: Path, n: int = 32) -> None:
    """The first n test images, titled `true→pred`; misclassified ones in red."""
    truth = data.test_y.cpu()
    images = data.test_x[:n].cpu().reshape(-1, 28, 28).numpy()
    cols = 8
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(cols * 1.2, n / cols * 1.4))
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(images[i], cmap="gray")
        wrong = bool(pred[i] != truth[i])
        ax.set_title(f"{truth[i]}→{pred[i]}", color="red" if wrong else "black", fontsize=9)
    shown = "test images, deskewed" if data.deskewed else "test images"
    fig.suptitle(f"{shown}: true→predicted (red: misclassified)")
    fig.tight_layout()
    _save(fig, path)


def save_confusion(counts: torch.Tensor, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(counts.numpy(), cmap="Blues")
    for t in range(N_CLASSES):
        for p in range(N_CLASSES):
            value = int(counts[t, p])
            color = "white" if value > counts.max() / 2 else "black"
            ax.text(p, t, value, ha="center", va="center", fontsize=7, color=color)
    ax.set(xlabel="predicted", ylabel="true", xticks=range(N_CLASSES), yticks=range(N_CLASSES))
    accuracy = counts.diag().sum().item() / counts.sum().item()
    ax.set_title(f"confusion matrix (test accuracy {accuracy:.2%})")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    _save(fig, path)


def save_figures(model, data: MnistTensors, run_dir: Path) -> None:
    pred = predictions(model, data)
    save_sample_grid(data, pred, Path(run_dir) / "samples.png")
    save_confusion(confusion_matrix(data.test_y.cpu(), pred), Path(run_dir) / "confusion.png")
