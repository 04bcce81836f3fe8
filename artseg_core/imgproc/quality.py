"""Per-image quality (QC) scores, thresholds learned from clean images, and flags.

Scores (:func:`quality_scores`)
-------------------------------
``focus`` (higher = sharper)
    Ratio of fine-detail to coarse-structure contrast, measured robustly. The image is block-averaged 2x2
    and normalised with :func:`artseg_core.imgproc.normalize.normalize` (its clipping at the 1st/99.8th percentiles also
    caps very dark specks). Two band-pass images are formed: fine = G(1) - G(2) on the half-resolution
    image, coarse = G(2) - G(8) on a further 2x2-averaged (quarter-resolution) image, G(s) a Gaussian of
    s pixels at that resolution, i.e. fine detail around 2-4 px and structure around 8-32 px of the original.
    Defocus moves contrast from the fine band into the coarse band (blurred edges, halos). In 64 x 64 px
    tiles (original pixels) the MEDIAN of |fine| and of |coarse| are taken (a few dust specks or hot pixels
    in a tile do not move a median); the score is the median of the per-tile ratios over the tiles whose
    coarse contrast is in the upper half (tiles with structure, not empty background). The score is
    independent of brightness and contrast (gain/offset). When more than 0.1 % of the pixels are saturated
    the image is first clipped at the 99.8th percentile of the unsaturated pixels, so that a saturated
    area does not pass for a strong coarse structure. On the sephaCe z-stacks it falls from 0.41-0.55 in
    focus to 0.19-0.25 at +/-10 um and 0.085-0.11 at +/-25 um (both fields, measured here); the order
    holds with 1000-3000 synthetic dark dust specks added to every plane (tests/test_quality.py).
``illumination`` (higher = more uneven)
    Relative range ``(max - min) / median`` of a smooth background surface: the half-resolution image is
    cut into a grid of about 24 blocks along its long side, each block's median is taken, and a 2nd-order
    polynomial surface is fitted to the grid robustly (blocks with residuals beyond 2.5 robust SD, such as
    cell clumps, stained cells or debris, are dropped and the fit repeated). Vignetting and gradients raise
    the score (synthetic 30 % vignetting: about 0.3); dark or bright objects do not (a flat field covered
    with dark blocks scores about 0.0002, where a plain block-range score gave 0.3). Local shadows that
    are not smooth (a small corner wedge) are left to the artifact model. It reads raw intensities, so it
    assumes that 0 means black (true for raw camera data; a large camera offset lowers the score).
``saturation`` (fraction in [0, 1])
    Fraction of pixels at the saturation level: the dtype maximum for integer images (for uint16 the
    smallest 2**k - 1, k = 8..16, that is >= the image maximum, so 12-bit cameras saved as 16-bit are
    caught at 4095), the image maximum for float images.

Thresholds (:func:`fit_quality_thresholds`) are learned from CLEAN training images with median and MAD:
``focus_min = exp(median(log f) - k * s)``, ``illumination_max = median + k * s``,
``saturation_max = max(median + k * s, 0.001)``; ``s = max(1.4826 * MAD, floor)`` with floors 0.1 (log
focus, i.e. 10 %), 0.02 (illumination) and 0 (saturation), ``k = 3`` by default. The floors keep a small or
very uniform training set from producing thresholds so tight that ordinary clean images get flagged.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping

import numpy as np
from scipy import ndimage as ndi

from artseg_core.imgproc.normalize import normalize

__all__ = ["quality_scores", "focus_score", "illumination_score", "saturation_score",
           "fit_quality_thresholds", "quality_flags", "QUALITY_KEYS", "FLAG_KEYS"]

QUALITY_KEYS = ("focus", "illumination", "saturation")
FLAG_KEYS = ("defocus", "bad_illumination", "saturated")

_MIN_SIDE = 16


def _check(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim != 2:
        raise ValueError(f"quality scores need a 2-D image, got shape {a.shape}")
    if min(a.shape) < _MIN_SIDE:
        raise ValueError(f"quality scores need an image of at least {_MIN_SIDE} x {_MIN_SIDE} px, got {a.shape}")
    if a.dtype.kind == "b":
        a = a.astype(np.uint8)
    if a.dtype.kind not in "uif":
        raise ValueError(f"quality scores need a real-valued image, got dtype {a.dtype}")
    return a


def _half(a: np.ndarray) -> np.ndarray:
    """2x2 block mean (float32), odd last row/column dropped."""
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    a = a[:h, :w]
    if a.dtype != np.float32:
        a = a.astype(np.float32)
    return 0.25 * (a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2])


def _tile_median(x: np.ndarray, t: int) -> np.ndarray:
    h, w = x.shape[0] // t * t, x.shape[1] // t * t
    v = x[:h, :w].reshape(h // t, t, w // t, t).swapaxes(1, 2).reshape(h // t, w // t, t * t)
    return np.median(v, axis=2)


def focus_score(image: np.ndarray, *, _half_image: np.ndarray | None = None) -> float:
    """Sharpness score (higher = sharper); see the module docstring for the definition."""
    if _half_image is None:
        a = _check(image)
        a = _half(_desaturate(a, saturation_score(a)))
    else:
        a = _half_image
    a = normalize(a)
    q = _half(a)
    fine = np.abs(ndi.gaussian_filter(a, 1.0, truncate=3.0) - ndi.gaussian_filter(a, 2.0, truncate=3.0))
    coarse = np.abs(ndi.gaussian_filter(q, 2.0, truncate=3.0) - ndi.gaussian_filter(q, 8.0, truncate=3.0))
    # 64 px tiles of the original image = 32 px at half and 16 px at quarter resolution;
    # small images get smaller tiles so there are at least 2 x 2 of them.
    tq = int(max(2, min(16, min(q.shape) // 2)))
    tf = 2 * tq
    mf = _tile_median(fine, tf)
    mc = _tile_median(coarse, tq)
    n0, n1 = min(mf.shape[0], mc.shape[0]), min(mf.shape[1], mc.shape[1])
    mf, mc = mf[:n0, :n1].ravel(), mc[:n0, :n1].ravel()
    sel = mc >= np.median(mc)
    if not np.any(mc[sel] > 0):
        return 0.0  # no structure at all (constant image)
    ratio = mf[sel] / np.maximum(mc[sel], 1e-6)
    return float(np.median(ratio))


def _robust_surface(bg: np.ndarray, n_iter: int = 6, cut: float = 2.5) -> np.ndarray:
    """Fit a 2nd-order polynomial surface to a grid, rejecting outlier blocks iteratively (|r| > cut * MAD SD)."""
    ny, nx = bg.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    y = (yy.ravel() + 0.5) / ny * 2.0 - 1.0
    x = (xx.ravel() + 0.5) / nx * 2.0 - 1.0
    cols = [np.ones_like(x), x, y]
    if bg.size >= 12:
        cols += [x * x, x * y, y * y]
    design = np.stack(cols, axis=1)
    z = bg.ravel().astype(np.float64)
    keep = np.ones(z.size, bool)
    coef = np.zeros(design.shape[1])
    for _ in range(n_iter):
        coef = np.linalg.lstsq(design[keep], z[keep], rcond=None)[0]
        r = z - design @ coef
        rk = r[keep]
        sd = 1.4826 * float(np.median(np.abs(rk - np.median(rk))))
        if sd == 0:
            break
        new = np.abs(r) <= cut * sd
        if new.sum() < 2 * design.shape[1] or np.array_equal(new, keep):
            break
        keep = new
    return (design @ coef).reshape(bg.shape)


def illumination_score(image: np.ndarray, *, _half_image: np.ndarray | None = None) -> float:
    """Illumination unevenness (higher = worse): range / median of a smooth background surface.

    See the module docstring. Returns 0.0 for a constant image.
    """
    a = _half(_check(image)) if _half_image is None else _half_image
    n_blocks = 24
    t = max(2, int(math.ceil(max(a.shape) / n_blocks)))
    if min(a.shape) // t < 3:
        t = max(1, min(a.shape) // 3)
    grid = _tile_median(a, t)
    if float(np.ptp(grid)) == 0.0:
        return 0.0
    surf = _robust_surface(grid)
    med = abs(float(np.median(surf)))
    rng = float(surf.max() - surf.min())
    if med == 0:
        return 0.0 if rng == 0 else float("inf")
    return rng / med


def _saturation_level(a: np.ndarray):
    if a.dtype.kind == "f":
        return a.max()
    if a.dtype == np.uint16:
        mx = int(a.max())
        return next(2 ** k - 1 for k in range(8, 17) if 2 ** k - 1 >= mx)
    return np.iinfo(a.dtype).max


def saturation_score(image: np.ndarray) -> float:
    """Fraction of pixels at the saturation level (see the module docstring)."""
    a = _check(image)
    return float(np.count_nonzero(a == _saturation_level(a))) / a.size


def _desaturate(a: np.ndarray, saturation: float) -> np.ndarray:
    """Clip a saturated image at the 99.8th percentile of its unsaturated pixels (for the focus score).

    A large saturated area would otherwise add a huge step edge whose coarse-band response swamps the
    focus score; saturation is reported by its own score.
    """
    if saturation <= 1e-3:
        return a
    level = _saturation_level(a)
    rest = a[a != level]
    if rest.size == 0:
        return a
    top = np.percentile(rest[:: max(1, rest.size // 1_000_000)], 99.8)
    return np.minimum(a, np.asarray(top).astype(a.dtype))


def quality_scores(image: np.ndarray) -> dict:
    """QC scores of one raw image.

    Parameters
    ----------
    image : numpy.ndarray
        2-D raw image (any real dtype, at least 16 x 16 px), as returned by :func:`artseg_core.io.images.read_image`.

    Returns
    -------
    dict
        ``focus`` (higher = sharper), ``illumination`` (higher = more uneven), ``saturation`` (fraction of
        saturated pixels); floats. About 20-30 ms for a 1080 x 1080 image on one CPU core.
    """
    a = _check(image)
    half = _half(a)
    sat = saturation_score(a)
    d = _desaturate(a, sat)
    focus = focus_score(a, _half_image=half if d is a else _half(d))
    return {"focus": focus, "illumination": illumination_score(a, _half_image=half), "saturation": sat}


def _median_mad(v: np.ndarray) -> tuple[float, float]:
    med = float(np.median(v))
    return med, 1.4826 * float(np.median(np.abs(v - med)))


def fit_quality_thresholds(score_dicts: Iterable[Mapping], k: float = 3.0) -> dict:
    """Learn QC thresholds from the scores of CLEAN images (median +/- k robust SD; see the module docstring).

    Parameters
    ----------
    score_dicts : iterable of dict
        :func:`quality_scores` results of clean (artifact-free, well-acquired) training images.
    k : float
        Number of robust standard deviations (1.4826 * MAD) from the median.

    Returns
    -------
    dict
        ``focus_min, illumination_max, saturation_max`` (floats), ``k``, ``n_images`` and ``method``;
        JSON-serialisable, for the model file.
    """
    rows = list(score_dicts)
    if not rows:
        raise ValueError("fit_quality_thresholds needs the scores of at least one clean image")
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    f = np.array([r["focus"] for r in rows], np.float64)
    il = np.array([r["illumination"] for r in rows], np.float64)
    sa = np.array([r["saturation"] for r in rows], np.float64)
    for name, v in (("focus", f), ("illumination", il), ("saturation", sa)):
        if not np.isfinite(v).all():
            raise ValueError(f"non-finite {name} score among the clean images")
    logf = np.log(np.maximum(f, 1e-9))
    m, s = _median_mad(logf)
    focus_min = math.exp(m - k * max(s, 0.1))
    m, s = _median_mad(il)
    illumination_max = m + k * max(s, 0.02)
    m, s = _median_mad(sa)
    saturation_max = max(m + k * s, 0.001)
    return {"focus_min": float(focus_min), "illumination_max": float(illumination_max),
            "saturation_max": float(saturation_max), "k": float(k), "n_images": len(rows),
            "method": "median +/- k * max(1.4826 MAD, floor); focus in log space"}


def quality_flags(scores: Mapping, thresholds: Mapping | None) -> dict:
    """Flags from scores and thresholds.

    Returns
    -------
    dict
        ``defocus`` (focus < focus_min), ``bad_illumination`` (illumination > illumination_max),
        ``saturated`` (saturation > saturation_max); bools. A missing/None threshold (or ``thresholds=None``)
        never flags.
    """
    th = thresholds or {}

    def _cmp(key, tkey, below):
        t = th.get(tkey)
        v = scores.get(key)
        if t is None or v is None:
            return False
        return bool(v < t) if below else bool(v > t)

    return {"defocus": _cmp("focus", "focus_min", True),
            "bad_illumination": _cmp("illumination", "illumination_max", False),
            "saturated": _cmp("saturation", "saturation_max", False)}
