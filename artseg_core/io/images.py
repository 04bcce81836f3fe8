"""Image reading with validation, and listing image files.

Every face reads images through :func:`read_image` (normalisation is :mod:`artseg_core.imgproc.normalize`).

Reading rules
-------------
* Formats are recognised by their first bytes (not by the file name): TIFF/BigTIFF through ``tifffile``,
  PNG and JPEG through Pillow.
* The result is a 2-D array in the file's own dtype, in native byte order (big-endian TIFFs such as the
  Operetta/Harmony exports are byte-swapped on reading).
* Supported dtypes: bool, (u)int8/16/32/64, float16/32/64. Complex and structured data are refused.
* Stacks (any image with more than one 2-D plane that is not a colour image: ZYX, TYX, TZYX, ...) need an
  explicit ``plane``: planes are numbered 0..N-1 in C order over all the non-YX axes.
* Colour (RGB/RGBA) images become grey. When the colour channels are equal up to ``colour_tolerance`` grey
  levels (JPEG compression of grey content makes them nearly, not exactly, equal) they are averaged silently;
  otherwise the image is converted by luminance (ITU-R BT.601: 0.299 R + 0.587 G + 0.114 B) with a
  :class:`ColourImageWarning`, or refused when ``colour="error"``. Alpha is ignored. The grey result keeps the
  file's dtype (rounded for integer dtypes).
* Bad input raises :class:`ImageReadError` ("<path>: <problem>"): missing file, a folder, empty file, truncated
  or corrupt data, unknown format, unsupported dtype, NaN/Inf values, constant image (unless
  ``allow_constant=True``, e.g. for masks), stack without a plane, plane out of range.
"""
from __future__ import annotations

import glob
import math
import os
import re
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np

__all__ = ["ImageReadError", "ColourImageWarning", "IMAGE_SUFFIXES", "read_image", "read_image_with_meta",
           "list_images"]

#: File suffixes recognised by :func:`list_images` (compared lower-case).
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")

_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma weights


class ImageReadError(ValueError):
    """An image file cannot be used; the message is ``"<path>: <problem>"``.

    Attributes
    ----------
    path : str
        The file (or folder/pattern) concerned.
    problem : str
        What is wrong with it.
    """

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # picklable across processes (plate runner workers)
        return (type(self), (self.path, self.problem))


class ColourImageWarning(UserWarning):
    """A colour image with different channels was converted to grey by luminance."""


# ----------------------------------------------------------------------------------------------- reading


def _sniff(head: bytes) -> str | None:
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    return None


def _native(a: np.ndarray) -> np.ndarray:
    return a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("="))


def _check_dtype(path: Path, a: np.ndarray) -> None:
    k = a.dtype.kind
    if k == "b" or (k in "ui" and a.dtype.itemsize <= 8) or (k == "f" and a.dtype.itemsize in (2, 4, 8)):
        return
    raise ImageReadError(path, f"unsupported pixel type {a.dtype} (use integer or float grey values)")


def _to_grey(path: Path, a: np.ndarray, colour: str, tol: float, meta: dict) -> np.ndarray:
    """Colour channels on the last axis (3 or 4, alpha ignored) -> grey in the same dtype."""
    rgb = a[..., :3]
    if a.dtype.kind == "b":
        rgb = rgb.astype(np.uint8)
    r, g, b = (rgb[..., i] for i in range(3))
    if np.array_equal(r, g) and np.array_equal(r, b):
        meta["colour"] = "equal channels"
        return a[..., 0]
    f = rgb.astype(np.float64) if rgb.dtype.itemsize > 2 or rgb.dtype.kind == "f" else rgb.astype(np.float32)
    spread = float(np.max(np.ptp(f, axis=-1)))
    if spread <= tol:
        grey = f.mean(axis=-1)
        meta["colour"] = f"near-equal channels (max difference {spread:g}), averaged"
    else:
        if colour == "error":
            raise ImageReadError(path, f"colour image (channels differ by up to {spread:g}); "
                                       "expected a grey image")
        warnings.warn(f"{path}: colour image (channels differ by up to {spread:g}) converted to grey "
                      "by luminance 0.299 R + 0.587 G + 0.114 B", ColourImageWarning, stacklevel=4)
        grey = f[..., 0] * _LUMA[0] + f[..., 1] * _LUMA[1] + f[..., 2] * _LUMA[2]
        meta["colour"] = "luminance"
    if a.dtype.kind in "uib":
        info = np.iinfo(rgb.dtype)
        grey = np.clip(np.rint(grey), info.min, info.max)
        return grey.astype(rgb.dtype)
    return grey.astype(a.dtype)


_UNIT_TO_UM = {
    "um": 1.0, "µm": 1.0, "\u03bcm": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0,
    "micrometre": 1.0, "\\u00b5m": 1.0, "nm": 1e-3, "nanometer": 1e-3, "mm": 1e3, "millimeter": 1e3,
    "cm": 1e4, "centimeter": 1e4, "m": 1e6, "meter": 1e6,
}


def _tiff_pixel_size(tif, page) -> float | None:
    """Pixel size in um from ImageJ unit + XResolution, OME PhysicalSizeX, or a centimetre ResolutionUnit.

    Inch resolutions are ignored: they are nearly always a print/screen dpi (72, 96, 300), not a pixel size.
    """
    try:
        ome = tif.ome_metadata if tif.is_ome else None
        if ome:
            m = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', ome)
            if m:
                mu = re.search(r'PhysicalSizeXUnit="([^"]+)"', ome)
                factor = _UNIT_TO_UM.get(mu.group(1).strip().lower() if mu else "um")
                if factor:
                    v = float(m.group(1)) * factor
                    if v > 0 and math.isfinite(v):
                        return v
        tag = page.tags.get("XResolution")
        if tag is None:
            return None
        num, den = tag.value
        if not num or not den:
            return None
        px_per_unit = num / den
        unit_factor = None
        ij = tif.imagej_metadata if tif.is_imagej else None
        if ij and ij.get("unit"):
            unit_factor = _UNIT_TO_UM.get(str(ij["unit"]).strip().lower())
        if unit_factor is None:
            runit = page.tags.get("ResolutionUnit")
            if runit is not None and int(runit.value) == 3:  # centimetre
                unit_factor = 1e4
        if unit_factor is None or px_per_unit <= 0:
            return None
        v = unit_factor / px_per_unit
        return v if math.isfinite(v) and v > 0 else None
    except Exception:  # metadata is a convenience; never fail a read because of it
        return None


def _read_tiff(path: Path, plane: int | None, meta: dict) -> tuple[np.ndarray, bool, bool]:
    """Return (array, is_colour, plane_selected); colour channels (if any) are on the last axis.

    When a valid plane of a stack stored one plane per page is asked for, only that page is decoded
    (``plane_selected`` is then True); otherwise the whole series is read.
    """
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise ValueError("no image data")
        series = tif.series[0]
        page = series.pages[0] if len(series.pages) else tif.pages[0]
        axes = series.axes
        shape = tuple(series.shape)
        meta["axes"] = axes
        meta["shape"] = shape
        meta["pixel_size_um"] = _tiff_pixel_size(tif, page)
        is_colour = ("S" in axes and shape[axes.index("S")] in (3, 4)
                     and int(getattr(page, "photometric", 0)) == 2)  # PHOTOMETRIC.RGB
        plane_axes = [i for i, ax in enumerate(axes) if ax not in "YX" and not (is_colour and ax == "S")]
        n_planes = int(np.prod([shape[i] for i in plane_axes])) if plane_axes else 1
        meta["n_planes"] = n_planes
        page_shape = tuple(getattr(page, "shape", ()))
        one_plane_per_page = (n_planes > 1 and len(series.pages) == n_planes
                              and int(np.prod(page_shape)) * n_planes == int(np.prod(shape)))
        if (one_plane_per_page and isinstance(plane, (int, np.integer)) and not isinstance(plane, bool)
                and 0 <= int(plane) < n_planes and not (is_colour and axes.index("S") < len(axes) - 3)):
            data = np.asarray(series.asarray(key=int(plane)))
            selected = True
        else:
            data = np.asarray(series.asarray())
            selected = False
    if is_colour and not selected:
        data = np.moveaxis(data, axes.index("S"), -1)
    elif is_colour and selected and data.ndim == 3 and data.shape[-1] not in (3, 4):
        data = np.moveaxis(data, 0, -1)  # planar RGB page
    return data, is_colour, selected


def _select_plane(path: Path, data: np.ndarray, is_colour: bool, plane: int | None, axes: str | None) -> np.ndarray:
    spatial = 3 if is_colour else 2
    lead = data.shape[: data.ndim - spatial]
    n_planes = int(np.prod(lead)) if lead else 1
    if n_planes == 1 and plane in (None, 0):
        return data.reshape(data.shape[data.ndim - spatial:])
    if n_planes == 1:
        raise ImageReadError(path, f"plane {plane} out of range: the image has 1 plane")
    if plane is None:
        ax = f" (axes {axes})" if axes else ""
        raise ImageReadError(path, f"{len(lead) + 2}-D image with {n_planes} planes{ax}: choose a plane "
                                   f"(0..{n_planes - 1})")
    if isinstance(plane, bool) or not isinstance(plane, (int, np.integer)):
        raise ImageReadError(path, f"plane must be an integer, got {plane!r}")
    if not 0 <= int(plane) < n_planes:
        raise ImageReadError(path, f"plane {plane} out of range: the image has {n_planes} planes "
                                   f"(0..{n_planes - 1})")
    return data.reshape((n_planes,) + data.shape[data.ndim - spatial:])[int(plane)]


def _read_pil(path: Path, fmt: str, meta: dict) -> tuple[np.ndarray, bool, bool]:
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        mode = im.mode
        n_frames = getattr(im, "n_frames", 1)
        if mode == "P":
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        elif mode in ("LA", "PA"):
            im = im.convert("L")
        elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            im = im.convert("RGB")
        data = np.asarray(im)
    meta["axes"] = "YXS" if data.ndim == 3 else "YX"
    meta["shape"] = tuple(data.shape)
    meta["n_planes"] = n_frames
    meta["pixel_size_um"] = None  # PNG/JPEG carry only a print dpi, not a pixel size
    if mode in ("I;16B", "I;16L", "I;16", "I;16N"):
        data = data.astype(np.uint16)
    if n_frames > 1:
        raise ImageReadError(path, f"animated {fmt.upper()} with {n_frames} frames is not supported")
    return data, data.ndim == 3, False


def read_image_with_meta(path: str | os.PathLike, plane: int | None = None, *, colour: str = "luminance",
                         colour_tolerance: float = 8.0, allow_constant: bool = False) -> tuple[np.ndarray, dict]:
    """Read one 2-D grey image and its metadata; see :func:`read_image` for the rules.

    Returns
    -------
    image : numpy.ndarray
        2-D array in the file's dtype, native byte order.
    meta : dict
        ``path``, ``format`` ("tiff", "png", "jpeg"), ``dtype`` (str), ``shape`` (as stored), ``axes``
        (tifffile axes codes, e.g. "YX", "ZYX", "YXS"), ``n_planes``, ``plane`` (the plane read or None),
        ``pixel_size_um`` (float or None: from ImageJ unit + resolution, OME PhysicalSizeX or a centimetre
        TIFF resolution), ``colour`` (None, or how a colour image was made grey).
    """
    if colour not in ("luminance", "error"):
        raise ValueError(f"colour must be 'luminance' or 'error', got {colour!r}")
    p = Path(path)
    meta: dict = {"path": str(p), "format": None, "dtype": None, "shape": None, "axes": None,
                  "n_planes": 1, "plane": plane, "pixel_size_um": None, "colour": None}
    if not p.exists():
        raise ImageReadError(p, "no such file")
    if p.is_dir():
        raise ImageReadError(p, "is a folder, not an image file")
    try:
        size = p.stat().st_size
        with open(p, "rb") as fh:
            head = fh.read(16)
    except OSError as e:
        raise ImageReadError(p, f"cannot be read ({e.strerror or e})") from e
    if size == 0:
        raise ImageReadError(p, "empty file (0 bytes)")
    fmt = _sniff(head)
    if fmt is None:
        raise ImageReadError(p, "not a supported image (TIFF, PNG or JPEG): unrecognised file content")
    meta["format"] = fmt
    try:
        if fmt == "tiff":
            data, is_colour, selected = _read_tiff(p, plane, meta)
        else:
            data, is_colour, selected = _read_pil(p, fmt, meta)
    except ImageReadError:
        raise
    except MemoryError:
        raise
    except Exception as e:  # tifffile/PIL raise many types for truncated or corrupt files
        msg = str(e) or type(e).__name__
        low = msg.lower()
        kind = "truncated file" if ("truncat" in low or "failed to read" in low or "unexpected end" in low
                                    or "not enough" in low or "buffer is smaller" in low) else "corrupt file"
        raise ImageReadError(p, f"{kind}, cannot decode {fmt.upper()} ({msg})") from e
    data = _native(np.asarray(data))
    _check_dtype(p, data)
    if not selected:
        data = _select_plane(p, data, is_colour, plane, meta.get("axes"))
    if is_colour:
        data = _to_grey(p, data, colour, colour_tolerance, meta)
    if data.ndim != 2 or min(data.shape) < 1:
        raise ImageReadError(p, f"not a 2-D image (shape {data.shape})")
    if data.dtype.kind == "f":
        finite = np.isfinite(data)
        if not finite.all():
            n_nan = int(np.isnan(data).sum())
            n_inf = int(data.size - finite.sum()) - n_nan
            raise ImageReadError(p, f"contains non-finite values ({n_nan} NaN, {n_inf} Inf)")
    if not allow_constant:
        lo, hi = data.min(), data.max()
        if lo == hi:
            raise ImageReadError(p, f"constant image (every pixel is {lo.item()!r})")
    meta["dtype"] = str(data.dtype)
    return np.ascontiguousarray(data), meta


def read_image(path: str | os.PathLike, plane: int | None = None, *, colour: str = "luminance",
               colour_tolerance: float = 8.0, allow_constant: bool = False) -> np.ndarray:
    """Read one 2-D grey image, validated, in the file's dtype.

    Parameters
    ----------
    path : str or path-like
        TIFF (incl. BigTIFF, big-endian, ImageJ hyperstacks), PNG or JPEG file.
    plane : int, optional
        Plane to read from a stack (numbered in C order over all non-YX axes). Required when the file holds
        more than one plane.
    colour : {"luminance", "error"}
        What to do with a colour image whose channels differ by more than ``colour_tolerance``: convert by
        luminance with a :class:`ColourImageWarning` (default), or raise :class:`ImageReadError`.
    colour_tolerance : float
        Largest channel difference (in grey levels of the file's dtype) still treated as a grey image.
        The default 8 absorbs JPEG chroma noise on grey content.
    allow_constant : bool
        Accept an image whose pixels are all equal (e.g. an empty mask). Default False: a constant image is
        almost always a failed acquisition or export.

    Returns
    -------
    numpy.ndarray
        2-D, C-contiguous, native byte order, the file's dtype.

    Raises
    ------
    ImageReadError
        With the file name and the problem (see the module docstring).
    """
    return read_image_with_meta(path, plane, colour=colour, colour_tolerance=colour_tolerance,
                                allow_constant=allow_constant)[0]


# ----------------------------------------------------------------------------------------------- listing


def _is_image_name(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def list_images(paths: str | os.PathLike | Iterable[str | os.PathLike], recursive: bool = False) -> list[Path]:
    """Expand files, folders and glob patterns into a sorted, de-duplicated list of image files.

    Parameters
    ----------
    paths : path or iterable of paths
        Files (must have an image suffix), folders (their image files; sub-folders only with
        ``recursive=True``) and glob patterns (``*``, ``?``, ``[...]``;
        ``**`` matches sub-folders when ``recursive=True``).
    recursive : bool
        Descend into sub-folders of given folders.

    Returns
    -------
    list of pathlib.Path
        Files with suffix .tif .tiff .png .jpg .jpeg (any case), hidden files (name starting with ".")
        skipped, sorted by path string, duplicates (same resolved file) removed. May be empty (an empty
        folder or a pattern matching nothing); callers decide whether that is an error.

    Raises
    ------
    ImageReadError
        A path that is neither an existing file, an existing folder nor a glob pattern; or a file given
        explicitly whose suffix is not an image suffix.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: list[Path] = []
    for item in paths:
        p = Path(item)
        s = str(item)
        if p.is_dir():
            it = p.rglob("*") if recursive else p.iterdir()
            found.extend(q for q in it if q.is_file() and _is_image_name(q)
                         and not any(part.startswith(".") for part in q.relative_to(p).parts))
        elif p.is_file():
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                raise ImageReadError(p, f"not an image file name (expected one of {', '.join(IMAGE_SUFFIXES)})")
            found.append(p)
        elif glob.has_magic(s):
            found.extend(Path(q) for q in glob.glob(s, recursive=recursive)
                         if Path(q).is_file() and _is_image_name(Path(q)))
        else:
            raise ImageReadError(p, "no such file or folder")
    seen: set = set()
    out: list[Path] = []
    for q in sorted(found, key=lambda x: str(x)):
        key = os.path.realpath(q)
        if key not in seen:
            seen.add(key)
            out.append(q)
    return out
