"""Labelled training sets: a folder plus ``labels.csv``, or ``clean/`` and ``artifact/`` folders, and optional masks."""
from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from artseg_core.io.images import list_images

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
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        cols = {c.strip().lower(): c for c in (reader.fieldnames or [])}
        if "image" not in cols or "label" not in cols:
            raise LabelFileError(f"{csv_path}: needs columns 'image' and 'label', found {reader.fieldnames}")
        for n, row in enumerate(reader, start=2):
            name = (row[cols["image"]] or "").strip()
            if not name:
                continue
            p = Path(name)
            if not p.is_absolute():
                p = base / p
            if check_files and not p.is_file():
                raise LabelFileError(f"{csv_path}, line {n}: image {name!r} not found (looked for {p})")
            try:
                label = parse_label(row[cols["label"]])
            except ValueError as e:
                raise LabelFileError(f"{csv_path}, line {n}: {e}") from None
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


def find_mask(masks_dir: Path | None, image_path: Path) -> Path | None:
    """The mask of an image in ``masks_dir``: same stem (or stem + ``_mask``), any supported image suffix."""
    if masks_dir is None:
        return None
    for stem in (image_path.stem, image_path.stem + "_mask"):
        for suf in (".tif", ".tiff", ".png"):
            p = Path(masks_dir) / (stem + suf)
            if p.is_file():
                return p
    return None


def load_labeled_set(images=None, labels=None, clean=None, artifact=None, masks=None) -> list[Sample]:
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
        Folder of binary or label masks for some images (same stem).
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
    if n_art == 0 or n_art == len(pairs):
        raise LabelFileError(f"training needs both clean and artifact images (got {len(pairs) - n_art} clean, "
                             f"{n_art} artifact)")
    mdir = Path(masks) if masks is not None else None
    if mdir is not None and not mdir.is_dir():
        raise LabelFileError(f"{mdir}: masks folder not found")
    return [Sample(p, lbl, find_mask(mdir, p)) for p, lbl in pairs]
