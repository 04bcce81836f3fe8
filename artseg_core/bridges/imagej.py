"""ImageJ 1.x bridge: artifact masks and labels as ImageJ ROIs, overlays and ROI files (scyjava/JPype).

The logic behind the Fiji Python-mode script ``fiji_scripts/Mask_Artifacts.py``. It needs a running JVM with
ImageJ 1.x (``ij.jar``) on the class path: Fiji's own JVM in Fiji's Python mode or pyimagej, or the one
:func:`start_imagej1` starts (truly headless, class path = ``ij.jar`` only, never downloads a JDK).

Outlines are ImageJ's own: each object is traced by ``ThresholdToSelection`` on its pixels, so a ROI covers
exactly the object's pixels (objects with holes become composite ROIs with the holes cut out) and ImageJ's
measurements inside a ROI are measurements over the object's pixels. Objects are 8-connected, as in
:func:`artseg_core.postprocess.label_objects`; a ROI may then consist of several pieces touching at corners.

Everything Java is imported lazily, so ``import artseg_core.imagej`` works without a JVM.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from artseg_core.io.outputs import ROI_PREFIX, roi_name

__all__ = ["find_ij_jar", "start_imagej1", "open_imageplus", "to_imageplus", "from_imageplus", "image_to_array",
           "mask_to_roi",
           "labels_to_rois", "mask_to_rois", "roi_to_mask", "add_to_overlay", "save_rois", "predict_imageplus",
           "run_fiji_script", "ROI_PREFIX"]

# ROI_PREFIX: name prefix of every ArtSeg ROI (shared with the ROI zip); add_to_overlay replaces earlier ones

_IJ_JAR_CANDIDATES = ("/usr/share/java/ij.jar", "/usr/share/imagej/ij.jar")


def find_ij_jar(path: str | os.PathLike | None = None) -> Path:
    """Locate ImageJ 1.x's ``ij.jar``.

    Parameters
    ----------
    path : path, optional
        Explicit jar; otherwise ``$ARTSEG_IJ_JAR``, then Debian's ``/usr/share/java/ij.jar``.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    FileNotFoundError
        When no candidate exists (the message lists what was tried).
    """
    cands = [path] if path is not None else [os.environ.get("ARTSEG_IJ_JAR"), *_IJ_JAR_CANDIDATES]
    tried = [str(c) for c in cands if c]
    for c in cands:
        if c and Path(c).is_file():
            return Path(c)
    raise FileNotFoundError("ImageJ 1.x ij.jar not found (tried: " + ", ".join(tried)
                            + "); install Debian's libij-java or set ARTSEG_IJ_JAR")


def _jvm_started() -> bool:
    import scyjava

    return bool(scyjava.jvm_started())


def start_imagej1(ij_jar: str | os.PathLike | None = None, headless: bool = True,
                  max_heap: str | None = None) -> None:
    """Start a JVM with ImageJ 1.x on the class path, if none runs yet.

    Uses the system Java (scyjava's JDK download is disabled) and no Maven resolution. A JVM can start
    only once per Python process: when one already runs (Fiji's Python mode, pyimagej), this only checks
    that ImageJ 1.x classes are visible.

    Parameters
    ----------
    ij_jar : path, optional
        See :func:`find_ij_jar`.
    headless : bool
        Start with ``-Djava.awt.headless=true`` (no display needed; the ROI Manager is then unavailable).
    max_heap : str, optional
        JVM maximum heap, e.g. ``"2g"``.

    Raises
    ------
    FileNotFoundError
        No ``ij.jar``.
    RuntimeError
        A JVM runs but has no ImageJ 1.x on its class path.
    """
    import scyjava

    if not _jvm_started():
        jar = find_ij_jar(ij_jar)
        scyjava.config.set_java_constraints(fetch="never")
        scyjava.config.add_classpath(str(jar))
        if headless:
            scyjava.config.add_option("-Djava.awt.headless=true")
        if max_heap:
            scyjava.config.set_heap_max(max_heap)
        scyjava.start_jvm()
    try:
        scyjava.jimport("ij.IJ")
    except Exception as e:  # noqa: BLE001 - JPype raises its own ImportError subclasses
        raise RuntimeError("a JVM is running but ImageJ 1.x (ij.IJ) is not on its class path") from e


def _j(name: str):
    import scyjava

    return scyjava.jimport(name)


# ------------------------------------------------------------------------------------------- image conversion


def open_imageplus(path: str | os.PathLike):
    """Open an image file with ImageJ 1.x (``IJ.openImage``).

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        ImageJ cannot read it.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such image file")
    imp = _j("ij.IJ").openImage(str(p))
    if imp is None:
        raise ValueError(f"{p}: ImageJ cannot open this file")
    return imp


def to_imageplus(array: np.ndarray, title: str = "image"):
    """A 2-D numpy array as an ImageJ 1.x ``ImagePlus`` (a copy).

    bool and uint8 become 8-bit (bool as 0/255), uint16 16-bit, everything else 32-bit float.

    Parameters
    ----------
    array : ndarray
        2-D image.
    title : str
        Image title.

    Returns
    -------
    ij.ImagePlus
    """
    import jpype

    a = np.asarray(array)
    if a.ndim != 2:
        raise ValueError(f"to_imageplus: expected a 2-D image, got shape {a.shape}")
    h, w = a.shape
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.dtype == np.uint8:
        pix = jpype.JArray(jpype.JByte)(np.ascontiguousarray(a).ravel().view(np.int8))
        ip = _j("ij.process.ByteProcessor")(w, h, pix)
    elif a.dtype == np.uint16:
        pix = jpype.JArray(jpype.JShort)(np.ascontiguousarray(a).ravel().view(np.int16))
        ip = _j("ij.process.ShortProcessor")(w, h, pix, None)
    else:
        pix = jpype.JArray(jpype.JFloat)(np.ascontiguousarray(a, dtype=np.float32).ravel())
        ip = _j("ij.process.FloatProcessor")(w, h, pix)
    ip.resetMinAndMax()
    return _j("ij.ImagePlus")(title, ip)


def from_imageplus(imp) -> np.ndarray:
    """The current plane of an ``ImagePlus`` as a numpy array (a copy).

    8-bit -> uint8, 16-bit -> uint16, 32-bit -> float32, RGB -> uint8 (H, W, 3).
    """
    ip = imp.getProcessor()
    w, h = int(ip.getWidth()), int(ip.getHeight())
    pixels = np.array(ip.getPixels())
    kind = int(imp.getBitDepth())
    if kind == 8:
        return pixels.view(np.uint8).reshape(h, w).copy()
    if kind == 16:
        return pixels.view(np.uint16).reshape(h, w).copy()
    if kind == 32:
        return pixels.astype(np.float32, copy=False).reshape(h, w).copy()
    if kind == 24:
        rgb = pixels.astype(np.int64).reshape(h, w)
        return np.stack([(rgb >> 16) & 255, (rgb >> 8) & 255, rgb & 255], axis=-1).astype(np.uint8)
    raise ValueError(f"from_imageplus: unsupported bit depth {kind}")


def image_to_array(image, ij=None) -> np.ndarray:
    """A Java image as a 2-D numpy array.

    An ImageJ 1.x ``ImagePlus`` gives its current plane (:func:`from_imageplus`); any other image (an ImageJ2
    ``Dataset``, an ImgLib2 ``Img``) goes through pyimagej's ``ij.py.from_java`` (needs the ImageJ2 gateway
    ``ij``) and must have a single plane; a numpy array is passed through.

    Raises
    ------
    ValueError
        More than one plane, or an ImageJ2 image without ``ij``.
    """
    if isinstance(image, np.ndarray):
        arr = image
    else:
        try:
            is_imp = isinstance(image, _j("ij.ImagePlus"))
        except Exception:  # noqa: BLE001 - no ImageJ 1.x on the class path
            is_imp = False
        if is_imp:
            arr = from_imageplus(image)
        elif ij is None:
            raise ValueError(f"image_to_array: {type(image).__name__} needs the ImageJ2 gateway (ij) to convert")
        else:
            arr = np.asarray(ij.py.from_java(image))
    if arr.ndim > 2:
        arr = np.squeeze(arr)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):  # RGB: luminance, as artseg_core.io reads colour files
        rgb = arr[..., :3].astype(np.float64)
        grey = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
        arr = np.rint(grey).astype(arr.dtype) if arr.dtype.kind in "ui" else grey.astype(np.float32)
    if arr.ndim != 2:
        raise ValueError(f"image_to_array: expected one 2-D plane, got shape {arr.shape}; choose a plane first")
    return arr


# ------------------------------------------------------------------------------------------- masks -> ROIs


def _trace(binary: np.ndarray):
    """ROI of the nonzero pixels of a small uint8/bool crop (None when empty), at the crop's origin."""
    import jpype

    b = np.ascontiguousarray(np.where(np.asarray(binary), 255, 0).astype(np.uint8))
    h, w = b.shape
    bp_cls = _j("ij.process.ByteProcessor")
    bp = bp_cls(w, h, jpype.JArray(jpype.JByte)(b.ravel().view(np.int8)))
    bp.setThreshold(255.0, 255.0, bp_cls.NO_LUT_UPDATE)
    return _j("ij.plugin.filter.ThresholdToSelection")().convert(bp)


def mask_to_roi(mask: np.ndarray, name: str = ROI_PREFIX + "all"):
    """One ROI covering all foreground pixels of a 2-D mask (composite for several objects), or None if empty."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask_to_roi: expected a 2-D mask, got shape {m.shape}")
    if not m.any():
        return None
    roi = _trace(m != 0)
    roi.setName(name)
    return roi


def labels_to_rois(labels: np.ndarray, prefix: str = ROI_PREFIX, color: str | None = None) -> list:
    """One ImageJ ROI per labelled object, traced on the object's own pixels.

    Parameters
    ----------
    labels : ndarray of int
        2-D label image: 0 background, 1..n objects (gaps allowed).
    prefix : str
        ROI names are ``prefix`` + the label with at least 3 digits; with the default prefix exactly
        :func:`artseg_core.io.outputs.roi_name` (``artifact-001``), the names of the ROI zip.
    color : str, optional
        Stroke colour (an ImageJ colour name or ``#rrggbb``).

    Returns
    -------
    list of ij.gui.Roi
        In label order; ROI ``i`` covers exactly the pixels ``labels == label_i``.
    """
    from scipy import ndimage as ndi

    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ValueError(f"labels_to_rois: expected a 2-D label image, got shape {lab.shape}")
    if lab.dtype == bool or not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"labels_to_rois: expected integer labels, got {lab.dtype}; use mask_to_rois for masks")
    if lab.size and lab.min() < 0:
        raise ValueError("labels_to_rois: negative labels")
    colour = _j("ij.plugin.Colors").decode(color, None) if color else None
    rois = []
    for idx, sl in enumerate(ndi.find_objects(lab)):
        if sl is None:
            continue
        label = idx + 1
        roi = _trace(lab[sl] == label)
        if roi is None:
            continue
        roi.setLocation(float(roi.getXBase() + sl[1].start), float(roi.getYBase() + sl[0].start))
        roi.setName(roi_name(label) if prefix == ROI_PREFIX else f"{prefix}{label:03d}")
        if colour is not None:
            roi.setStrokeColor(colour)
        rois.append(roi)
    return rois


def mask_to_rois(mask: np.ndarray, prefix: str = ROI_PREFIX, color: str | None = None) -> list:
    """One ROI per 8-connected object of a boolean mask (see :func:`labels_to_rois`)."""
    from artseg_core.imgproc.postprocess import label_objects

    return labels_to_rois(label_objects(np.asarray(mask) != 0), prefix=prefix, color=color)


def roi_to_mask(roi, shape: tuple[int, int]) -> np.ndarray:
    """The pixels ImageJ counts as inside ``roi`` (its own rasterisation), as a boolean array of ``shape``."""
    h, w = int(shape[0]), int(shape[1])
    out = np.zeros((h, w), dtype=bool)
    r = roi.getBounds()
    x0, y0, rw, rh = int(r.x), int(r.y), int(r.width), int(r.height)
    m = roi.getMask()
    if m is None:  # a rectangle
        inside = np.ones((rh, rw), dtype=bool)
    else:
        inside = np.array(m.getPixels()).view(np.uint8).reshape(int(m.getHeight()), int(m.getWidth())) != 0
    ys, xs = max(y0, 0), max(x0, 0)
    ye, xe = min(y0 + rh, h), min(x0 + rw, w)
    if ye > ys and xe > xs:
        out[ys:ye, xs:xe] = inside[ys - y0:ye - y0, xs - x0:xe - x0]
    return out


def add_to_overlay(imp, rois: Iterable, color: str | None = "yellow", replace: bool = True):
    """Add ROIs to an image's overlay (created if missing); returns the ``Overlay``.

    With ``replace`` the ROIs named ``ROI_PREFIX...`` from an earlier run are removed first; other overlay
    elements stay.
    """
    overlay = imp.getOverlay()
    if overlay is None:
        overlay = _j("ij.gui.Overlay")()
    if replace:
        for i in range(int(overlay.size()) - 1, -1, -1):
            name = overlay.get(i).getName()
            if name is not None and str(name).startswith(ROI_PREFIX):
                overlay.remove(i)
    colour = _j("ij.plugin.Colors").decode(color, None) if color else None
    for roi in rois:
        if colour is not None and roi.getStrokeColor() is None:
            roi.setStrokeColor(colour)
        overlay.add(roi)
    imp.setOverlay(overlay)
    return overlay


def save_rois(rois: Sequence, path: str | os.PathLike) -> Path:
    """Save ROIs in ImageJ's own format (``RoiEncoder``): one ROI as ``.roi``, any number as a ``.zip`` set.

    The zip holds ``<roi name>.roi`` entries, as the ROI Manager writes; written atomically.

    Raises
    ------
    ValueError
        A ``.roi`` path with other than exactly one ROI, or another suffix.
    """
    from artseg_core.io.files import atomic_write

    path = Path(path)
    encoder = _j("ij.io.RoiEncoder")
    rois = list(rois)
    suffix = path.suffix.lower()
    if suffix == ".roi":
        if len(rois) != 1:
            raise ValueError(f"{path}: a .roi file holds exactly one ROI, got {len(rois)}; use .zip")
        with atomic_write(path, "wb") as fh:
            fh.write(bytes(np.array(encoder.saveAsByteArray(rois[0])).view(np.uint8)))
        return path
    if suffix != ".zip":
        raise ValueError(f"{path}: ROI files end in .roi or .zip")
    with atomic_write(path, "wb") as fh:
        with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            used: set[str] = set()
            for i, roi in enumerate(rois):
                name = str(roi.getName() or roi_name(i + 1))
                entry, k = name, 1
                while entry in used:
                    entry, k = f"{name}-{k}", k + 1
                used.add(entry)
                zf.writestr(entry + ".roi", bytes(np.array(encoder.saveAsByteArray(roi)).view(np.uint8)))
    return path


# ------------------------------------------------------------------------------------------- the Fiji script

def _cached_model(model_file: str | os.PathLike):
    """The model in ``model_file`` from the engine's one model cache (:mod:`artseg_core.predict.cache`)."""
    from artseg_core.predict.cache import load_model_cached

    p = Path(model_file)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: model file not found")
    return load_model_cached(p, device="auto")


def predict_imageplus(model, imp, ij=None, **predict_kwargs):
    """Run the engine on an image and return ImageJ objects.

    Parameters
    ----------
    model : ArtifactModel or path
        A loaded model or a model file (loaded once and cached while unchanged).
    imp : ij.ImagePlus or other image
        See :func:`image_to_array` (an ``ImagePlus`` gives its current plane).
    ij : ImageJ2 gateway, optional
        Only for images that are not ``ImagePlus``.
    **predict_kwargs
        Passed to ``ArtifactModel.predict`` (``gate``, ``threshold``, ``min_size``, ``fill`` ...).

    Returns
    -------
    result : artseg_core.predict.model.Result
    mask : ij.ImagePlus
        8-bit 0/255 mask titled ``<title>_mask``.
    rois : list of ij.gui.Roi
        One per artifact object (:func:`labels_to_rois` of ``result.labels``).
    """
    if isinstance(model, (str, os.PathLike)):
        model = _cached_model(model)
    arr = image_to_array(imp, ij)
    result = model.predict(arr, **predict_kwargs)
    title = str(imp.getTitle()) if hasattr(imp, "getTitle") else "image"
    base = title.rsplit(".", 1)[0] if "." in title[1:] else title
    mask = to_imageplus(np.asarray(result.mask, dtype=bool), f"{base}_mask")
    rois = labels_to_rois(result.labels)
    return result, mask, rois


def run_fiji_script(imp, model_file: str | os.PathLike, output_dir: str | os.PathLike | None = None,
                    cleaned: str = "none", threshold: float | None = None, gate: bool = True, ij=None,
                    show_mask: bool = True, show_cleaned: bool = True) -> dict:
    """What ``Mask_Artifacts.py`` does in Fiji: predict, outline, optionally save; returns the pieces.

    Adds the outlines to the image's overlay (replacing earlier ArtSeg outlines) and, when ImageJ has a
    display, to the ROI Manager, and shows the mask and the cleaned image (``show_mask``, ``show_cleaned``).
    With ``output_dir`` writes ``<name>_mask.tif``, ``<name>_rois.zip`` (ImageJ's RoiEncoder) and, with
    ``cleaned``, ``<name>_cleaned.tif``.

    Returns
    -------
    dict
        ``result`` (engine Result), ``mask`` (ImagePlus), ``rois`` (list of Roi), ``cleaned`` (ImagePlus or
        None), ``files`` (list of written paths), ``row`` (the CSV row, as ``artseg predict`` writes it).
    """
    from artseg_core import io as aio

    if cleaned not in ("none", "median", "background"):
        raise ValueError(f"cleaned must be none, median or background, not {cleaned!r}")
    fill = None if cleaned == "none" else cleaned
    result, mask, rois = predict_imageplus(model_file, imp, ij=ij, gate=gate, threshold=threshold, fill=fill)
    add_to_overlay(imp, rois)
    cleaned_imp = None
    if result.cleaned is not None:
        cleaned_imp = to_imageplus(np.asarray(result.cleaned), f"{str(mask.getTitle())[:-5]}_cleaned")
    files: list[Path] = []
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        name = str(mask.getTitle())[:-5]
        files.append(aio.write_tiff(out / f"{name}_mask.tif", np.asarray(result.mask, dtype=np.uint8) * 255))
        if rois:
            files.append(save_rois(rois, out / f"{name}_rois.zip"))
        if result.cleaned is not None:
            files.append(aio.write_tiff(out / f"{name}_cleaned.tif", np.asarray(result.cleaned)))
    if not bool(_j("java.awt.GraphicsEnvironment").isHeadless()):
        rm_cls = _j("ij.plugin.frame.RoiManager")
        rm = rm_cls.getInstance() or rm_cls()
        rm.reset()
        for roi in rois:
            rm.addRoi(roi)
        if show_mask:
            mask.show()
        if show_cleaned and cleaned_imp is not None:
            cleaned_imp.show()
        imp.updateAndDraw()
    return {"result": result, "mask": mask, "rois": rois, "cleaned": cleaned_imp, "files": files,
            "row": {"image": str(imp.getTitle()), **result.row(), "status": "ok", "error": ""}}
