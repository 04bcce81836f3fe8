"""Training-time augmentation on torch batches: flips, 90-degree rotations, mild scale and intensity jitter.

All randomness comes from an explicit ``torch.Generator`` so that training is reproducible for a seed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _rand(g: torch.Generator, n: int = 1) -> torch.Tensor:
    return torch.rand(n, generator=g)


def flip_rot(x: torch.Tensor, g: torch.Generator, y: torch.Tensor | None = None):
    """Apply the same random flip / 90-degree rotation to each sample of ``x`` (N,C,H,W) and ``y``.

    Square inputs keep their shape; non-square inputs get only flips and 180-degree rotations.
    """
    xs, ys = [], []
    square = x.shape[-1] == x.shape[-2]
    for i in range(x.shape[0]):
        xi = x[i]
        yi = None if y is None else y[i]
        r = _rand(g, 3)
        if r[0] < 0.5:
            xi = xi.flip(-1)
            yi = None if yi is None else yi.flip(-1)
        if r[1] < 0.5:
            xi = xi.flip(-2)
            yi = None if yi is None else yi.flip(-2)
        k = int(r[2] * 4) if square else 2 * int(r[2] * 2)
        if k:
            xi = torch.rot90(xi, k, (-2, -1))
            yi = None if yi is None else torch.rot90(yi, k, (-2, -1))
        xs.append(xi)
        ys.append(yi)
    xo = torch.stack(xs)
    return (xo, None) if y is None else (xo, torch.stack(ys))


def scale_jitter(x: torch.Tensor, g: torch.Generator, low: float = 0.9, high: float = 1.1) -> torch.Tensor:
    """Zoom each sample by a factor in [low, high], then centre-crop or reflect-pad back to its size."""
    n, c, h, w = x.shape
    out = torch.empty_like(x)
    for i in range(n):
        s = float(low + (high - low) * _rand(g)[0])
        nh, nw = max(2, round(h * s)), max(2, round(w * s))
        z = F.interpolate(x[i:i + 1], size=(nh, nw), mode="bilinear", align_corners=False)
        if nh >= h:
            t, l = (nh - h) // 2, (nw - w) // 2
            z = z[..., t:t + h, l:l + w]
        else:
            ph, pw = h - nh, w - nw
            z = F.pad(z, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="reflect")
        out[i] = z[0]
    return out


def intensity_jitter(x: torch.Tensor, g: torch.Generator, gain: float = 0.1, offset: float = 0.05) -> torch.Tensor:
    """Per-sample ``x * a + b`` with a in [1-gain, 1+gain] and b in [-offset, offset]."""
    n = x.shape[0]
    a = 1 + gain * (2 * torch.rand(n, generator=g) - 1)
    b = offset * (2 * torch.rand(n, generator=g) - 1)
    return x * a.view(n, 1, 1, 1).to(x) + b.view(n, 1, 1, 1).to(x)


def augment_classifier_batch(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """The classifier's augmentation: flips/rotations, mild zoom (0.9-1.1) and intensity jitter."""
    x, _ = flip_rot(x, g)
    x = scale_jitter(x, g)
    return intensity_jitter(x, g)


def augment_segmentation_batch(x: torch.Tensor, y: torch.Tensor, g: torch.Generator):
    """The U-Net's augmentation: the same flip/rotation on image and mask, intensity jitter on the image."""
    x, y = flip_rot(x, g, y)
    return intensity_jitter(x, g), y
