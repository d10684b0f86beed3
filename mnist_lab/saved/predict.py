"""Classify the user's own images the way MNIST's digits were prepared.

MNIST's digits are light on a dark background, their bounding box fitted into 20x20 pixels
(aspect kept) and centred by their centre of mass in a 28x28 field (LeCun et al.). A photo or a
drawing is brought to the same form, in the run's dataset's image shape (the box 20/28 of it):
grayscale (transparency flattened onto white), inverted when its border is lighter than its
middle (a dark digit on light paper), background lifted to 0 and the brightest stroke to 1,
cropped to the ink, resized to fit the box with antialiasing, centred by mass, deskewed when the
run's data was (`data.deskew`), then normalised with the run's own `data.normalize` statistics.
Pillow reads the files (refusing pictures too large to decode safely); torch does the rest.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mnist_lab.data.deskew import deskew
from mnist_lab.errors import LabError
from mnist_lab.records.files import atomic_write_bytes
from mnist_lab.saved.run import SavedRun, rebuild_model
from mnist_lab.train.device import resolve_device

SUFFIXES = (".png", ".jpg", ".jpeg")
FIT = 20 / 28  # MNIST: the digit's box fits 20x20, centred by mass in 28x28
INK = 0.1  # after contrast stretch, pixels above this count as the digit when cropping


def image_files(paths: list[Path]) -> list[Path]:
    """The given files, and the PNG/JPEG files directly inside the given folders, sorted."""
    files = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES)
            if not found:
                raise LabError(f"{path}: no .png, .jpg or .jpeg files in this folder")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise LabError(f"{path}: no such file or folder")
    return files


def read_gray(path: Path) -> torch.Tensor:
    """(H, W) float in [0, 1]; transparent pixels count as white paper."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Pillow warns above MAX_IMAGE_PIXELS and refuses twice that: refuse both.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                    rgba = img.convert("RGBA")
                    img = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
                gray = img.convert("L")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise LabError(
            f"{path}: too large to read safely ({e.args[0].split(',')[0]}); scale it down"
        ) from None
    except (UnidentifiedImageError, OSError) as e:
        raise LabError(f"{path}: not a readable PNG or JPEG image ({e})") from e
    data = torch.frombuffer(bytearray(gray.tobytes()), dtype=torch.uint8)
    return data.reshape(gray.height, gray.width).float() / 255.0


def is_dark_on_light(img: torch.Tensor) -> bool:
    """The border (the paper) is lighter than the picture as a whole."""
    border = torch.cat([img[0], img[-1], img[:, 0], img[:, -1]])
    return bool(border.median() > img.mean())


def to_mnist(img: torch.Tensor, shape: tuple[int, int] = (28, 28)) -> torch.Tensor:
    """`shape` in [0, 1]: light ink on black, fitted into 20/28 of it, centred by mass."""
    height, width = shape
    if is_dark_on_light(img):
        img = 1.0 - img
    border = torch.cat([img[0], img[-1], img[:, 0], img[:, -1]])
    low, high = border.median(), img.max()
    if high - low < 1e-3:
        return torch.zeros(height, width)  # a blank picture: nothing to centre
    img = ((img - low) / (high - low)).clamp(0.0, 1.0)
    rows, cols = torch.nonzero(img > INK, as_tuple=True)
    img = img[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    h, w = img.shape
    scale = min(round(FIT * height) / h, round(FIT * width) / w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    img = F.interpolate(img[None, None], size=size, mode="bilinear", antialias=True)[0, 0]
    img = img.clamp(0.0, 1.0)
    total = img.sum().clamp_min(1e-8)
    com_r = (img.sum(1) * torch.arange(size[0])).sum() / total
    com_c = (img.sum(0) * torch.arange(size[1])).sum() / total
    top = int(round(height / 2 - 0.5 - com_r.item()))
    left = int(round(width / 2 - 0.5 - com_c.item()))
    top, left = min(max(top, 0), height - size[0]), min(max(left, 0), width - size[1])
    out = torch.zeros(height, width)
    out[top : top + size[0], left : left + size[1]] = img
    return out


@torch.no_grad()
def classify(model, images: torch.Tensor, mean: float, std: float, device) -> torch.Tensor:
    """(N, classes) probabilities for (N, height, width) images in [0, 1]."""
    x = ((images.reshape(len(images), -1) - mean) / std).to(device)
    return torch.softmax(model(x).float(), dim=1).cpu()  # logits or log-probs: same softmax


def predict_files(run: SavedRun, paths: list[Path], out: Path) -> tuple[list[str], Path]:
    """One line per image (`file: class (probability)`) and the picture of what the model saw."""
    files = image_files(paths)
    facts = run.facts
    device = resolve_device(run.cfg.trainer.device)
    model = rebuild_model(run, device)
    images = torch.stack([to_mnist(read_gray(f), facts.image_shape) for f in files])
    if run.cfg.data.deskew:  # prepared exactly as the run's own images were
        images = deskew(images)
    mean, std = facts.normalization[run.cfg.data.normalize]
    confidence, labels = classify(model, images, mean, std, device).max(1)
    names = [facts.class_names[int(label)] for label in labels]
    lines = [
        f"{f}: {name} ({float(p):.1%})" for f, name, p in zip(files, names, confidence, strict=True)
    ]
    out.mkdir(parents=True, exist_ok=True)
    picture = out / "predictions.png"
    save_prediction_grid(images, files, names, confidence, picture)
    return lines, picture


def save_prediction_grid(images, files, names, confidence, path: Path) -> None:
    """Each input as the model saw it (before normalisation), titled with its prediction."""
    cols = min(len(images), 8)
    rows = (len(images) + cols - 1) // cols
    # At least 5 inches wide: the title must fit above a single image too.
    fig, axes = plt.subplots(rows, cols, figsize=(max(cols * 1.5, 5.0), rows * 1.8), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= len(images):
            continue
        ax.imshow(images[i].numpy(), cmap="gray", vmin=0, vmax=1)
        name = files[i].name if len(files[i].name) <= 14 else files[i].name[:13] + "…"
        ax.set_title(f"{name}\n→ {names[i]} ({float(confidence[i]):.1%})", fontsize=8)
    fig.suptitle("inputs as the model saw them → predicted class (probability)", fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
