"""The one percentile normalisation every part of ArtSeg uses.

The classifier, the U-Net, Score-CAM and the quality scores all see images scaled by :func:`normalize`
(or its two halves :func:`normalize_range` and :func:`apply_normalization`, used by tiled prediction).
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["normalize", "normalize_range", "apply_normalization", "NORMALIZE_SUBSAMPLE_PIXELS"]

#: Above this many pixels :func:`normalize` estimates the percentiles on a strided subsample.
NORMALIZE_SUBSAMPLE_PIXELS = 4_000_000


def normalize(image: np.ndarray, pmin: float = 1.0, pmax: float = 99.8, clip: bool = True,
              eps: float = 1e-6) -> np.ndarray:
    """Percentile normalisation: the ``pmin`` percentile maps to 0 and the ``pmax`` percentile to 1.

    This is the one normalisation used everywhere (classifier, U-Net, Score-CAM input, quality scores).

    Parameters
    ----------
    image : numpy.ndarray
        Any shape and real dtype (bool is treated as 0/1). Must be finite (:func:`read_image` guarantees it).
    pmin, pmax : float
        Percentiles (0..100, ``pmin < pmax``).
    clip : bool
        Clip the result to [0, 1].
    eps : float
        Added to the denominator ``hi - lo``, so a constant image maps to 0 rather than dividing by zero.

    Returns
    -------
    numpy.ndarray
        float32, same shape.

    Notes
    -----
    For images with more than ``NORMALIZE_SUBSAMPLE_PIXELS`` (4 Mpx) the percentiles are computed on a
    regular strided subsample of about 4 Mpx (every s-th row and column of a 2-D image, every k-th element
    otherwise). On natural images this moves the percentiles by far less than one grey level while keeping
    the cost bounded; images up to 4 Mpx use every pixel, so results are exact there.
    ``normalize(a) == apply_normalization(a, *normalize_range(a))`` exactly, also for any part of ``a``:
    large images can be normalised piece by piece (tiled prediction does).
    """
    _check_percentiles(pmin, pmax)
    a = _normalize_input(image)
    if a.size == 0:
        return np.zeros(a.shape, np.float32)
    return apply_normalization(a, *normalize_range(a, pmin, pmax, eps), clip=clip)


def _check_percentiles(pmin: float, pmax: float) -> None:
    if not 0.0 <= pmin < pmax <= 100.0:
        raise ValueError(f"need 0 <= pmin < pmax <= 100, got pmin={pmin}, pmax={pmax}")


def _normalize_input(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image)
    if a.dtype.kind == "b":
        a = a.astype(np.uint8)
    if a.dtype.kind not in "uif":
        raise ValueError(f"normalize needs a real-valued image, got dtype {a.dtype}")
    return a


def normalize_range(image: np.ndarray, pmin: float = 1.0, pmax: float = 99.8,
                    eps: float = 1e-6) -> tuple[float, float]:
    """Offset and scale of :func:`normalize`: ``(lo, 1 / (hi - lo + eps))``, lo/hi the percentiles.

    Same percentiles (and subsample) as :func:`normalize`; the image must not be empty.
    """
    _check_percentiles(pmin, pmax)
    a = _normalize_input(image)
    if a.size == 0:
        raise ValueError("normalize_range needs a non-empty image")
    sample = a
    if a.size > NORMALIZE_SUBSAMPLE_PIXELS:
        if a.ndim >= 2:
            s = int(math.ceil(math.sqrt(a.size / NORMALIZE_SUBSAMPLE_PIXELS)))
            sample = a[..., ::s, ::s]
        else:
            sample = a.reshape(-1)[:: int(math.ceil(a.size / NORMALIZE_SUBSAMPLE_PIXELS))]
    flat = np.ascontiguousarray(sample).reshape(-1)
    lo, hi = np.percentile(flat, [pmin, pmax])
    lo, hi = float(lo), float(hi)
    return lo, 1.0 / (hi - lo + eps)


def apply_normalization(image: np.ndarray, lo: float, scale: float, clip: bool = True) -> np.ndarray:
    """``(image - lo) * scale`` as float32 (clipped to [0, 1]), computed exactly as :func:`normalize` does.

    Elementwise, so applying it to a tile of an image gives that tile of the whole normalised image.
    """
    a = _normalize_input(image)
    if a.dtype.kind in "ui" and a.dtype.itemsize <= 2 or a.dtype == np.float32 or a.dtype == np.float16:
        out = a.astype(np.float32)
        out -= np.float32(lo)
        out *= np.float32(scale)
    else:  # wide integers and float64: subtract in float64 so large offsets keep their precision
        out = ((a.astype(np.float64) - lo) * scale).astype(np.float32)
    if clip:
        np.clip(out, 0.0, 1.0, out=out)
    return out


