"""Fill artifact pixels so downstream analysis sees plausible background instead of debris.

Two methods:

``"median"``
    Every artifact object (8-connected component of the mask) is filled with the median of the
    unmasked pixels in a ring of ``ring`` pixels around it (chessboard distance), so a fill follows
    local brightness (vignetting, a nearby cell). Objects whose ring holds fewer than
    ``_MIN_RING`` unmasked pixels (e.g. an object covering almost the whole field) fall back to the
    median of all unmasked pixels.
``"background"``
    A 2nd-order polynomial ``a + b x + c y + d x^2 + e x y + f y^2`` is fitted by least squares to
    unmasked pixels (a regular subsample of at most ``max_samples``), with two rounds of 3-sigma
    clipping so that cells do not pull the surface; the noise level is the MAD of the residuals
    (times 1.4826, i.e. a robust standard deviation). Artifact pixels get the surface plus
    Gaussian noise of that standard deviation (seeded).

In both, unmasked pixels are returned unchanged (bit for bit), integer results are rounded and
clipped to the dtype range, and the result has the input dtype. Work is done per object or per
row block, so no full-size float64 or coordinate arrays are created.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import ndimage as ndi

__all__ = ["fill_artifacts", "fit_background", "eval_background"]

_MIN_RING = 8
_EIGHT = np.ones((3, 3), dtype=bool)
_ROW_BLOCK_PIXELS = 1 << 22


def _check(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.ndim != 2:
        raise ValueError(f"fill_artifacts expects a 2-D image, got shape {image.shape}")
    if image.dtype == bool or image.dtype.kind not in "uif":
        raise ValueError(f"fill_artifacts needs a real-valued image, got dtype {image.dtype}")
    if mask.shape != image.shape:
        raise ValueError(f"mask has shape {mask.shape}, image {image.shape}")
    return image, mask.astype(bool, copy=False)


def _sample_stride(shape: tuple[int, int], max_samples: int) -> int:
    return max(1, int(math.ceil(math.sqrt(shape[0] * shape[1] / max(1, max_samples)))))


def _cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Round and clip to an integer dtype's range, or cast to a float dtype."""
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def _norm_coords(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates scaled to about [-1, 1] (conditioning of the least-squares fit)."""
    hy = max(shape[0] - 1, 1) / 2.0
    hx = max(shape[1] - 1, 1) / 2.0
    return (np.asarray(cols, np.float64) - hx) / hx, (np.asarray(rows, np.float64) - hy) / hy


def _design(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=1)


def eval_background(coef: np.ndarray, rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Evaluate a background fitted by :func:`fit_background` at pixel coordinates.

    Parameters
    ----------
    coef : ndarray
        The 6 coefficients ``a, b, c, d, e, f`` in normalised coordinates (``x`` from columns,
        ``y`` from rows, both scaled to [-1, 1] over the image ``shape``).
    rows, cols : ndarray
        Pixel coordinates.
    shape : tuple of int
        Image shape the coefficients refer to.

    Returns
    -------
    ndarray of float64
    """
    x, y = _norm_coords(rows, cols, shape)
    return _design(x, y) @ np.asarray(coef, np.float64)


def fit_background(image: np.ndarray, mask: np.ndarray | None = None, max_samples: int = 200_000,
                   clip_rounds: int = 2) -> tuple[np.ndarray, float]:
    """Fit a 2nd-order polynomial background to the unmasked pixels of an image.

    Parameters
    ----------
    image : ndarray
        2-D image.
    mask : ndarray of bool, optional
        Pixels to ignore (artifacts).
    max_samples : int
        The fit uses a regular grid subsample of at most about this many pixels.
    clip_rounds : int
        Rounds of refitting without pixels more than 3 robust standard deviations off.

    Returns
    -------
    coef : ndarray
        6 coefficients for :func:`eval_background`.
    sigma : float
        Robust standard deviation (1.4826 x MAD) of the residuals of the used pixels.

    Raises
    ------
    ValueError
        Fewer than 6 usable (unmasked, finite) pixels.
    """
    image = np.asarray(image)
    if mask is None:
        mask = np.zeros(image.shape, bool)
    image, mask = _check(image, mask)
    s = _sample_stride(image.shape, max_samples)
    sub = image[::s, ::s].astype(np.float64)
    ok = ~mask[::s, ::s] & np.isfinite(sub)
    rows, cols = np.nonzero(ok)
    if rows.size < 6:  # the subsample may miss a few free pixels: retry on all of them
        ok_full = ~mask & np.isfinite(image)
        rows, cols = np.nonzero(ok_full)
        if rows.size < 6:
            raise ValueError(f"only {rows.size} unmasked pixels: cannot fit a background")
        vals = image[rows, cols].astype(np.float64)
    else:
        vals = sub[rows, cols]
        rows, cols = rows * s, cols * s
    x, y = _norm_coords(rows, cols, image.shape)
    A = _design(x, y)
    keep = np.ones(vals.size, bool)
    coef = np.zeros(6)
    sigma = 0.0
    for it in range(clip_rounds + 1):
        coef = np.linalg.lstsq(A[keep], vals[keep], rcond=None)[0]
        resid = vals - A @ coef
        sigma = 1.4826 * float(np.median(np.abs(resid[keep] - np.median(resid[keep]))))
        if it == clip_rounds or sigma <= 0:
            break
        new = np.abs(resid) <= 3 * sigma
        if new.sum() < 6 or np.array_equal(new, keep):
            break
        keep = new
    return coef, sigma


def _fill_median(image: np.ndarray, mask: np.ndarray, out: np.ndarray, ring: int, max_samples: int) -> None:
    labels, n = ndi.label(mask, structure=_EIGHT)
    H, W = mask.shape
    global_median = None
    for idx, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        r0, r1 = max(sl[0].start - ring, 0), min(sl[0].stop + ring, H)
        c0, c1 = max(sl[1].start - ring, 0), min(sl[1].stop + ring, W)
        win = (slice(r0, r1), slice(c0, c1))
        obj = labels[win] == idx
        near = ndi.binary_dilation(obj, structure=_EIGHT, iterations=ring) & ~mask[win]
        vals = image[win][near]
        vals = vals[np.isfinite(vals)] if vals.dtype.kind == "f" else vals
        if vals.size >= _MIN_RING:
            fill = np.median(vals)
        else:
            if global_median is None:
                s = _sample_stride(mask.shape, max_samples)
                free = image[::s, ::s][~mask[::s, ::s]]
                if free.size == 0:
                    free = image[~mask]
                free = free[np.isfinite(free)] if free.dtype.kind == "f" else free
                global_median = np.median(free)
            fill = global_median
        out[win][obj] = _cast(np.asarray([fill], np.float64), out.dtype)[0]


def _fill_background(image: np.ndarray, mask: np.ndarray, out: np.ndarray, seed: int, max_samples: int) -> None:
    coef, sigma = fit_background(image, mask, max_samples=max_samples)
    rng = np.random.default_rng(seed)
    H, W = mask.shape
    rows_per_block = max(1, _ROW_BLOCK_PIXELS // max(W, 1))
    for a in range(0, H, rows_per_block):
        m = mask[a:a + rows_per_block]
        rr, cc = np.nonzero(m)
        if rr.size == 0:
            continue
        vals = eval_background(coef, rr + a, cc, (H, W))
        if sigma > 0:
            vals += rng.normal(0.0, sigma, size=vals.size)
        out[a:a + rows_per_block][rr, cc] = _cast(vals, out.dtype)


def fill_artifacts(image: np.ndarray, mask: np.ndarray, method: str = "median", seed: int = 0, ring: int = 5,
                   max_samples: int = 200_000) -> np.ndarray:
    """Replace artifact pixels with plausible background.

    Parameters
    ----------
    image : ndarray
        2-D image, any real dtype (raw, not normalised).
    mask : ndarray of bool
        Artifact pixels, same shape.
    method : {"median", "background"}
        See the module docstring: local ring median per object, or a robust quadratic
        background surface plus matched Gaussian noise.
    seed : int
        Seed of the noise (``"background"``); the result is deterministic for a given seed.
    ring : int
        Ring width in pixels around each object for ``"median"``.
    max_samples : int
        Subsample size for global estimates.

    Returns
    -------
    ndarray
        New image of the input dtype; pixels outside ``mask`` are unchanged. When the mask is
        empty the copy is unchanged; when it covers every pixel there is nothing to estimate a
        background from and the copy is returned unchanged with a ``RuntimeWarning``.
    """
    image, mask = _check(image, mask)
    if method not in ("median", "background"):
        raise ValueError(f"unknown fill method {method!r}; use 'median' or 'background'")
    if ring < 1:
        raise ValueError(f"ring must be >= 1 pixel, got {ring}")
    out = image.copy()
    if not mask.any():
        return out
    if mask.all():
        warnings.warn("the artifact mask covers the whole image: nothing to fill from, image left unchanged",
                      RuntimeWarning, stacklevel=2)
        return out
    if method == "median":
        _fill_median(image, mask, out, ring, max_samples)
    else:
        _fill_background(image, mask, out, seed, max_samples)
    return out
