"""From Score-CAM saliency to pseudo-masks: edge refinement, binarisation and threshold selection.

Score-CAM maps come from a layer with a stride of 32 pixels, so they are blurry: they say *where* an
artifact is, not where its border runs. ArtSeg sharpens them with the image's own edges: the saliency is
multiplied by a dilated Sobel edge map, which keeps saliency near intensity changes (artifact borders,
textured debris) and suppresses it over flat background, then the result is binarised.

All functions take and return plain numpy arrays.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

__all__ = ["DEFAULT_THRESHOLD", "DEFAULT_THRESHOLD_PLAIN", "CANDIDATE_THRESHOLDS", "default_threshold", "edge_map",
           "refine_saliency", "binarize", "select_threshold"]

#: Threshold for an edge-refined saliency map (``refine_saliency(..., use_edges=True)``, the default
#: pipeline) when no validation masks exist to choose one. Picked on phantoms and checked on real
#: Score-CAM maps: 24 fields from ``artseg_core.phantoms.make_field`` (256 x 256, two artifacts each, all
#: six kinds) with a stand-in for a perfectly placed Score-CAM (the true mask blurred by a Gaussian of 8 or
#: 16 px, or down- and up-sampled by 32 as a stride-32 layer would), refined with edges and swept with
#: :func:`select_threshold` (0.05 steps): the best mean IoU was at 0.10 in all three variants (0.64-0.74;
#: 0.5 gave 0.23-0.30). Exact Score-CAM maps of a ResNet18 on the disk images of ``bench/scorecam.py``
#: also peaked at 0.10 (IoU 0.54; 0.15 gave 0.44). Multiplying by an edge map lowers an artifact's flat
#: interior relative to its strongest edge, hence the low cut. ``select_threshold`` replaces it whenever
#: hand masks are given for validation images.
DEFAULT_THRESHOLD = 0.1

#: Threshold for a saliency map that was only resized and renormalised (``use_edges=False``): half of the
#: maximum, the usual parameter-free cut for a peak (as in a full width at half maximum). The same sweeps
#: put the best mean IoU at 0.40-0.45 on the phantoms (0.5 within 0.02) and at 0.60 on the disk images
#: (0.5 within 0.02).
DEFAULT_THRESHOLD_PLAIN = 0.5


def default_threshold(use_edges: bool = True) -> float:
    """The binarisation threshold to use without validation masks for maps refined with or without edges."""
    return DEFAULT_THRESHOLD if use_edges else DEFAULT_THRESHOLD_PLAIN


#: Thresholds swept by :func:`select_threshold` by default: 0.05, 0.10, ..., 0.95.
CANDIDATE_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))

_EDGE_PERCENTILE = 99.0  # edge strengths are scaled so that this percentile maps to 1


def _as_2d(a, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.float64)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _disk(radius: int) -> np.ndarray:
    r = int(radius)
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return (yy * yy + xx * xx) <= r * r


def edge_map(image: np.ndarray, dilation: int = 5, sigma: float = 1.0) -> np.ndarray:
    """Dilated Sobel edge strength of an image, scaled to [0, 1].

    Parameters
    ----------
    image : numpy.ndarray
        2-D image, any numeric dtype (raw or normalised).
    dilation : int
        Radius in pixels of the disk the edge map is grey-dilated with (0 = none). Widens thin edges
        into bands so that the refined saliency covers whole small objects and both sides of a border.
    sigma : float
        Gaussian pre-smoothing in pixels (0 = none), so that pixel noise does not read as edges.

    Returns
    -------
    numpy.ndarray
        float32 map of the image's shape. Gradient magnitudes are divided by their 99th percentile
        (robust to a few very strong edges or hot pixels) and clipped to [0, 1]; a flat image gives
        all zeros.

    Raises
    ------
    ValueError
        Not a finite 2-D numeric array, or a negative ``dilation``/``sigma``.
    """
    img = _as_2d(image, "image").astype(np.float64)
    if int(dilation) < 0 or int(dilation) != dilation:
        raise ValueError(f"dilation must be a non-negative integer, got {dilation}")
    if not np.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    if sigma > 0:
        img = ndi.gaussian_filter(img, float(sigma), mode="reflect")
    mag = np.hypot(ndi.sobel(img, axis=0, mode="reflect"), ndi.sobel(img, axis=1, mode="reflect"))
    if dilation > 0:
        mag = ndi.grey_dilation(mag, footprint=_disk(int(dilation)), mode="nearest")
    scale = float(np.percentile(mag, _EDGE_PERCENTILE))
    if scale <= 0:
        scale = float(mag.max())
    if scale <= 0:
        return np.zeros(img.shape, np.float32)
    return np.clip(mag / scale, 0.0, 1.0).astype(np.float32)


def _resize_bilinear(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from skimage.transform import resize

    shrink = shape[0] < a.shape[0] or shape[1] < a.shape[1]
    return resize(a.astype(np.float64), shape, order=1, mode="edge", anti_aliasing=shrink, preserve_range=True)


def _minmax(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, np.float32)
    return ((a - lo) / (hi - lo)).astype(np.float32)


def refine_saliency(saliency: np.ndarray, image: np.ndarray, use_edges: bool = True,
                    dilation: int = 5) -> np.ndarray:
    """Bring a saliency map to the image's size and sharpen it with the image's edges.

    Parameters
    ----------
    saliency : numpy.ndarray
        2-D saliency (e.g. from :func:`artseg_core.scorecam.score_cam`), any size; resized bilinearly to
        the image's shape when it differs.
    image : numpy.ndarray
        The 2-D image the saliency explains.
    use_edges : bool
        Multiply by :func:`edge_map` (True) or only resize and renormalise (False).
    dilation : int
        Disk radius of the edge map's dilation.

    Returns
    -------
    numpy.ndarray
        float32 map of the image's shape, min-max normalised to [0, 1] (all zeros if constant).

    Raises
    ------
    ValueError
        Either input is not a finite 2-D numeric array.
    """
    sal = _as_2d(saliency, "saliency").astype(np.float64)
    img = _as_2d(image, "image")
    if sal.shape != img.shape:
        sal = _resize_bilinear(sal, img.shape)
    sal = np.clip(sal, 0.0, None)
    if use_edges:
        sal = sal * edge_map(img, dilation=dilation)
    return _minmax(sal)


def binarize(saliency: np.ndarray, threshold: float) -> np.ndarray:
    """Pseudo-mask: pixels whose saliency is at least ``threshold``.

    Parameters
    ----------
    saliency : numpy.ndarray
        Saliency map (any shape), normally in [0, 1].
    threshold : float
        Cut-off; pixels with ``saliency >= threshold`` are True.

    Returns
    -------
    numpy.ndarray
        bool array of the saliency's shape.

    Raises
    ------
    ValueError
        ``threshold`` is not a finite number.
    """
    t = float(threshold)
    if not np.isfinite(t):
        raise ValueError(f"threshold must be a finite number, got {threshold}")
    return np.asarray(saliency) >= t


def _overlap_counts(sal: np.ndarray, mask: np.ndarray, thr: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """True and false positive counts at every threshold (sorted-value search), and the mask area."""
    inside = np.sort(sal[mask], kind="stable")
    outside = np.sort(sal[~mask], kind="stable")
    tp = inside.size - np.searchsorted(inside, thr, side="left")
    fp = outside.size - np.searchsorted(outside, thr, side="left")
    return tp.astype(np.float64), fp.astype(np.float64), int(inside.size)


def select_threshold(saliency_maps: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                     thresholds: Sequence[float] | None = None, metric: str = "iou") -> tuple[float, list[dict]]:
    """Choose the binarisation threshold that best reproduces hand masks on validation images.

    Parameters
    ----------
    saliency_maps : sequence of numpy.ndarray
        Saliency maps (normally refined, in [0, 1]), one per validation image.
    masks : sequence of numpy.ndarray
        Hand masks (bool or 0/1), same shapes as the saliency maps. An image without artifact pixels
        counts as a perfect match (score 1) only when its pseudo-mask is empty too.
    thresholds : sequence of float, optional
        Candidates (default :data:`CANDIDATE_THRESHOLDS`, 0.05 to 0.95 by 0.05).
    metric : {"iou", "dice"}
        Mean per-image score that is maximised.

    Returns
    -------
    best : float
        The chosen threshold. When several thresholds tie for the best mean score, the longest run of
        neighbouring tied candidates is taken (the first such run if equally long) and its middle element
        returned (the lower of the two middle ones for an even count).
    table : list of dict
        One row per candidate in ascending order: ``threshold``, mean ``iou``, mean ``dice``, ``n`` images.

    Raises
    ------
    ValueError
        Empty or unequal inputs, shape mismatches (naming the index), an unknown metric, or non-finite
        thresholds.
    """
    if metric not in ("iou", "dice"):
        raise ValueError(f"metric must be 'iou' or 'dice', got {metric!r}")
    maps, refs = list(saliency_maps), list(masks)
    if not maps:
        raise ValueError("select_threshold needs at least one saliency map")
    if len(maps) != len(refs):
        raise ValueError(f"{len(maps)} saliency maps but {len(refs)} masks")
    thr = np.asarray(CANDIDATE_THRESHOLDS if thresholds is None else list(thresholds), dtype=np.float64).ravel()
    if thr.size == 0 or not np.isfinite(thr).all():
        raise ValueError("thresholds must be a non-empty sequence of finite numbers")
    thr = np.unique(thr)

    iou = np.zeros((len(maps), thr.size))
    dice = np.zeros_like(iou)
    for i, (s, m) in enumerate(zip(maps, refs)):
        sal = _as_2d(s, f"saliency map {i}").astype(np.float64)
        mask = np.asarray(m)
        if mask.shape != sal.shape:
            raise ValueError(f"mask {i} has shape {mask.shape} but saliency map {i} has shape {sal.shape}")
        mask = mask.astype(bool)
        tp, fp, area = _overlap_counts(sal, mask, thr)
        fn = area - tp
        union = tp + fp + fn
        iou[i] = np.where(union > 0, tp / np.maximum(union, 1), 1.0)
        denom = 2 * tp + fp + fn
        dice[i] = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 1.0)

    mean_iou, mean_dice = iou.mean(axis=0), dice.mean(axis=0)
    score = mean_iou if metric == "iou" else mean_dice
    best_val = score.max()
    tied = np.abs(score - best_val) <= 1e-12
    runs, start = [], None
    for j, flag in enumerate(tied):
        if flag and start is None:
            start = j
        if not flag and start is not None:
            runs.append((start, j - 1))
            start = None
    if start is not None:
        runs.append((start, thr.size - 1))
    lo, hi = max(runs, key=lambda r: (r[1] - r[0], -r[0]))
    best = float(thr[lo + (hi - lo) // 2])
    table = [{"threshold": float(t), "iou": float(a), "dice": float(d), "n": len(maps)}
             for t, a, d in zip(thr, mean_iou, mean_dice)]
    return best, table
