"""Pictures the write-ups show: test images with true/predicted labels, and a confusion matrix,
labelled with the dataset's own class names."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from mnist_lab.data.dataset import DataTensors
from mnist_lab.records.files import atomic_write_bytes


def _save(fig, path: Path) -> None:
    """PNG rendered in memory, then written whole (a full disk never leaves half an image)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


@torch.no_grad()
def predictions(model, data: DataTensors, batch: int = 10_000) -> torch.Tensor:
    model.eval()
    preds = torch.cat(
        [model(data.test_x[s : s + batch]).argmax(1) for s in range(0, len(data.test_y), batch)]
    )
    model.train()
    return preds.cpu()


def confusion_matrix(truth: torch.Tensor, pred: torch.Tensor, n_classes: int) -> torch.Tensor:
    """counts[t, p]: test images of class t predicted as p."""
    flat = truth.long() * n_classes + pred.long()
    return torch.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def save_sample_grid(data: DataTensors, pred: torch.Tensor, path: Path, n: int = 32) -> None:
    """The first n test images, titled `true→pred`; misclassified ones in red."""
    truth, names = data.test_y.cpu(), data.facts.class_names
    n = min(n, len(truth))
    images = data.test_x[:n].cpu().reshape(-1, *data.facts.image_shape).numpy()
    cols = 8
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(cols * 1.2, n / cols * 1.4))
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(images[i], cmap="gray")
        wrong = bool(pred[i] != truth[i])
        title = f"{names[int(truth[i])]}→{names[int(pred[i])]}"
        ax.set_title(title, color="red" if wrong else "black", fontsize=9)
    shown = "test images, deskewed" if data.deskewed else "test images"
    fig.suptitle(f"{shown}: true→predicted (red: misclassified)")
    fig.tight_layout()
    _save(fig, path)


def save_confusion(counts: torch.Tensor, class_names, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(counts.numpy(), cmap="Blues")
    n = len(class_names)
    for t in range(n):
        for p in range(n):
            value = int(counts[t, p])
            color = "white" if value > counts.max() / 2 else "black"
            ax.text(p, t, value, ha="center", va="center", fontsize=7, color=color)
    ax.set(xlabel="predicted", ylabel="true", xticks=range(n), yticks=range(n))
    ax.set_xticklabels(class_names)
    ax.set_yticklabels(class_names)
    accuracy = counts.diag().sum().item() / counts.sum().item()
    ax.set_title(f"confusion matrix (test accuracy {accuracy:.2%})")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    _save(fig, path)


def save_figures(model, data: DataTensors, run_dir: Path) -> None:
    pred = predictions(model, data)
    save_sample_grid(data, pred, Path(run_dir) / "samples.png")
    counts = confusion_matrix(data.test_y.cpu(), pred, data.facts.n_classes)
    save_confusion(counts, data.facts.class_names, Path(run_dir) / "confusion.png")
