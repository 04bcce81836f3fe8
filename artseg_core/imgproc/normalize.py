"""The intensity normalisations of ArtSeg: every image is scaled to [0, 1] by :func:`normalize` (or its two halves
:func:`normalize_range` and :func:`apply_normalization`, used by tiled prediction) before a network sees it.

Two methods (a model's profile names its own, ``Profile.normalization``):

``percentile``
    The 1st percentile maps to 0 and the 99.8th to 1. The paper's route, every model file written before this
    setting existed, and the quality scores use it.
``quartile``
    Tukey's fences (Tukey, *Exploratory Data Analysis*, 1977): ``q25 - 2.5 IQR`` maps to 0 and ``q75 + 2.5 IQR``
    to 1 (IQR = q75 - q25). The default route's networks use it. A dark artifact that covers more than 1 % of a
    field becomes that field's 1st percentile, so under ``percentile`` every other pixel of an artifact field is
    brighter than the same pixel of a clean field. On the real-background bench plate (seed 0; background pixels of
    its training fields, artifact fields against clean fields of the same image folder) the normalised median moved
    from 0.44 to 0.49 (yeast), 0.47 to 0.54 (sephace) and 0.32 to 0.41 (wound healing), the 5th percentile from
    0.21 to 0.29, 0.27 to 0.39 and 0.14 to 0.26. Networks trained on image labels learn that shift as artifact
    evidence and mark cells. Under ``quartile`` the medians stay within 0.01 and the 5th percentiles within 0.02.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["normalize", "normalize_range", "apply_normalization", "NORMALIZE_SUBSAMPLE_PIXELS", "NORMALIZATIONS",
           "QUARTILE_FENCE"]

#: Above this many pixels :func:`normalize` estimates the percentiles on a strided subsample.
NORMALIZE_SUBSAMPLE_PIXELS = 4_000_000
#: The normalisation methods (see the module docstring).
NORMALIZATIONS = ("percentile", "quartile")
#: ``quartile``: the range is [q25 - QUARTILE_FENCE * IQR, q75 + QUARTILE_FENCE * IQR].
QUARTILE_FENCE = 2.5


def normalize(image: np.ndarray, pmin: float = 1.0, pmax: float = 99.8, clip: bool = True,
              eps: float = 1e-6, method: str = "percentile") -> np.ndarray:
    """Scale an image to [0, 1]: by default the ``pmin`` percentile maps to 0 and the ``pmax`` percentile to 1.

    Parameters
    ----------
    image : numpy.ndarray
        Any shape and real dtype (bool is treated as 0/1). Must be finite (:func:`read_image` guarantees it).
    pmin, pmax : float
        Percentiles (0..100, ``pmin < pmax``) of the ``percentile`` method.
    clip : bool
        Clip the result to [0, 1].
    eps : float
        Added to the denominator ``hi - lo`` (``quartile``: to the IQR), so a constant image maps to 0 rather
        than dividing by zero.
    method : {"percentile", "quartile"}
        See the module docstring; a model's own is ``model.profile.normalization``.

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
    return apply_normalization(a, *normalize_range(a, pmin, pmax, eps, method), clip=clip)


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
                    eps: float = 1e-6, method: str = "percentile") -> tuple[float, float]:
    """Offset and scale of :func:`normalize`; the image must not be empty.

    ``percentile``: ``(lo, 1 / (hi - lo + eps))``, lo/hi the ``pmin``/``pmax`` percentiles. ``quartile``: with
    ``f = QUARTILE_FENCE`` and ``d = IQR + eps``, ``(q25 - f d, 1 / ((2 f + 1) d))``, which is bioimage.io's
    ``scale_range`` (percentiles 25 and 75, eps) followed by ``scale_linear`` (gain ``1 / (2 f + 1)``, offset
    ``f / (2 f + 1)``). A field whose quartiles are equal (more than half of its pixels one value) falls back to
    ``percentile``. Same subsample as :func:`normalize`.
    """
    if method not in NORMALIZATIONS:
        raise ValueError(f"unknown normalisation {method!r}; expected one of {', '.join(NORMALIZATIONS)}")
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
    if method == "quartile":
        q25, q75 = (float(v) for v in np.percentile(flat, [25, 75]))
        if q75 > q25:
            d = q75 - q25 + eps
            return q25 - QUARTILE_FENCE * d, 1.0 / ((2 * QUARTILE_FENCE + 1) * d)
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


