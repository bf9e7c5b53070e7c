"""Training-time augmentation, drawn afresh every step from a seeded generator (never at build time).

Random resized crop (area fraction in [crop_scale, 1]) and horizontal flip, on preprocessed tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def draws(generator: torch.Generator, count: int) -> torch.Tensor:
    """The random numbers for `count` images' crops and flips (one row of 4 per image)."""
    return torch.rand(count, 4, generator=generator)


def random_crop_flip(pixels: torch.Tensor, rows: torch.Tensor,
                     crop_scale: float = 0.8) -> torch.Tensor:
    """pixels [B, 3, S, S] -> same shape; image i is cropped and flipped by `rows[i]` (from `draws`)."""
    b, _, h, w = pixels.shape
    r = rows.tolist()
    out = []
    for i in range(b):
        img = pixels[i : i + 1]
        if crop_scale < 1.0:
            area = crop_scale + (1.0 - crop_scale) * r[i][0]
            side_h = max(1, round(h * area**0.5))
            side_w = max(1, round(w * area**0.5))
            top = int(r[i][1] * (h - side_h + 1))
            left = int(r[i][2] * (w - side_w + 1))
            img = img[:, :, top : top + side_h, left : left + side_w]
            if (side_h, side_w) != (h, w):
                img = F.interpolate(img, size=(h, w), mode="bilinear", align_corners=False)
        if r[i][3] < 0.5:
            img = img.flip(-1)
        out.append(img)
    return torch.cat(out)
