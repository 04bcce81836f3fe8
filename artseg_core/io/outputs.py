"""Per-image output files: ImageJ ROI set, overlay PNG, mask / probability / cleaned TIFFs.

All writers are atomic (:func:`artseg_core.io.files.atomic_write`): a reader sees the old file or the
complete new one. TIFFs are ImageJ hyperstack TIFFs where the dtype allows it (uint8, uint16,
int16, float32), optionally with the pixel size as ImageJ calibration (µm).

ROI outlines are traced along pixel edges (the "crack" between object and background pixels), the
way ImageJ's wand and *Analyze Particles* trace them, and stored as ImageJ ``TRACED`` polygon ROIs
with integer corner coordinates (pixel ``(row, col)`` spans ``[col, col+1) x [row, row+1)``).
Hence the polygon area equals the object's pixel count (holes inside an object count as part of
it, since only the outer outline is stored), and ImageJ's mask of the ROI is the object itself
(holes filled). Objects are 8-connected, as in :mod:`artseg_core.postprocess`; an outline may touch
itself at a corner where two pixels meet diagonally.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from artseg_core.io.files import atomic_write, write_png, write_tiff

__all__ = ["trace_outline", "outline_polygons", "write_roi_zip", "overlay_rgb", "write_overlay_png",
           "write_mask_tiff", "write_prob_tiff", "write_cleaned", "roi_name", "ROI_PREFIX"]

_IMAGEJ_DTYPES = (np.uint8, np.uint16, np.int16, np.float32)


#: every ROI ArtSeg writes (ROI zip, ImageJ/Fiji overlay, ROI Manager) is named ``ROI_PREFIX`` + label
ROI_PREFIX = "artifact-"


def roi_name(label: int) -> str:
    """The ROI name of an object label: ``artifact-001`` (3 digits at least, label numbers kept).

    The same name in the ROI zip, the ImageJ/Fiji overlay and the object table's ``label`` column.
    """
    return f"{ROI_PREFIX}{int(label):03d}"


def _boundary_edges(labels: np.ndarray, block_pixels: int = 1 << 22):
    """Directed boundary edges of all objects (object on the right, clockwise on screen).

    Returns int64 arrays ``x, y`` (start corner), ``d`` (0 right, 1 down, 2 left, 3 up) and
    ``lab`` (label), top edges first, each direction in raster order of its pixel. Corner ``(x, y)``
    is the top-left corner of pixel ``(row y, col x)``. Works in row blocks with one halo row.
    """
    H, W = labels.shape
    rows = max(1, block_pixels // max(W, 1))
    parts: list[list[tuple[np.ndarray, ...]]] = [[], [], [], []]
    # corner offsets (x, y) of the start of each edge relative to its pixel: top, right, bottom, left
    offsets = ((0, 0), (1, 0), (1, 1), (0, 1))
    for a in range(0, H, rows):
        b = min(a + rows, H)
        cur = labels[a:b]
        fg = cur != 0
        if not fg.any():
            continue
        ext = np.zeros((b - a + 2, W), labels.dtype)  # the block with one halo row (0 outside the image)
        ext[1:-1] = cur
        if a > 0:
            ext[0] = labels[a - 1]
        if b < H:
            ext[-1] = labels[b]
        vert = ext[1:] != ext[:-1]  # vert[i]: rows i-1 and i of the block differ
        horiz = np.ones((b - a, W + 1), bool)  # horiz[:, x]: columns x-1 and x differ (image sides: yes)
        np.not_equal(cur[:, 1:], cur[:, :-1], out=horiz[:, 1:-1])
        code = vert[:-1].view(np.uint8).copy()  # top
        code |= horiz[:, 1:].view(np.uint8) << 1  # right
        code |= vert[1:].view(np.uint8) << 2  # bottom
        code |= horiz[:, :-1].view(np.uint8) << 3  # left
        code *= fg.view(np.uint8)
        yy, xx = np.nonzero(code)
        c = code[yy, xx]
        ll = cur[yy, xx].astype(np.int64)
        for k, (ox, oy) in enumerate(offsets):
            sel = (c & (1 << k)) != 0
            parts[k].append((xx[sel] + ox, yy[sel] + (a + oy), ll[sel]))
    xs, ys, ds, labs = [], [], [], []
    for k in range(4):
        for xx, yy, ll in parts[k]:
            xs.append(xx)
            ys.append(yy)
            labs.append(ll)
            ds.append(np.full(xx.size, k, np.int64))
    if not xs:
        e = np.zeros(0, np.int64)
        return e, e, e, e
    return (np.concatenate(xs).astype(np.int64), np.concatenate(ys).astype(np.int64), np.concatenate(ds),
            np.concatenate(labs))


def outline_polygons(labels: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Outer outlines of every object of a label image, along pixel edges.

    Parameters
    ----------
    labels : ndarray of int
        2-D label image (0 background). Each label should be one 8-connected object; for a label
        with several components only the first one in raster order is traced.

    Returns
    -------
    list of (label, ndarray)
        Ascending labels, each with an ``(n, 2)`` int64 array of ``x, y`` corner coordinates
        (x = column, y = row) of the outline's turning points, clockwise on screen, starting at the
        top-left corner of the object's first pixel in raster order; the polygon is closed
        implicitly. Its shoelace area equals the object's pixel count plus that of its holes.

    Notes
    -----
    Every edge between an object pixel and a pixel of another label becomes a directed edge with
    the object on its right. Each corner then has one outgoing edge of that object, except where two
    of its pixels touch only diagonally: there the walk turns left, which keeps 8-connected pixels
    in one outline. Edges of all objects are built and linked at once with numpy (row blocks, so
    memory stays small); only the walk from edge to successor is a Python loop over integers.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D, got shape {labels.shape}")
    if labels.dtype == bool:
        labels = labels.astype(np.int32)
    if labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be an integer array, got dtype {labels.dtype}")
    x, y, d, lab = _boundary_edges(labels)
    if x.size == 0:
        return []
    H, W = labels.shape
    uniq, rank = np.unique(lab, return_inverse=True)
    rank = rank.reshape(-1).astype(np.int64)
    nv = (H + 1) * (W + 1)
    key_start = rank * nv + y * (W + 1) + x
    dx = np.array([1, 0, -1, 0], np.int64)[d]
    dy = np.array([0, 1, 0, -1], np.int64)[d]
    key_end = key_start + dy * (W + 1) + dx
    order = np.argsort(key_start, kind="stable")
    sorted_keys = key_start[order]
    lo = np.searchsorted(sorted_keys, key_end, side="left")
    hi = np.searchsorted(sorted_keys, key_end, side="right")
    if np.any(hi - lo < 1):
        raise RuntimeError("boundary edges do not link up")
    succ = order[np.minimum(lo, order.size - 1)]
    saddle = np.flatnonzero(hi - lo == 2)
    if saddle.size:  # diagonal contact: take the outgoing edge that turns left
        first, second = order[lo[saddle]], order[lo[saddle] + 1]
        succ[saddle] = np.where(d[first] == (d[saddle] - 1) % 4, first, second)
    pred = np.empty_like(succ)
    pred[succ] = np.arange(succ.size)
    turning = (d != d[pred]).tolist()
    n_top = int(np.count_nonzero(d == 0))
    _, first_top = np.unique(rank[:n_top], return_index=True)  # top edge of each object's first pixel
    nxt = succ.tolist()
    out = []
    for lab_value, i0 in zip(uniq.tolist(), first_top.tolist()):
        pts = []
        i = i0
        while True:
            if turning[i]:
                pts.append(i)
            i = nxt[i]
            if i == i0:
                break
        idx = np.asarray(pts, np.int64)
        out.append((int(lab_value), np.stack([x[idx], y[idx]], axis=1)))
    return out


def trace_outline(obj: np.ndarray) -> np.ndarray:
    """Outer outline of one 8-connected binary object (see :func:`outline_polygons`).

    Parameters
    ----------
    obj : ndarray of bool
        2-D mask holding one 8-connected object.

    Returns
    -------
    ndarray of int64, shape (n, 2)
        ``x, y`` corner coordinates of the outline's turning points.
    """
    obj = np.asarray(obj)
    if obj.ndim != 2:
        raise ValueError(f"trace_outline expects a 2-D mask, got shape {obj.shape}")
    polys = outline_polygons(obj.astype(bool).astype(np.int32))
    if not polys:
        raise ValueError("trace_outline got an empty mask")
    return polys[0][1]


def write_roi_zip(labels: np.ndarray, path: str | os.PathLike, names: list[str] | None = None) -> Path:
    """Write an ImageJ ROI set (``.zip``) with one traced polygon outline per object.

    Parameters
    ----------
    labels : ndarray of int
        2-D label image (0 background), e.g. ``Result.labels``.
    path : path-like
        Destination ``.zip`` (its folder must exist). Written atomically; an image without objects
        gives a valid, empty zip.
    names : list of str, optional
        ROI names, one per label present (ascending); default :func:`roi_name` of the label
        (``artifact-001``...), so ROI names match the ``label`` column of the object table.

    Returns
    -------
    Path
    """
    import roifile

    polys = outline_polygons(labels)
    if names is None:
        names = [roi_name(lab) for lab, _ in polys]
    else:
        names = [str(n) for n in names]
        if len(names) != len(polys):
            raise ValueError(f"{path}: {len(names)} ROI names for {len(polys)} objects")
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: ROI names must be unique")
    with atomic_write(path, "wb") as fh:
        with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, (_, poly) in zip(names, polys):
                roi = roifile.ImagejRoi.frompoints(poly, name=name)
                roi.roitype = roifile.ROI_TYPE.TRACED
                zf.writestr(f"{name}.roi", roi.tobytes())
    return Path(path)


def _display_range(image: np.ndarray, pmin: float = 1.0, pmax: float = 99.8,
                   max_samples: int = 4_000_000) -> tuple[float, float]:
    """Display percentiles of an image (on a regular subsample of about ``max_samples`` pixels)."""
    s = max(1, int(np.ceil(np.sqrt(image.size / max_samples))))
    sample = image[::s, ::s]
    if sample.dtype.kind == "f":
        sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(sample, [pmin, pmax])
    return float(lo), float(hi)


def overlay_rgb(image: np.ndarray, mask: np.ndarray, prob: np.ndarray | None = None,
                color: tuple[int, int, int] = (255, 0, 0), alpha: float = 0.3,
                block_rows: int = 512) -> np.ndarray:
    """The image in grey with artifacts tinted and outlined.

    Parameters
    ----------
    image : ndarray
        2-D image, any real dtype; shown with a linear stretch from its 1st to its 99.8th
        percentile (the same percentiles as :func:`artseg_core.imgproc.normalize.normalize`).
    mask : ndarray of bool
        Artifact mask, same shape.
    prob : ndarray, optional
        Probability map; scales the tint inside the mask (``alpha * max(prob, 0.25)``).
    color : tuple of int
        RGB of fill and outline (default red).
    alpha : float
        Opacity of the fill (0..1); the 1-pixel inner outline is opaque.
    block_rows : int
        Rows processed at a time; the RGB result is the only full-size array created.

    Returns
    -------
    ndarray of uint8, shape (H, W, 3)
    """
    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.ndim != 2:
        raise ValueError(f"overlay_rgb expects a 2-D image, got shape {image.shape}")
    if image.dtype.kind not in "biuf":
        raise ValueError(f"overlay_rgb needs a real-valued image, got dtype {image.dtype}")
    if mask.shape != image.shape:
        raise ValueError(f"mask has shape {mask.shape}, image {image.shape}")
    if prob is not None:
        prob = np.asarray(prob)
        if prob.shape != image.shape:
            raise ValueError(f"prob has shape {prob.shape}, image {image.shape}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if image.dtype == bool:
        image = image.view(np.uint8)
    lo, hi = _display_range(image)
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    col = np.asarray(color, dtype=np.float32)
    col8 = np.asarray(color, dtype=np.uint8)
    eight = np.ones((3, 3), bool)
    H, W = image.shape
    rgb = np.empty((H, W, 3), np.uint8)
    for a in range(0, H, block_rows):
        b = min(a + block_rows, H)
        g = (image[a:b].astype(np.float32) - np.float32(lo)) * np.float32(scale)
        g = np.nan_to_num(np.clip(np.rint(g), 0, 255, out=g), copy=False).astype(np.uint8)
        blk = rgb[a:b]
        blk[...] = g[..., None]
        m = mask[a:b].astype(bool, copy=False)
        if not m.any():
            continue
        alph = np.full(int(m.sum()), alpha, np.float32)
        if prob is not None:
            alph *= np.clip(np.nan_to_num(prob[a:b][m].astype(np.float32)), 0.25, 1.0)
        gm = g[m].astype(np.float32)[:, None]
        blk[m] = np.rint(gm * (1 - alph[:, None]) + col * alph[:, None]).astype(np.uint8)
        # inner outline: mask pixels with a background 8-neighbour (one halo row across blocks)
        h0, h1 = max(a - 1, 0), min(b + 1, H)
        halo = mask[h0:h1].astype(bool, copy=False)
        inner = ndi.binary_erosion(halo, structure=eight, border_value=0)
        if h0 < a:  # the halo's first row is not the image border: its erosion is not used
            inner = inner[1:]
        inner = inner[: b - a]
        blk[m & ~inner] = col8
    return rgb


def write_overlay_png(path: str | os.PathLike, image: np.ndarray, mask: np.ndarray,
                      prob: np.ndarray | None = None) -> Path:
    """Write :func:`overlay_rgb` as an RGB PNG (atomic)."""
    return write_png(path, overlay_rgb(image, mask, prob))


def _calibration(pixel_size: float | None) -> dict:
    if pixel_size is None:
        return {}
    if not (np.isfinite(pixel_size) and pixel_size > 0):
        raise ValueError(f"pixel_size must be a positive number of µm/pixel, got {pixel_size}")
    return {"resolution": (1.0 / pixel_size, 1.0 / pixel_size), "metadata": {"unit": "um"}}


def write_mask_tiff(path: str | os.PathLike, mask: np.ndarray, pixel_size: float | None = None) -> Path:
    """Write a mask as an ImageJ TIFF, uint8 0/255 (zlib-compressed).

    Parameters
    ----------
    path : path-like
        Destination.
    mask : ndarray
        2-D mask; nonzero = artifact.
    pixel_size : float, optional
        µm/pixel written as ImageJ calibration.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{path}: mask must be 2-D, got shape {mask.shape}")
    out = np.zeros(mask.shape, np.uint8)
    out[mask.astype(bool, copy=False)] = 255
    return write_tiff(path, out, imagej=True, compression="zlib", **_calibration(pixel_size))


def write_prob_tiff(path: str | os.PathLike, prob: np.ndarray, pixel_size: float | None = None) -> Path:
    """Write a probability map as a float32 ImageJ TIFF (uncompressed)."""
    prob = np.asarray(prob)
    if prob.ndim != 2:
        raise ValueError(f"{path}: probability map must be 2-D, got shape {prob.shape}")
    return write_tiff(path, prob.astype(np.float32, copy=False), imagej=True, **_calibration(pixel_size))


def write_cleaned(path: str | os.PathLike, cleaned: np.ndarray, pixel_size: float | None = None) -> Path:
    """Write a cleaned image as TIFF in its own dtype.

    ImageJ hyperstack TIFF for uint8, uint16, int16 and float32; a plain TIFF for other dtypes
    (ImageJ cannot hold them), so no value is ever converted.
    """
    cleaned = np.asarray(cleaned)
    if cleaned.ndim != 2:
        raise ValueError(f"{path}: cleaned image must be 2-D, got shape {cleaned.shape}")
    if cleaned.dtype == bool or cleaned.dtype.kind not in "uif":
        raise ValueError(f"{path}: cannot write a cleaned image of dtype {cleaned.dtype}")
    imagej = any(cleaned.dtype == np.dtype(t) for t in _IMAGEJ_DTYPES)
    kw = _calibration(pixel_size)
    if not imagej and kw:
        kw = {"resolution": kw["resolution"], "resolutionunit": "CENTIMETER"}
        kw["resolution"] = tuple(v * 1e4 for v in kw["resolution"])  # px/µm -> px/cm
    return write_tiff(path, cleaned, imagej=imagej, **kw)
