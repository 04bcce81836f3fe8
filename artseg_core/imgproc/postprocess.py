"""From a probability map to cleaned artifact masks, labelled objects and a per-object table.

Conventions used throughout ArtSeg:

* foreground objects are 8-connected (``connectivity=2``), holes (background) 4-connected, the
  usual dual pair, so a diagonal chain of pixels is one object and does not enclose a hole;
* a *hole* is background enclosed by the mask, or enclosed by a single object against the image
  border (the interior of a bubble the border cuts; :func:`fill_small_holes`);
* a *minimum size* is always an **area**: ``min_size`` in pixels, ``min_size_um2`` in µm²
  (the CLI's ``--min-size`` and ``--min-size-um``); an object is kept when its area (holes filled
  first, when hole filling is on) is ``>= min_size``;
* bounding boxes follow scikit-image: ``min_row, min_col`` inclusive, ``max_row, max_col``
  exclusive, so ``labels[min_row:max_row, min_col:max_col]`` is the box.

Everything is built on ``scipy.ndimage.label``/``find_objects`` and ``numpy.bincount`` (no
``regionprops``), with at most one full-size int32 label image alive at a time, so a 10000 x 10000
map is handled in seconds and well within 2 GB.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

__all__ = ["clean_mask", "min_size_pixels", "label_objects", "object_table", "remove_small_objects",
           "fill_small_holes"]

_EIGHT = np.ones((3, 3), dtype=bool)
_FOUR = ndi.generate_binary_structure(2, 1)
#: A background region touching the border is a bubble interior when at least this fraction of its pixels next to
#: an object lie inside that object's convex hull (the inner, concave side of a ring or an arc).
_CONCAVE = 0.5
#: ... and at most this many objects border it (a cut bubble is one ring or a few arcs of it)
_MAX_AROUND = 4


def _check_2d(arr: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array, got shape {arr.shape}")
    return arr


def min_size_pixels(min_size: float | None = None, min_size_um2: float | None = None,
                    pixel_size: float | None = None) -> int | None:
    """Minimum object area in pixels from an area in pixels or in µm².

    Parameters
    ----------
    min_size : float, optional
        Minimum area in pixels.
    min_size_um2 : float, optional
        Minimum area in µm² (square micrometres); needs ``pixel_size``.
    pixel_size : float, optional
        Pixel side length in µm/pixel (square pixels).

    Returns
    -------
    int or None
        The smallest pixel count whose area is ``>=`` the requested area (``ceil``, with a
        1e-9 tolerance against rounding noise), or None when neither size is given (the caller
        then uses its calibrated default).

    Raises
    ------
    ValueError
        Both sizes given, a negative or non-finite size, or ``min_size_um2`` without a positive
        ``pixel_size``.
    """
    if min_size is not None and min_size_um2 is not None:
        raise ValueError("give the minimum object size either in pixels (min_size) or in µm² (min_size_um2), "
                         "not both")
    if min_size_um2 is not None:
        v = float(min_size_um2)
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"min_size_um2 must be a finite area >= 0 µm², got {min_size_um2}")
        if pixel_size is None or not math.isfinite(float(pixel_size)) or float(pixel_size) <= 0:
            raise ValueError(f"min_size_um2 needs a positive pixel_size in µm/pixel, got {pixel_size}")
        px = v / float(pixel_size) ** 2
        return int(math.ceil(px - 1e-9))
    if min_size is not None:
        v = float(min_size)
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"min_size must be a finite area >= 0 pixels, got {min_size}")
        return int(math.ceil(v - 1e-9))
    return None


def _bincount(labels: np.ndarray, n: int, chunk: int = 1 << 22) -> np.ndarray:
    """Pixel count of every label 0..n, in row chunks (a whole-image bincount would cast to int64)."""
    counts = np.zeros(n + 1, dtype=np.int64)
    flat = labels.reshape(-1)
    for a in range(0, flat.size, chunk):
        counts += np.bincount(flat[a:a + chunk], minlength=n + 1)
    return counts


def label_objects(mask: np.ndarray) -> np.ndarray:
    """Label 8-connected objects of a boolean mask.

    Parameters
    ----------
    mask : ndarray of bool
        2-D mask.

    Returns
    -------
    ndarray of int32
        0 background, 1..n objects in raster order of their first pixel.
    """
    mask = _check_2d(mask, "mask").astype(bool, copy=False)
    labels = np.empty(mask.shape, dtype=np.int32)
    ndi.label(mask, structure=_EIGHT, output=labels)
    return labels


def remove_small_objects(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Remove 8-connected objects with fewer than ``min_size`` pixels (returns a new bool mask)."""
    mask = _check_2d(mask, "mask").astype(bool, copy=False)
    if min_size <= 1 or not mask.any():
        return mask.copy()
    labels = label_objects(mask)
    counts = _bincount(labels, int(labels.max()))
    keep = counts >= min_size
    keep[0] = False
    out = keep[labels]
    return out


def fill_small_holes(mask: np.ndarray, max_hole: int | None = None, border_holes: bool = True) -> np.ndarray:
    """Fill holes: background regions enclosed by the mask, or by one object against the image border.

    Parameters
    ----------
    mask : ndarray of bool
        2-D mask.
    max_hole : int, optional
        Fill only holes with at most this many pixels; None fills all holes.
    border_holes : bool
        Also fill a background region that touches the image border when it is cut off from the rest of the
        background by objects and lies on their inner side (at most 4 objects border it and at least half of
        its pixels next to an object lie inside that object's convex hull): the interior of an air bubble (a
        ring, possibly broken into arcs) that the image border cuts. The field's own background (more than half
        the image), the outside of an arc, a strip between two straight fibres or a corner cut off by a straight
        fibre are never filled.

    Returns
    -------
    ndarray of bool
        New mask with holes filled.

    Notes
    -----
    Background regions are 4-connected, objects 8-connected (the usual dual pair). A region on the concave side
    of a curved object (a bent fibre around a corner) also meets the border rule and is filled: the mask alone
    cannot tell it from a bubble; pass ``border_holes=False`` to fill only closed holes.
    """
    mask = _check_2d(mask, "mask").astype(bool, copy=False)
    if max_hole is not None and max_hole < 1:
        return mask.copy()
    if not mask.any():
        return mask.copy()
    bg = np.empty(mask.shape, dtype=np.int32)
    n = ndi.label(~mask, structure=_FOUR, output=bg)
    if n == 0:
        return mask.copy()
    hole = np.ones(n + 1, dtype=bool)
    hole[0] = False
    on_border = np.zeros(n + 1, dtype=bool)
    for edge in (bg[0], bg[-1], bg[:, 0], bg[:, -1]):
        on_border[edge] = True
    hole &= ~on_border
    counts = _bincount(bg, n) if (max_hole is not None or border_holes) else None
    if max_hole is not None:
        hole &= counts <= max_hole
    candidates = []
    if border_holes:
        ok = on_border.copy()
        ok[0] = False
        ok &= counts <= mask.size // 2  # the field's own background is never a candidate
        if max_hole is not None:
            ok &= counts <= max_hole
        if ok.any():
            for idx, sl in enumerate(ndi.find_objects(bg), start=1):
                if sl is None or not ok[idx]:
                    continue
                grown = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, dim)) for s, dim in zip(sl, mask.shape))
                candidates.append((sl, grown, bg[grown] == idx))
    out = hole[bg] if hole.any() else np.zeros(mask.shape, dtype=bool)
    del bg
    if candidates:
        from skimage.morphology import convex_hull_image

        objects = label_objects(mask)
        boxes = ndi.find_objects(objects)
        hulls: dict[int, np.ndarray] = {}
        for _sl, grown, region in candidates:
            # region pixels next to an object, and which of them lie inside the convex hull of that object
            edge = region & ndi.binary_dilation(mask[grown], structure=_FOUR)
            touching = np.unique(objects[grown][ndi.binary_dilation(region, structure=_FOUR) & ~region])
            touching = touching[touching > 0].tolist()
            if not touching or len(touching) > _MAX_AROUND:
                continue
            covered = np.zeros(region.shape, dtype=bool)
            for lab in touching:
                box = boxes[lab - 1]
                if lab not in hulls:
                    hulls[lab] = convex_hull_image(objects[box] == lab)
                inter = tuple(slice(max(g.start, b.start), min(g.stop, b.stop)) for g, b in zip(grown, box))
                if all(i.start < i.stop for i in inter):
                    dst = tuple(slice(i.start - g.start, i.stop - g.start) for i, g in zip(inter, grown))
                    src = tuple(slice(i.start - b.start, i.stop - b.start) for i, b in zip(inter, box))
                    covered[dst] |= hulls[lab][src]
            # enclosed: the region lies on the concave (inner) side of the objects around it
            n_edge = int(edge.sum())
            if n_edge and (edge & covered).sum() >= _CONCAVE * n_edge:
                out[grown] |= region
    out |= mask
    return out


def clean_mask(prob: np.ndarray, threshold: float = 0.5, min_size: int = 0, fill_holes: bool = True,
               max_hole: int | None = None, border_holes: bool = True) -> np.ndarray:
    """Threshold a probability map, fill holes and remove small objects.

    Parameters
    ----------
    prob : ndarray
        2-D probability map (any real dtype; NaN counts as background) or a boolean mask
        (then ``threshold`` is ignored).
    threshold : float
        Pixels with ``prob >= threshold`` are foreground.
    min_size : int
        Minimum object area in pixels (8-connected objects, measured after hole filling);
        see :func:`min_size_pixels` for µm².
    fill_holes : bool
        Fill holes inside objects.
    max_hole : int, optional
        With ``fill_holes``, fill only holes of at most this many pixels (None: all).
    border_holes : bool
        With ``fill_holes``, also fill regions one object encloses against the image border (bubbles cut by
        the border); see :func:`fill_small_holes`.

    Returns
    -------
    ndarray of bool
        Cleaned mask.
    """
    prob = _check_2d(prob, "prob")
    if prob.dtype == bool:
        mask = prob.copy()
    else:
        if not np.isfinite(threshold):
            raise ValueError(f"threshold must be finite, got {threshold}")
        mask = prob >= threshold
    if fill_holes:
        mask = fill_small_holes(mask, max_hole, border_holes=border_holes)
    if min_size is not None and min_size > 1:
        mask = remove_small_objects(mask, int(min_size))
    return mask


def object_table(labels: np.ndarray, prob: np.ndarray | None = None,
                 pixel_size: float | None = None) -> list[dict]:
    """Per-object measurements of a label image.

    Parameters
    ----------
    labels : ndarray of int
        2-D label image (0 background), e.g. from :func:`label_objects`.
    prob : ndarray, optional
        Probability map of the same shape; adds ``mean_prob``.
    pixel_size : float, optional
        µm/pixel; adds ``area_um2``.

    Returns
    -------
    list of dict
        One dict per label present, ascending: ``label``, ``area`` (pixels), ``area_um2``
        (with ``pixel_size``), ``min_row``, ``min_col``, ``max_row``, ``max_col`` (max exclusive),
        ``centroid_row``, ``centroid_col`` (pixel-centre coordinates), ``mean_prob`` (with
        ``prob``). Values are plain Python ints/floats.
    """
    labels = _check_2d(labels, "labels")
    if labels.dtype == bool:
        labels = labels.astype(np.int32)
    if labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be an integer array, got dtype {labels.dtype}")
    if labels.size and labels.dtype.kind == "i" and labels.min() < 0:
        raise ValueError("labels must be >= 0")
    if prob is not None:
        prob = _check_2d(prob, "prob")
        if prob.shape != labels.shape:
            raise ValueError(f"prob has shape {prob.shape}, labels {labels.shape}")
    if pixel_size is not None and not (math.isfinite(float(pixel_size)) and float(pixel_size) > 0):
        raise ValueError(f"pixel_size must be a positive number of µm/pixel, got {pixel_size}")
    rows = []
    for idx, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        sub = labels[sl] == idx
        rcount = sub.sum(axis=1, dtype=np.int64)
        ccount = sub.sum(axis=0, dtype=np.int64)
        area = int(rcount.sum())
        r0, c0 = sl[0].start, sl[1].start
        row = {
            "label": idx,
            "area": area,
        }
        if pixel_size is not None:
            row["area_um2"] = float(area * float(pixel_size) ** 2)
        row.update({
            "min_row": int(r0), "min_col": int(c0),
            "max_row": int(sl[0].stop), "max_col": int(sl[1].stop),
            "centroid_row": float(r0 + np.dot(np.arange(rcount.size), rcount) / area),
            "centroid_col": float(c0 + np.dot(np.arange(ccount.size), ccount) / area),
        })
        if prob is not None:
            row["mean_prob"] = float(np.sum(prob[sl], where=sub, dtype=np.float64) / area)
        rows.append(row)
    return rows
