"""Synthetic artifacts pasted into clean training crops, with exact masks: extra supervision for the U-Net.

A clean field teaches the U-Net only "nothing here". With pasting, some crops of clean fields also carry an
artifact drawn here, on the field's own real texture, with a mask that is exact by construction. The U-Net then
sees the cells of the plate as negatives right beside positives whose outline it must follow, which pseudo-masks
from image labels cannot give. The idea is that of synthetic anomalies for anomaly segmentation (CutPaste, Li et
al., CVPR 2021; DRAEM, Zavrtanik et al., ICCV 2021); the shapes here are generic and deliberately not those of
:mod:`artseg_core.data.phantoms` (whose fields are a test plate):

``stroke``  a thin random-walk curve, darker or brighter than the field (fibres, scratches, hairs);
``blob``    an irregular star-shaped region, opaque with its own texture, or a dark rim around a lighter inside
            (debris, clumps, dust, bubbles);
``blur``    an irregular region blurred in place, centred on structure (out-of-focus patches, smears);
``shade``   a large, soft-edged region darker or lighter than the rest (stains, uneven illumination).

Region sizes are capped by the crop (a blob's radius at 0.3 of its side, a blurred or shaded region's at 0.45), so
that a crop is never all artifact.

All randomness comes from the ``numpy.random.Generator`` given, so a seed reproduces a training run.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage as ndi

KINDS = ("stroke", "blob", "blur", "shade")


def _range(x: np.ndarray) -> tuple[float, float]:
    """(1st percentile, 1st-99th percentile range) of a crop: the intensity scale drawn artifacts are set on."""
    lo, hi = np.percentile(x, (1, 99))
    return float(lo), float(max(hi - lo, 1e-3))


def _star_region(shape, centre, radius: float, rng: np.random.Generator, roughness: float = 0.25) -> np.ndarray:
    """Bool region whose boundary radius varies with angle (a few random harmonics around ``radius``)."""
    yy, xx = np.indices(shape, dtype=np.float32)
    dy, dx = yy - centre[0], xx - centre[1]
    theta, r = np.arctan2(dy, dx), np.hypot(dy, dx)
    aspect = rng.uniform(0.5, 1.0)
    phi = rng.uniform(0, np.pi)
    # elongation: radius shrinks across the long axis
    rad = radius * (aspect + (1 - aspect) * np.abs(np.cos(theta - phi)))
    for k in range(2, 6):
        rad = rad * (1 + roughness / k * rng.uniform(-1, 1) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)))
    return r <= np.maximum(rad, 1.0)


def _stroke(x, rng):
    h, w = x.shape
    lo, rng_i = _range(x)
    n = int(rng.integers(40, 260))
    pos = np.array([rng.uniform(0, h), rng.uniform(0, w)])
    heading, turn = rng.uniform(0, 2 * np.pi), rng.uniform(0.02, 0.15)
    line = np.zeros(x.shape, bool)
    for _ in range(n):
        heading += rng.normal(0, turn)
        pos = pos + np.array([np.sin(heading), np.cos(heading)])
        r, c = int(pos[0]), int(pos[1])
        if 0 <= r < h and 0 <= c < w:
            line[r, c] = True
    if not line.any():
        return x, line
    half = rng.uniform(0.7, 3.0)
    alpha = np.clip(half + 0.5 - ndi.distance_transform_edt(~line), 0, 1).astype(np.float32)
    level = lo - rng.uniform(0.05, 0.3) * rng_i if rng.random() < 0.8 else lo + rng.uniform(1.0, 1.2) * rng_i
    a = rng.uniform(0.35, 0.9)
    return x + a * alpha * (level - x), alpha >= 0.5


def _blob(x, rng):
    h, w = x.shape
    lo, rng_i = _range(x)
    radius = float(np.exp(rng.uniform(np.log(4), np.log(max(min(45.0, 0.3 * min(h, w)), 5.0)))))
    centre = (rng.uniform(0, h), rng.uniform(0, w))
    region = _star_region(x.shape, centre, radius, rng, roughness=rng.uniform(0.1, 0.6))
    if not region.any():
        return x, region
    soft = np.clip(ndi.gaussian_filter(region.astype(np.float32), rng.uniform(0.5, 1.5)) * 2 - 0.5, 0, 1)
    if rng.random() < 0.35 and radius > 8:  # rim: dark ring, lighter inside (bubble, droplet)
        inner = ndi.binary_erosion(region, iterations=int(rng.integers(2, 5)))
        rim = soft * (1 - inner)
        out = x + rng.uniform(0.5, 0.9) * rim * (lo - 0.1 * rng_i - x)
        out = out + inner * rng.uniform(0.05, 0.3) * rng_i
        return out, region
    texture = ndi.gaussian_filter(rng.standard_normal(x.shape).astype(np.float32), rng.uniform(0.8, 3.0))
    texture *= rng.uniform(0.1, 0.4) * rng_i / (texture.std() + 1e-6)
    level = lo - rng.uniform(0.0, 0.3) * rng_i if rng.random() < 0.8 else lo + rng.uniform(0.9, 1.2) * rng_i
    a = rng.uniform(0.4, 0.95)
    return x + a * soft * (level + texture - x), region


def _blur(x, rng):
    h, w = x.shape
    _, rng_i = _range(x)
    # centre on structure: blurring a flat background changes nothing that could be masked
    grad = ndi.gaussian_gradient_magnitude(x, 2)
    busy = np.argsort(grad.ravel())[-max(1, grad.size // 20):]  # the 5 % of pixels with most structure
    cy, cx = np.unravel_index(busy[int(rng.integers(len(busy)))], x.shape)
    radius = rng.uniform(0.25, 1.0) * min(110.0, 0.45 * min(h, w))
    region = _star_region(x.shape, (cy, cx), radius, rng, roughness=0.3)
    soft = np.clip(ndi.gaussian_filter(region.astype(np.float32), 3) * 2 - 0.5, 0, 1)
    blurred = ndi.gaussian_filter(x, rng.uniform(2.5, 7.0))
    out = x * (1 - soft) + blurred * soft
    return out + soft * rng.uniform(-0.1, 0.1) * rng_i, region


def _shade(x, rng):
    h, w = x.shape
    _, rng_i = _range(x)
    radius = rng.uniform(0.25, 1.0) * min(140.0, 0.45 * min(h, w))
    region = _star_region(x.shape, (rng.uniform(0, h), rng.uniform(0, w)), radius, rng, roughness=0.4)
    if not region.any():
        return x, region
    soft = ndi.gaussian_filter(region.astype(np.float32), radius / 6)
    soft = soft / max(float(soft.max()), 1e-6)
    delta = rng.uniform(0.25, 0.6) * rng_i * (-1 if rng.random() < 0.75 else 1)
    return x + soft * delta, soft >= 0.5


_MAKERS = {"stroke": _stroke, "blob": _blob, "blur": _blur, "shade": _shade}


def paste_artifacts(image: np.ndarray, rng: np.random.Generator, n: int | None = None,
                    kinds=KINDS) -> tuple[np.ndarray, np.ndarray]:
    """Paste ``n`` (default 1-3) synthetic artifacts into a normalised 2-D crop.

    Parameters
    ----------
    image : ndarray (H, W)
        A normalised crop of a clean field.
    rng : numpy.random.Generator
    n : int, optional
        Number of artifacts; default a random 1, 2 or 3.
    kinds : sequence of str
        Drawn from uniformly (see :data:`KINDS`).

    Returns
    -------
    image : ndarray (H, W) float32
        The crop with the artifacts drawn in.
    mask : ndarray (H, W) bool
        Their exact union.
    """
    x = np.asarray(image, np.float32)
    if x.ndim != 2:
        raise ValueError(f"paste_artifacts expects a 2-D crop, got shape {x.shape}")
    unknown = [k for k in kinds if k not in _MAKERS]
    if unknown or not len(kinds):
        raise ValueError(f"unknown paste kinds {unknown}; choose from {KINDS}")
    mask = np.zeros(x.shape, bool)
    for _ in range(int(rng.integers(1, 4)) if n is None else int(n)):
        x, m = _MAKERS[kinds[int(rng.integers(len(kinds)))]](x, rng)
        mask |= m
    return x.astype(np.float32), mask


def paste_into_batch(x: torch.Tensor, chosen, fraction: float, g: torch.Generator) -> dict[int, np.ndarray]:
    """In place: each batch item ``i`` with ``chosen[i]`` gets, with probability ``fraction``, synthetic artifacts
    drawn into ``x[i, 0]`` (``x`` is (N, 1, H, W) float32). The draws are seeded from ``g``, so a training run's
    generator reproduces them. Returns ``{i: mask}`` for the items whose mask is not empty."""
    rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
    drawn = {}
    for i in np.flatnonzero(np.asarray(chosen, bool)):
        if rng.random() < fraction:
            img, m = paste_artifacts(x[i, 0].numpy(), rng)
            x[i, 0] = torch.from_numpy(img)
            if m.any():
                drawn[int(i)] = m
    return drawn


__all__ = ["paste_artifacts", "paste_into_batch", "KINDS"]
