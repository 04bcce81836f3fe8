"""Labelled training sets: a folder plus ``labels.csv``, or ``clean/`` and ``artifact/`` folders, and optional masks."""
from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from artseg_core.io.images import ImageReadError, list_images, read_image

_WORD = {0: "clean", 1: "artifact"}
CLEAN_WORDS = {"clean", "0", "no", "false", "ok", "good"}
ARTIFACT_WORDS = {"artifact", "artefact", "1", "yes", "true", "has artifact", "has_artifact", "bad"}


class LabelFileError(ValueError):
    """A labels CSV that cannot be used; the message names the file, line and problem."""


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int                   # 0 = clean, 1 = artifact
    mask_path: Path | None = None


def parse_label(value: str) -> int:
    v = str(value).strip().lower()
    if v in CLEAN_WORDS:
        return 0
    if v in ARTIFACT_WORDS:
        return 1
    raise ValueError(f"unknown label {value!r} (use clean or artifact)")


def iter_label_rows(csv_path) -> Iterator[tuple[int, str, int]]:
    """The rows of an ``image,label`` CSV: ``(line number, image as written, 0 clean | 1 artifact)``.

    Column names are matched without regard to case or surrounding spaces; rows with an empty image are skipped.

    Raises
    ------
    LabelFileError
        The columns are missing, or a label is not a clean/artifact word (the message names the line).
    """
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        cols = {c.strip().lower(): c for c in (reader.fieldnames or [])}
        if "image" not in cols or "label" not in cols:
            raise LabelFileError(f"{csv_path}: needs columns 'image' and 'label', found {reader.fieldnames}")
        for n, row in enumerate(reader, start=2):
            name = (row[cols["image"]] or "").strip()
            if not name:
                continue
            try:
                label = parse_label(row[cols["label"]] or "")
            except ValueError as e:
                raise LabelFileError(f"{csv_path}, line {n}: {e}") from None
            yield n, name, label


def read_labels_csv(csv_path, images_dir=None, check_files: bool = True) -> list[tuple[Path, int]]:
    """Read ``image,label`` rows; image paths are relative to ``images_dir`` (default: the CSV's folder).

    With ``check_files`` every listed image must exist (a missing one is an error naming the CSV line). An image
    listed twice with the same label counts once (a warning names the lines); with two different labels it is an
    error naming both lines.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise LabelFileError(f"{csv_path}: labels file not found")
    base = Path(images_dir) if images_dir is not None else csv_path.parent
    out = []
    seen: dict[str, tuple[int, int]] = {}
    for n, name, label in iter_label_rows(csv_path):
        p = Path(name)
        if not p.is_absolute():
            p = base / p
        if check_files and not p.is_file():
            raise LabelFileError(f"{csv_path}, line {n}: image {name!r} not found (looked for {p})")
        key = os.path.normcase(os.path.realpath(p))
        if key in seen:
            first, old = seen[key]
            if old != label:
                raise LabelFileError(f"{csv_path}, lines {first} and {n}: image {name!r} is labelled both "
                                     f"{_WORD[old]} and {_WORD[label]}; keep one row")
            logging.getLogger("artseg.train").warning("%s, line %d: image %r is listed again (as on line %d); "
                                                      "counted once", csv_path, n, name, first)
            continue
        seen[key] = (n, label)
        out.append((p, label))
    if not out:
        raise LabelFileError(f"{csv_path}: no labelled images")
    return out


#: Suffixes of ImageJ ROI files accepted as masks (rasterised by :func:`read_mask`).
ROI_SUFFIXES = (".zip", ".roi")


def find_mask(masks_dir: Path | None, image_path: Path, rois: bool = False) -> Path | None:
    """The mask of an image in ``masks_dir``: same stem (or stem + ``_mask``), any supported image suffix.

    Parameters
    ----------
    masks_dir : path or None
        Folder of masks.
    image_path : path
        The image whose mask is wanted.
    rois : bool
        Also accept an ImageJ ROI set ``<stem>_rois.zip`` / ``<stem>.zip`` or a single ``<stem>_rois.roi`` /
        ``<stem>.roi`` (what ``artseg predict`` writes and Fiji's ROI Manager saves); a mask image wins.
        Read the result with :func:`read_mask`.

    Returns
    -------
    pathlib.Path or None
    """
    if masks_dir is None:
        return None
    for stem in (image_path.stem, image_path.stem + "_mask"):
        for suf in (".tif", ".tiff", ".png"):
            p = Path(masks_dir) / (stem + suf)
            if p.is_file():
                return p
    if rois:
        for stem in (image_path.stem + "_rois", image_path.stem):
            for suf in ROI_SUFFIXES:
                p = Path(masks_dir) / (stem + suf)
                if p.is_file():
                    return p
    return None


def rasterize_rois(path, shape) -> np.ndarray:
    """Rasterise an ImageJ ROI file (``.roi``) or ROI set (``.zip``) into a boolean mask.

    Area ROIs (polygon, freehand, traced, rectangle, oval, composite) are filled the way ImageJ fills them: a
    pixel is inside when its centre is; composite shapes are filled even-odd (holes stay empty). Line and point
    ROIs have no area and are ignored.

    Parameters
    ----------
    path : path
        ``.roi`` or ``.zip`` file.
    shape : tuple of int
        (height, width) of the image.

    Returns
    -------
    numpy.ndarray of bool

    Raises
    ------
    ImageReadError
        Unreadable file, or no area ROI in it.
    """
    import roifile
    from skimage.draw import polygon as fill_polygon

    path = Path(path)
    try:
        rois = roifile.roiread(path)
    except Exception as e:  # roifile raises ValueError, struct.error, zipfile.BadZipFile ...
        raise ImageReadError(path, f"not a readable ImageJ ROI file: {e}") from None
    rois = rois if isinstance(rois, list) else [rois]
    lines = {roifile.ROI_TYPE.LINE, roifile.ROI_TYPE.POLYLINE, roifile.ROI_TYPE.FREELINE, roifile.ROI_TYPE.ANGLE,
             roifile.ROI_TYPE.POINT, roifile.ROI_TYPE.NOROI}
    out = np.zeros(tuple(shape), bool)
    n_area = 0
    for roi in rois:
        if roi.roitype in lines and not roi.composite:
            continue
        n_area += 1
        for xy in roi.coordinates(multi=True):
            xy = np.asarray(xy, np.float64)
            if len(xy) < 3:
                continue
            rr, cc = fill_polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, shape=out.shape)  # pixel centres
            part = np.zeros_like(out)
            part[rr, cc] = True
            if roi.composite:
                out ^= part
            else:
                out |= part
    if rois and n_area == 0:
        raise ImageReadError(path, "the ROI file holds no area ROI (only lines or points)")
    return out


def read_mask(path, shape) -> np.ndarray:
    """A training mask as bool, checked against the image shape: an image (binary or label; all-zero allowed)
    or an ImageJ ROI file / set (:func:`rasterize_rois`).

    Raises
    ------
    ImageReadError
        Unreadable file or a mask image whose shape differs from ``shape``.
    """
    path = Path(path)
    if path.suffix.lower() in ROI_SUFFIXES:
        return rasterize_rois(path, shape)
    m = read_image(path, allow_constant=True)
    if m.shape != tuple(shape):
        raise ImageReadError(path, f"mask shape {m.shape} differs from the image shape {tuple(shape)}")
    return m > 0


def load_labeled_set(images=None, labels=None, clean=None, artifact=None, masks=None,
                     clean_only: bool = False) -> list[Sample]:
    """Collect labelled samples.

    Parameters
    ----------
    images : path, optional
        Folder of images (with ``labels``).
    labels : path or dict, optional
        ``labels.csv`` (columns image,label) or a mapping file name -> label.
    clean, artifact : path, optional
        Alternatively, one folder of clean and one of artifact images.
    masks : path, optional
        Folder of binary or label masks for some images (same stem), or ImageJ ROI sets
        (``<stem>_rois.zip`` / ``.roi``, see :func:`find_mask`).
    clean_only : bool
        Accept a set of clean images only (the zero-label mode); artifact images are then refused.
    """
    pairs: list[tuple[Path, int]] = []
    if labels is not None:
        if isinstance(labels, dict):
            base = Path(images) if images is not None else Path(".")
            pairs = [(base / k, parse_label(v)) for k, v in labels.items()]
        else:
            pairs = read_labels_csv(labels, images)
    if clean is not None:
        pairs += [(p, 0) for p in list_images([clean])]
    if artifact is not None:
        pairs += [(p, 1) for p in list_images([artifact])]
    if not pairs:
        raise LabelFileError("no training images: give a folder with labels.csv, or --clean and --artifact folders")
    n_art = sum(lbl for _, lbl in pairs)
    if clean_only:
        if n_art:
            raise LabelFileError(f"zero-label training takes clean images only, got {n_art} artifact images")
    elif n_art == 0 or n_art == len(pairs):
        raise LabelFileError(f"training needs both clean and artifact images (got {len(pairs) - n_art} clean, "
                             f"{n_art} artifact)")
    mdir = Path(masks) if masks is not None else None
    if mdir is not None and not mdir.is_dir():
        raise LabelFileError(f"{mdir}: masks folder not found")
    return [Sample(p, lbl, find_mask(mdir, p, rois=True)) for p, lbl in pairs]
