"""Predict on image files and write the per-image outputs: the one routine behind ``artseg predict`` and
``artseg batch``.

Per image (chosen by :class:`PredictOptions`), in ``out_dir``::

    <name>_mask.tif      uint8 0/255 artifact mask (ImageJ-compatible)
    <name>_prob.tif      float32 U-Net probability (all zeros when the classifier gate skipped the U-Net)
    <name>_rois.zip      ImageJ ROI set, one polygon outline per artifact object
    <name>_cleaned.tif   the image with artifact pixels filled (median or background fit + noise)
    <name>_overlay.png   the image with artifact outlines

and one CSV row (:data:`CSV_COLUMNS`, whose ``output`` column is ``<name>``). A bad image never raises: its row
carries ``status=error`` and the message.

A run over many files (:func:`run_predict`) gives every input its own ``<name>`` (:func:`unique_names`), holds the
output folder's lock for its length, and replaces the previous run's outputs in that folder as a whole (the files
it listed in ``.artseg_predict.json`` and did not write again are removed).
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from artseg_core.io.images import ImageReadError, read_image_with_meta
from artseg_core.io.files import write_text
from artseg_core.io.lock import OutputFolderError, run_lock
from artseg_core.io.results import PREDICT_COLUMNS, csv_text, write_csv
from artseg_core.io.results import error_row as _error_row

__all__ = ["PredictOptions", "CSV_COLUMNS", "FILL_METHODS", "output_paths", "error_row", "process_file",
           "csv_text", "write_csv", "predict_files", "run_predict", "PredictRun", "unique_names", "collect_inputs",
           "RUN_RECORD"]

log = logging.getLogger("artseg.predict")

#: ``artseg predict``'s CSV columns (the project's one schema, :mod:`artseg_core.io.results`)
CSV_COLUMNS = PREDICT_COLUMNS
#: the record of what a ``predict`` run wrote into its output folder (replaced as a whole by the next run)
RUN_RECORD = ".artseg_predict.json"
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
    second_opinion: bool | None = None  # ArtifactModel.predict(second_opinion=); None = the model's setting

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
    """The CSV row of an image that failed: empty engine columns, ``status=error`` and ``message``."""
    return _error_row(image, message, CSV_COLUMNS)


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
                            pixel_size=px, min_size_um=opts.min_size_um, fill=opts.cleaned, rescale=opts.rescale,
                            second_opinion=opts.second_opinion)
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
    return {"image": str(path), **res.row(), "status": "ok", "error": "", "output": name}


def _image_stem(name: str) -> str:
    low = name.lower()
    for ext in (".ome.tiff", ".ome.tif"):
        if low.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    return Path(name).stem


def unique_names(paths: list) -> list[str]:
    """One output name per input, unique and deterministic (the same list gives the same names).

    The name is the file stem (``.ome.tif`` counts as one suffix); stems shared by several inputs are prefixed
    with the parent folder's name; names still shared, or equal to another input's name, get ``~2``, ``~3`` ... in
    list order. No two inputs ever write the same files.

    Parameters
    ----------
    paths : list of path-like

    Returns
    -------
    list of str
        Same length and order as ``paths``.
    """
    stems = [_image_stem(Path(p).name) for p in paths]
    counts = Counter(stems)
    cand = []
    for p, s in zip(paths, stems):
        parent = Path(p).resolve().parent.name
        cand.append(f"{parent}_{s}" if counts[s] > 1 and parent else s)
    reserved = set(cand)
    taken: set[str] = set()
    out = []
    for c in cand:
        name, k = c, 2
        while name in taken or (name != c and name in reserved):
            name, k = f"{c}~{k}", k + 1
        taken.add(name)
        out.append(name)
    return out


def _is_under(p: Path, folder: Path) -> bool:
    try:
        p.resolve().relative_to(folder)
        return True
    except ValueError:
        return False


def collect_inputs(inputs: Iterable, recursive: bool = False, exclude=None
                   ) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand ``artseg predict``'s INPUTS into image files.

    Parameters
    ----------
    inputs : iterable of str or path-like
        Files, folders and glob patterns.
    recursive : bool
        Search folders recursively.
    exclude : path-like, optional
        A folder whose files are never inputs (the run's output folder, when it lies inside an input folder).

    Returns
    -------
    paths : list of Path
        The images, in input order, without duplicates.
    problems : list of (str, str)
        ``(input, message)`` for each input that is missing or holds no images.
    """
    from artseg_core.io.images import IMAGE_SUFFIXES, list_images

    ex = Path(exclude).resolve() if exclude is not None else None
    paths: list[Path] = []
    seen: set[str] = set()
    problems: list[str] = []
    for inp in inputs:
        try:
            found = list_images([inp], recursive=recursive)
        except ImageReadError as e:
            problems.append((str(inp), str(e)))
            continue
        if ex is not None:
            found = [f for f in found if not _is_under(f, ex)]
        if not found:
            if not Path(inp).exists() and not any(ch in str(inp) for ch in "*?["):
                problems.append((str(inp), f"{inp}: no such file or folder"))
            else:
                problems.append((str(inp), f"{inp}: no images ({' '.join(IMAGE_SUFFIXES)})"))
            continue
        for f in found:
            k = os.path.realpath(f)
            if k not in seen:
                seen.add(k)
                paths.append(f)
    return paths, problems


@dataclass
class PredictRun:
    """What :func:`run_predict` did: the CSV rows (one per input, in input order), the CSV's path, and problems
    with the output folder (e.g. the CSV could not be written) that are not any single image's fault."""

    rows: list[dict]
    csv_path: Path
    problems: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.rows if r.get("status") != "ok"]


def _planned_files(out_dir: Path, names: list[str], options: PredictOptions) -> set[str]:
    keys = [k for k in ("mask", "prob", "roi", "overlay", "objects") if getattr(options, k)]
    if options.cleaned:
        keys.append("cleaned")
    out = set()
    for n in names:
        paths = output_paths(out_dir, n)
        out.update(paths[k].name for k in keys)
    return out


def _replace_previous_run(out_dir: Path, planned: set[str], csv_name: str | None) -> int:
    """Remove what the previous run listed in the run record and this run will not write again."""
    rec_path = out_dir / RUN_RECORD
    try:
        old = json.loads(rec_path.read_text(encoding="utf-8"))
        old_files = [str(f) for f in old.get("files", [])]
    except (OSError, ValueError, AttributeError):
        old_files = []
    n = 0
    for f in old_files:
        if f in planned or f == csv_name or "/" in f or "\\" in f or f.startswith("."):
            continue  # rewritten by this run; or not a plain file name of ours
        try:
            (out_dir / f).unlink()
            n += 1
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("%s: cannot remove the previous run's output (%s)", out_dir / f, e.strerror or e)
    return n


def run_predict(model, paths: Iterable, out_dir, options: PredictOptions | None = None, csv_path=None,
                progress: bool = False, failed_inputs: Iterable[tuple[str, str]] = ()) -> PredictRun:
    """Predict on many files into one output folder, holding its lock; write the results CSV after every image.

    Parameters
    ----------
    model : ArtifactModel
    paths : iterable of path-like
        The images (see :func:`collect_inputs`).
    out_dir : path-like
        Output folder (created). Outputs of an earlier run into it that this run does not write again are
        removed first: the folder then holds one run's outputs, matching its CSV.
    options : PredictOptions, optional
    csv_path : path-like, optional
        Default ``OUT/artseg_results.csv``.
    progress : bool
        Progress bar on stderr.
    failed_inputs : iterable of (str, str)
        Inputs that are missing or hold no images, with the message: listed first in the CSV as errors.

    Returns
    -------
    PredictRun

    Raises
    ------
    OutputFolderError
        The folder is in use by another run, or cannot be created or written (nothing was processed).
    """
    opts = options or PredictOptions()
    paths = list(paths)
    out_dir = Path(out_dir)
    csv_path = Path(csv_path) if csv_path is not None else out_dir / "artseg_results.csv"
    names = unique_names(paths)
    planned = _planned_files(out_dir, names, opts)
    csv_name = csv_path.name if csv_path.resolve().parent == out_dir.resolve() else None
    problems: list[str] = []
    with run_lock(out_dir):
        removed = _replace_previous_run(out_dir, planned, csv_name)
        if removed:
            log.info("%s: removed %d output file(s) of the previous run", out_dir, removed)
        try:
            write_text(out_dir / RUN_RECORD, json.dumps({"files": sorted(planned | ({csv_name} if csv_name else
                                                                                    set()))}, indent=1) + "\n")
        except OSError as e:
            raise OutputFolderError(f"{out_dir}: cannot write to the output folder ({e.strerror or e})") from None
        rows: list[dict] = [error_row(str(inp), msg) for inp, msg in failed_inputs]
        it = zip(paths, names)
        if progress:
            from tqdm.auto import tqdm
            it = tqdm(list(it), desc="predict", unit="img")
        csv_ok = True
        for p, n in it:
            rows.append(process_file(model, p, out_dir, opts, name=n))
            csv_ok = _write_table(csv_path, rows, problems, report=csv_ok)
        if not rows or not csv_ok:
            _write_table(csv_path, rows, problems, report=False)
    return PredictRun(rows=rows, csv_path=csv_path, problems=list(dict.fromkeys(problems)))


def _write_table(csv_path: Path, rows: list[dict], problems: list[str], report: bool) -> bool:
    try:
        write_csv(csv_path, rows, CSV_COLUMNS)
        return True
    except OSError as e:
        msg = f"{csv_path}: cannot write the results table ({e.strerror or e})"
        if report:
            log.error("%s", msg)
        problems.append(msg)
        return False


def predict_files(model, paths: Iterable, out_dir, options: PredictOptions | None = None, csv_path=None,
                  progress: bool = False) -> list[dict]:
    """Run :func:`process_file` over many files; write the results CSV (after every image, atomically).

    The list form of :func:`run_predict` (same lock, names and replacement of the previous run's outputs).
    """
    return run_predict(model, paths, out_dir, options, csv_path=csv_path, progress=progress).rows
