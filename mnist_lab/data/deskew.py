"""LeCun et al.'s deskewing: each image sheared upright by its second moments, its mass centred."""

from __future__ import annotations

import torch
import torch.nn.functional as F

DESKEW_CHUNK = 10_000  # images sheared at once: bounds the sampling grid's memory (~63 MB)


def deskew(images: torch.Tensor) -> torch.Tensor:
    """(N, H, W) pixels in [0, 1], each sheared so its principal axis is vertical and moved so its
    centre of mass is the image's centre; blank images stay blank.

    The classic preprocessing of LeCun et al.'s MNIST table (the "deskewing" rows): the shear
    x' = x + alpha * (y - y0), alpha = cov(x, y) / var(y) of the ink's second moments, resampled
    bilinearly (`grid_sample`). It is the same for every image a run sees (train, val, test, and
    the user's own in `predict`), so it is preprocessing, not augmentation.
    """
    n, h, w = images.shape
    out = torch.empty_like(images)
    rows = torch.arange(h, dtype=images.dtype, device=images.device).view(1, h, 1)
    cols = torch.arange(w, dtype=images.dtype, device=images.device).view(1, 1, w)
    dr, dc = rows - h / 2.0, cols - w / 2.0  # offsets from the centre the mass is moved to
    for start in range(0, n, DESKEW_CHUNK):
        x = images[start : start + DESKEW_CHUNK]
        mass = x.sum((1, 2))
        total = mass.clamp_min(1e-12)
        r0 = ((x * rows).sum((1, 2)) / total).view(-1, 1, 1)
        c0 = ((x * cols).sum((1, 2)) / total).view(-1, 1, 1)
        var_r = (x * (rows - r0) ** 2).sum((1, 2)) / total
        cov = (x * (rows - r0) * (cols - c0)).sum((1, 2)) / total
        alpha = torch.where(var_r > 1e-6, cov / var_r.clamp_min(1e-6), 0.0).view(-1, 1, 1)
        # Output pixel (r, c) samples the input at (r0 + dr, c0 + alpha * dr + dc).
        src_r = (r0 + dr).expand(-1, h, w)
        src_c = c0 + alpha * dr + dc
        grid = torch.stack([src_c / (w - 1) * 2 - 1, src_r / (h - 1) * 2 - 1], dim=-1)
        sheared = F.grid_sample(x[:, None], grid, mode="bilinear", align_corners=True)[:, 0]
        out[start : start + DESKEW_CHUNK] = torch.where((mass > 0).view(-1, 1, 1), sheared, x)
    return out
