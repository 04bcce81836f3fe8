"""Tiled prediction of images of any size, with seamless overlap blending and bounded memory.

A network is run on overlapping tiles; the tile outputs are blended with a separable window that is
zero on the outer ``overlap // 4`` pixels of every tile side facing another tile, rises with a
cosine ramp over the next ``overlap // 2`` pixels and is 1 elsewhere (sides on the image border are
never tapered). Consequences:

* the blend has no seams: overlapping ramps are complementary, and every pixel is divided by the
  exact sum of the weights that reached it;
* for a translation-equivariant network whose receptive field (full width) is smaller than
  ``overlap / 2`` the tiled result equals the untiled one everywhere except where the image
  border itself (or its padding) is within reach of the receptive field, because no tile
  contributes at a pixel closer than ``overlap // 4`` to one of its cut edges;
* memory is bounded: the weight sum of a grid of separable windows is the outer product of two
  1-D sums, so no full-size weight image exists. Tiles are produced on demand and accumulated in a
  row strip a few tiles high, which is finalised (divided by the weights, cast to ``out_dtype``)
  into the output as soon as no later tile can reach it. The output array (which may be a caller's
  ``numpy.memmap``) is the only full-size array this module allocates, and the input is never
  copied or padded as a whole.

The idea of cutting a large image into overlapping tiles for a fully convolutional network follows
StarDist's tiled prediction (Schmidt et al., MICCAI 2018); this is an independent implementation
with weighted blending instead of cropping.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

__all__ = ["predict_tiled", "iter_tiles", "tile_starts", "blend_window", "pad_to_multiple"]


def pad_to_multiple(img: np.ndarray, divisor: int, mode: str = "reflect") -> tuple[np.ndarray, tuple[int, int]]:
    """Pad a 2-D image at its bottom and right so both sides are multiples of ``divisor``.

    Parameters
    ----------
    img : ndarray
        2-D image.
    divisor : int
        Target multiple (>= 1).
    mode : str
        ``numpy.pad`` mode; ``"reflect"`` (default) works for any size, including 1 pixel.

    Returns
    -------
    padded : ndarray
        The padded image (``img`` itself when no padding is needed).
    pad : tuple of int
        Rows and columns added (bottom, right); crop with ``padded[:h, :w]``.
    """
    img = np.asarray(img)
    if img.ndim != 2:
        raise ValueError(f"pad_to_multiple expects a 2-D image, got shape {img.shape}")
    if divisor < 1:
        raise ValueError(f"divisor must be >= 1, got {divisor}")
    ph = (-img.shape[0]) % divisor
    pw = (-img.shape[1]) % divisor
    if ph == 0 and pw == 0:
        return img, (0, 0)
    if img.size == 0:
        raise ValueError(f"cannot pad an empty image of shape {img.shape}")
    return np.pad(img, ((0, ph), (0, pw)), mode=mode), (ph, pw)


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def tile_starts(size: int, tile: int, overlap: int, divisor: int = 1) -> tuple[list[int], int]:
    """Start offsets and length of the tiles along one axis.

    Parameters
    ----------
    size : int
        Axis length (>= 1).
    tile : int
        Requested tile length; rounded down to a multiple of ``divisor`` (at least ``divisor``).
    overlap : int
        Minimum overlap between neighbouring tiles (0 <= overlap < tile).
    divisor : int
        Tile lengths are multiples of this; intermediate starts are multiples of it too, so a
        network with pooling sees the same pooling phase in every tile. The last tile ends at the
        image end.

    Returns
    -------
    starts : list of int
        Tile start offsets, increasing; neighbouring tiles overlap by at least ``overlap``.
    length : int
        Tile length. When ``size <= tile`` there is one tile of length ``size`` rounded up to
        ``divisor`` (the caller pads the image). Otherwise the fewest tiles of at most ``tile``
        that cover the axis are used, and their length is shrunk to the shortest multiple of
        ``divisor`` that still covers it with ``overlap``: a 1080-pixel axis with tile 1024 and
        overlap 128 gets two 608-pixel tiles, not two 1024-pixel ones (2.8x less computation).
    """
    if size < 1:
        raise ValueError(f"axis length must be >= 1, got {size}")
    if divisor < 1:
        raise ValueError(f"divisor must be >= 1, got {divisor}")
    tile = max(divisor, (int(tile) // divisor) * divisor)
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile) = [0, {tile}), got {overlap}")
    if size <= tile:
        return [0], _round_up(size, divisor)
    # shortest length (multiple of divisor, <= tile) whose tiles, as many as the full tile needs, still cover
    n_full = len(_starts(size, tile, overlap, divisor))
    length = tile
    for cand in range(_round_up(-(-(size + (n_full - 1) * overlap) // n_full), divisor), tile, divisor):
        if cand > overlap and len(_starts(size, cand, overlap, divisor)) <= n_full:
            length = cand
            break
    return _starts(size, length, overlap, divisor), length


def _starts(size: int, tile: int, overlap: int, divisor: int) -> list[int]:
    """Starts of tiles of length ``tile`` (< size): steps of at most ``tile - overlap``, multiples of divisor,
    the last tile ending at the axis end."""
    step = tile - overlap
    if step >= divisor:
        step = (step // divisor) * divisor
    starts = list(range(0, size - tile, step))
    starts.append(size - tile)
    return starts


def iter_tiles(shape: tuple[int, int], tile: int | tuple[int, int] = 512, overlap: int = 64,
               divisor: int = 1) -> Iterator[tuple[slice, slice]]:
    """Yield ``(row_slice, col_slice)`` of the tiles covering an image, in raster order.

    Slices may reach past the image end when the image is smaller than a tile along an axis
    (the tile is then the padded image, see :func:`tile_starts`).

    Parameters
    ----------
    shape : tuple of int
        Image shape (rows, cols).
    tile : int or tuple of int
        Tile size (rows, cols) or one value for both.
    overlap : int
        Minimum overlap between neighbouring tiles.
    divisor : int
        Tile sizes are multiples of this.
    """
    th, tw = (tile, tile) if np.isscalar(tile) else tile
    ys, h = tile_starts(int(shape[0]), int(th), overlap, divisor)
    xs, w = tile_starts(int(shape[1]), int(tw), overlap, divisor)
    for y in ys:
        for x in xs:
            yield slice(y, y + h), slice(x, x + w)


def blend_window(length: int, overlap: int, taper_start: bool, taper_end: bool) -> np.ndarray:
    """1-D blending window of a tile.

    Zero on the outer ``overlap // 4`` samples of a tapered side, a cosine ramp over the next
    ``overlap - 2 * (overlap // 4)`` samples, 1 elsewhere. Ramps of neighbours overlapping by
    exactly ``overlap`` are complementary (they sum to 1).

    Parameters
    ----------
    length : int
        Tile length.
    overlap : int
        Overlap the window is designed for.
    taper_start, taper_end : bool
        Whether the first / last side faces another tile (image-border sides are not tapered).

    Returns
    -------
    ndarray
        float32 window of shape ``(length,)``.
    """
    w = np.ones(length, dtype=np.float64)
    margin = overlap // 4
    ramp_len = overlap - 2 * margin
    if ramp_len > 0:
        t = (np.arange(ramp_len) + 0.5) / ramp_len
        ramp = 0.5 - 0.5 * np.cos(np.pi * t)
    else:
        ramp = np.zeros(0)
    for side, taper in ((0, taper_start), (1, taper_end)):
        if not taper or overlap == 0:
            continue
        prof = np.concatenate([np.zeros(margin), ramp])[: length]
        if side == 0:
            w[: prof.size] *= prof
        else:
            w[length - prof.size:] *= prof[::-1]
    return w.astype(np.float32)


def _axis_windows(starts: list[int], length: int, overlap: int, size: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Windows of all tiles along one axis and their sum over the (possibly padded) axis."""
    wins = []
    total = np.zeros(max(size, starts[-1] + length), dtype=np.float64)
    for i, s in enumerate(starts):
        win = blend_window(length, overlap, taper_start=i > 0, taper_end=i < len(starts) - 1)
        wins.append(win)
        total[s:s + length] += win
    return wins, total


def predict_tiled(fn: Callable[[np.ndarray], np.ndarray], image: np.ndarray, tile: int | tuple[int, int] = 512,
                  overlap: int = 64, divisor: int = 32, batch_size: int = 1, out_dtype=np.float32,
                  out: np.ndarray | None = None,
                  progress: Callable[[int, int], None] | None = None,
                  transform: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Apply a fully convolutional predictor to an image of any size, tile by tile.

    Parameters
    ----------
    fn : callable
        Takes a float32 C-contiguous batch ``(B, 1, h, w)`` with ``h``, ``w`` multiples of
        ``divisor`` and returns an array-like ``(B, 1, h, w)`` (e.g. probabilities).
    image : ndarray
        2-D image, already normalised; any size >= 1x1 and any real dtype (tiles are cast to
        float32 one at a time, so a ``numpy.memmap`` input stays on disk).
    tile : int or tuple of int
        Tile size (rows, cols); rounded down to a multiple of ``divisor``.
    overlap : int
        Minimum overlap of neighbouring tiles (< tile). Results are exact for translation-
        equivariant ``fn`` with receptive field < ``overlap / 2`` (see module docstring).
    divisor : int
        Tile sides passed to ``fn`` are multiples of this. Axes shorter than a tile are padded
        (reflect) at the end to the next multiple and the padding is cropped off again.
    batch_size : int
        Tiles per call of ``fn``.
    out_dtype : dtype
        dtype of the returned array (accumulation is float32 in a row strip).
    out : ndarray, optional
        Preallocated 2-D output of the image's shape (e.g. a ``numpy.memmap``); filled and returned.
    progress : callable, optional
        Called as ``progress(done, total)`` after each batch.
    transform : callable, optional
        Elementwise preprocessing applied to each tile of ``image`` (in its own dtype) before it is
        cast to float32, e.g. a normalisation with fixed parameters
        (:func:`artseg_core.imgproc.normalize.apply_normalization`): the transformed image never exists as a whole.
        It must act pixel by pixel, so that transforming a tile equals cropping the transformed image.

    Returns
    -------
    ndarray
        Blended prediction of shape ``image.shape``.
    """
    image = np.asarray(image) if not isinstance(image, np.ndarray) else image
    if image.ndim != 2:
        raise ValueError(f"predict_tiled expects a 2-D image, got shape {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"predict_tiled got an empty image of shape {image.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    H, W = image.shape
    th, tw = (tile, tile) if np.isscalar(tile) else tile
    ys, h = tile_starts(H, int(th), overlap, divisor)
    xs, w = tile_starts(W, int(tw), overlap, divisor)
    wy, sum_y = _axis_windows(ys, h, overlap, H)
    wx, sum_x = _axis_windows(xs, w, overlap, W)
    if np.any(sum_y[:H] <= 0) or np.any(sum_x[:W] <= 0):  # guarded by construction; keep the check cheap
        raise AssertionError("tile windows do not cover the image")
    inv_x = (1.0 / sum_x[:W]).astype(np.float32)
    Wp = max(W, xs[-1] + w)

    if out is None:
        out = np.empty((H, W), dtype=out_dtype)
    elif out.shape != (H, W):
        raise ValueError(f"out has shape {out.shape}, expected {(H, W)}")

    tiles = [(i, j) for i in range(len(ys)) for j in range(len(xs))]
    n_tiles = len(tiles)
    pad_h = h > H  # only possible with a single tile row
    pad_w = w > W

    # Row strip accumulator covering image rows [strip0, strip0 + strip.shape[0]).
    strip0 = 0
    strip = np.zeros((0, Wp), dtype=np.float32)
    done_rows = 0  # rows [0, done_rows) are final and written to `out`

    def finalize(upto: int) -> None:
        nonlocal strip, strip0, done_rows
        upto = min(upto, H)
        if upto <= done_rows:
            return
        a, b = done_rows - strip0, upto - strip0
        block = strip[a:b, :W]
        block *= (1.0 / sum_y[done_rows:upto]).astype(np.float32)[:, None]
        block *= inv_x[None, :]
        out[done_rows:upto] = block
        done_rows = upto
        # drop finished rows from the strip
        strip = strip[b:].copy()
        strip0 = upto

    batch = np.empty((min(batch_size, n_tiles), 1, h, w), dtype=np.float32)
    for b0 in range(0, n_tiles, batch_size):
        chunk = tiles[b0:b0 + batch_size]
        for k, (i, j) in enumerate(chunk):
            y, x = ys[i], xs[j]
            crop = image[y:y + h, x:x + w]
            crop = np.asarray(crop if transform is None else transform(crop), dtype=np.float32)
            if pad_h or pad_w:
                crop = np.pad(crop, ((0, h - crop.shape[0]), (0, w - crop.shape[1])), mode="reflect")
            batch[k, 0] = crop
        n = len(chunk)
        res = np.asarray(fn(batch[:n]))
        if res.shape != (n, 1, h, w):
            raise ValueError(f"predictor returned shape {res.shape}, expected {(n, 1, h, w)}")
        # grow the strip to cover the rows of this batch
        need = max(ys[i] for i, _ in chunk) + h
        if strip0 + strip.shape[0] < need:
            grown = np.zeros((need - strip0, Wp), dtype=np.float32)
            grown[: strip.shape[0]] = strip
            strip = grown
        for k, (i, j) in enumerate(chunk):
            y, x = ys[i], xs[j]
            r0 = y - strip0
            strip[r0:r0 + h, x:x + w] += res[k, 0].astype(np.float32, copy=False) * (wy[i][:, None] * wx[j][None, :])
        nxt = b0 + n
        finalize(ys[tiles[nxt][0]] if nxt < n_tiles else H)
        if progress is not None:
            progress(nxt, n_tiles)
    return out
