"""Predict on image files and write the per-image outputs: the one routine behind ``artseg predict`` and
``artseg batch``.

Per image (chosen by :class:`PredictOptions`), in ``out_dir``::

    <name>_mask.tif      uint8 0/255 artifact mask (ImageJ-compatible)
    <name>_prob.tif      float32 U-Net probability (all zeros when the classifier gate skipped the U-Net)
    <name>_rois.zip      ImageJ ROI set, one polygon outline per artifact object
    <name>_cleaned.tif   the image with artifact pixels filled (median or background fit + noise)
    <name>_overlay.png   the image with artifact outlines

and one CSV row (:data:`CSV_COLUMNS`). A bad image never raises: its row carries ``status=error`` and the message.
"""
from __future__ import annotations

import csv
import io as _stdio
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from artseg_core.io.images import ImageReadError, read_image_with_meta
from artseg_core.io.files import write_text

log = logging.getLogger("artseg.predict")

CSV_COLUMNS = ["image", "p_artifact", "flagged", "segmented", "area_fraction", "n_objects", "focus",
               "illumination", "saturation", "defocus", "bad_illumination", "saturated", "status", "error"]
FILL_METHODS = ("median", "background")


@dataclass
class PredictOptions:
    """What to compute and write for each image."""

    mask: bool = True
    prob: bool = False
    roi: bool = False
    cleaned: str | None = None        # None | "median" | "background"
    overlay: bool = False
    objects: bool = False              # per-object CSV <name>_objects.csv
    plane: int | None = None
    gate: bool = True
    threshold: float | None = None
    min_size: int | None = None        # pixels (area)
    min_size_um: float | None = None   # um^2 (area), needs a pixel size
    pixel_size: float | None = None    # um/pixel; None = from the file's metadata when present
    rescale: bool = False              # resample to the model's pixel size (ArtifactModel.predict(rescale=))

    def __post_init__(self):
        if self.cleaned is not None and self.cleaned not in FILL_METHODS:
            raise ValueError(f"cleaned must be one of {FILL_METHODS}, got {self.cleaned!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def output_paths(out_dir: Path, name: str) -> dict[str, Path]:
    """Where the outputs of the image called ``name`` go."""
    out_dir = Path(out_dir)
    return {"mask": out_dir / f"{name}_mask.tif", "prob": out_dir / f"{name}_prob.tif",
            "roi": out_dir / f"{name}_rois.zip", "cleaned": out_dir / f"{name}_cleaned.tif",
            "overlay": out_dir / f"{name}_overlay.png", "objects": out_dir / f"{name}_objects.csv"}


def error_row(image: str, message: str) -> dict[str, Any]:
    row: dict[str, Any] = {c: "" for c in CSV_COLUMNS}
    row.update(image=image, status="error", error=message)
    return row


def process_file(model, path, out_dir, options: PredictOptions | None = None, name: str | None = None
                 ) -> dict[str, Any]:
    """Read one image, predict, write the chosen outputs atomically; return its CSV row.

    Never raises for a bad image or a failed write: the row gets ``status="error"`` and the message
    (``"<file>: <problem>"``). Outputs already written by earlier images are untouched.
    """
    from artseg_core.io import outputs

    opts = options or PredictOptions()
    path = Path(path)
    name = name or path.stem
    try:
        image, meta = read_image_with_meta(path, plane=opts.plane)
        px = opts.pixel_size if opts.pixel_size is not None else meta.get("pixel_size_um")
        if opts.min_size_um is not None and px is None:
            raise ImageReadError(path, "--min-size-um needs a pixel size (--pixel-size or TIFF metadata)")
        res = model.predict(image, gate=opts.gate, threshold=opts.threshold, min_size=opts.min_size,
                            pixel_size=px, min_size_um=opts.min_size_um, fill=opts.cleaned, rescale=opts.rescale)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = output_paths(out_dir, name)
        if opts.mask:
            outputs.write_mask_tiff(paths["mask"], res.mask)
        if opts.prob:
            outputs.write_prob_tiff(paths["prob"], res.prob if res.prob is not None
                                    else np.zeros(image.shape, np.float32))
        if opts.roi:
            outputs.write_roi_zip(res.labels, paths["roi"])
        if opts.cleaned:
            outputs.write_cleaned(paths["cleaned"], res.cleaned)
        if opts.overlay:
            outputs.write_overlay_png(paths["overlay"], image, res.mask)
        if opts.objects:
            write_csv(paths["objects"], res.objects)
    except (ImageReadError, ValueError, OSError) as e:
        msg = str(e) if str(path) in str(e) else f"{path}: {e}"
        log.error("%s", msg)
        return error_row(str(path), msg)
    except Exception as e:  # an engine failure on one image must not stop a plate
        log.exception("unexpected failure on %s", path)
        return error_row(str(path), f"{path}: unexpected error: {type(e).__name__}: {e}")
    return {"image": str(path), **res.row(), "status": "ok", "error": ""}


def csv_text(rows: Iterable[dict], columns: list[str] | None = None) -> str:
    rows = list(rows)
    cols = columns or (list(rows[0].keys()) if rows else CSV_COLUMNS)
    buf = _stdio.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


def write_csv(path, rows: Iterable[dict], columns: list[str] | None = None) -> Path:
    """Write rows as CSV atomically."""
    return write_text(path, csv_text(rows, columns))


def predict_files(model, paths: Iterable, out_dir, options: PredictOptions | None = None, csv_path=None,
                  progress: bool = False) -> list[dict]:
    """Run :func:`process_file` over many files; write the results CSV (after every image, atomically)."""
    paths = list(paths)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = Path(csv_path) if csv_path is not None else out_dir / "artseg_results.csv"
    rows: list[dict] = []
    names = unique_names(paths)
    it = zip(paths, names)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(list(it), desc="predict", unit="img")
    for p, n in it:
        rows.append(process_file(model, p, out_dir, options, name=n))
        write_csv(csv_path, rows, CSV_COLUMNS)
    if not rows:
        write_csv(csv_path, rows, CSV_COLUMNS)
    return rows


def unique_names(paths: list) -> list[str]:
    """Output names: the file stem, made unique with the parent folder name when stems collide."""
    stems = [Path(p).stem for p in paths]
    out = []
    for p, s in zip(paths, stems):
        if stems.count(s) > 1:
            s = f"{Path(p).parent.name}_{s}"
        out.append(s)
    seen: dict[str, int] = {}
    final = []
    for s in out:
        k = seen.get(s, 0)
        seen[s] = k + 1
        final.append(s if k == 0 else f"{s}_{k}")
    return final
