"""A CellProfiler pipeline run (``artseg batch --pipeline``) read as the plate's result rows, for the plate report.

What such a run folder holds: ``cp_shards/settings.json`` (what the run was made from, written by
:mod:`.cpshard`), ``cp_shards/journal.jsonl`` (one line per shard of image sets) and the shards'
ExportToSpreadsheet tables, merged into ``OUT``. The per-image table (``Image.csv``, or ``<prefix>Image.csv``)
has one row per image set; :func:`read_pipeline_run` turns each into a row with the columns of ``results.csv``,
filled as far as the pipeline measured them:

* plate, well, field: ``Metadata_Plate``, ``Metadata_Well`` (or ``Metadata_Row`` and ``Metadata_Column``),
  ``Metadata_Site`` (or ``Metadata_Field``); what the metadata lacks is read from the image's file name the way
  ``artseg batch`` reads it (:func:`~artseg_core.batch.platenames.parse_name`);
* ``image`` and ``path``: ``PathName_X``/``FileName_X`` of the image MaskArtifacts ran on (else of an image whose
  name says brightfield, else of the first image); ``channel`` is that image's name in the pipeline;
* the engine's columns from the MaskArtifacts module's measurements (``MaskArtifacts_Probability`` is
  ``p_artifact``, then ``Flagged``, ``Segmented``, ``AreaFraction``, the QC scores and flags) and ``n_objects``
  from ``Count_<its artifact objects>``; they stay empty when the pipeline has no MaskArtifacts module;
* ``status`` is ``error`` (the modules named in ``error``) when a ``ModuleError_*`` column is set;
* ``counts``: the image's ``Count_<objects>`` measurements (the pipeline's own object counts).

:func:`describe_pipeline` reads, when the pipeline is run, what its MaskArtifacts module uses (image, objects,
model file) and that model's thresholds, under the keys the engine's plate run records in ``batch.json``.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from artseg_core.batch.journal import read_journal
from artseg_core.batch.layout import JOURNAL, PIPELINE_SETTINGS, PIPELINE_WORK
from artseg_core.batch.platenames import ImageName, looks_brightfield, parse_name, row_index, split_well, well_name
from artseg_core.batch.tables import as_float

__all__ = ["PipelineRun", "is_pipeline_run", "read_pipeline_run", "pipeline_rows", "maskartifacts_settings",
           "describe_pipeline", "MEASUREMENTS"]

MODULE = "MaskArtifacts"
#: MaskArtifacts measurement (Image table column ``MaskArtifacts_<name>``) -> results.csv column
MEASUREMENTS = {"Probability": "p_artifact", "Flagged": "flagged", "Segmented": "segmented",
                "AreaFraction": "area_fraction", "Focus": "focus", "Illumination": "illumination",
                "Saturation": "saturation", "Defocus": "defocus", "BadIllumination": "bad_illumination",
                "Saturated": "saturated"}
_BOOLEAN = {"flagged", "segmented", "defocus", "bad_illumination", "saturated"}
#: the MaskArtifacts settings read from a pipeline's text (setting text -> key)
_SETTINGS = {"Select the brightfield image": "image", "Name the artifact objects": "objects",
             "Model file location": "model_location", "Model file name": "model_file"}


@dataclass
class PipelineRun:
    """What a pipeline run folder holds, read for the report."""

    rows: list[dict]
    settings: dict
    image_table: str | None = None
    tables: list[str] = field(default_factory=list)
    shards: list[dict] = field(default_factory=list)
    experiment: dict = field(default_factory=dict)
    n_image_sets: int = 0


def is_pipeline_run(out_dir) -> bool:
    """Whether ``out_dir`` holds a pipeline run (``cp_shards/settings.json``)."""
    return (Path(out_dir) / PIPELINE_WORK / PIPELINE_SETTINGS).is_file()


# ------------------------------------------------------------------------------------------- the pipeline


def maskartifacts_settings(text: str) -> dict | None:
    """The settings of the first enabled MaskArtifacts module in a pipeline's text (a ``.cppipe`` file, or the
    ``Pipeline_Pipeline`` value of ``Experiment.csv``): ``image``, ``objects``, ``model_location``,
    ``model_file``. None when the pipeline has no such module."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(MODULE + ":[") and "enabled:False" not in line:
            found = {}
            for s in lines[i + 1:]:
                if not s.startswith(" "):  # a blank line ends the module's settings
                    break
                key, _, value = s.strip().partition(":")
                if key in _SETTINGS and _SETTINGS[key] not in found:
                    found[_SETTINGS[key]] = value
            return found
    return None


def _model_file(ma: dict, input_dir) -> Path | None:
    """The model file a MaskArtifacts module reads (None when it lies in the per-shard output folder)."""
    where, _, custom = (ma.get("model_location") or "").partition("|")
    name = ma.get("model_file") or "model.artseg"
    if where == "Default Input Folder" and input_dir:
        return Path(input_dir) / name
    if where == "Default Input Folder sub-folder" and input_dir:
        return Path(input_dir) / custom / name
    if where == "Elsewhere..." and custom:
        return Path(custom) / name
    return None


def describe_pipeline(pipeline, input_dir=None) -> dict:
    """What a pipeline's MaskArtifacts module uses, for the run's record and the report.

    Returns
    -------
    dict
        ``maskartifacts`` (its image, objects and model location; None without such a module) and, when its
        model file is found and valid, ``model``, ``model_sha256``, ``model_thresholds``,
        ``quality_thresholds`` and ``model_profile`` (the keys of the engine's ``batch.json``).
    """
    from artseg_core.io.modelfile import ModelFileError, load_model_file

    try:
        text = Path(pipeline).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    ma = maskartifacts_settings(text)
    if ma is None:
        return {"maskartifacts": None}
    out: dict = {"maskartifacts": ma}
    path = _model_file(ma, input_dir)
    if path is None:
        return out
    out["model"] = str(path.resolve())
    try:
        manifest, _ = load_model_file(path)
    except ModelFileError:  # the module will say so in its shard; the report shows the path only
        return out
    out.update(model_sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
               model_thresholds=manifest.get("thresholds", {}),
               quality_thresholds=manifest.get("quality_thresholds", {}),
               model_profile=(manifest.get("profile") or {}).get("name", ""))
    return out


# ------------------------------------------------------------------------------------------- the exports


def _read_table(path: Path) -> list[dict]:
    """An ExportToSpreadsheet table (comma or tab separated) as dicts."""
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        first = fh.readline()
        fh.seek(0)
        delim = "\t" if first.count("\t") > first.count(",") else ","
        return list(csv.DictReader(fh, delimiter=delim))


def _header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        first = fh.readline()
    delim = "\t" if first.count("\t") > first.count(",") else ","
    return next(csv.reader([first], delimiter=delim), [])


def _merged_tables(out: Path, shards: list[dict]) -> list[str]:
    """The CSV tables the shards wrote and the merge put into ``out`` (relative paths)."""
    work = out / PIPELINE_WORK
    rels = set()
    for s in shards:
        d = work / s["key"]
        if s.get("status") == "ok" and d.is_dir():
            rels |= {f.relative_to(d).as_posix() for f in d.rglob("*") if f.is_file() and f.suffix.lower() == ".csv"}
    if not rels:  # shard folders removed: the tables next to cp_shards
        rels = {f.name for f in out.glob("*.csv")}
    return sorted(r for r in rels if (out / r).is_file())


def _image_table(out: Path, tables: list[str]) -> str | None:
    """The per-image table among the merged ones: ImageNumber without ObjectNumber (``Image.csv`` first)."""
    found = []
    for rel in tables:
        head = _header(out / rel)
        if "ImageNumber" in head and "ObjectNumber" not in head:
            found.append(rel)
    found.sort(key=lambda r: (not r.lower().endswith("image.csv"), r.count("/"), r))
    return found[0] if found else None


def _experiment(out: Path, tables: list[str]) -> dict:
    for rel in tables:
        head = [h.strip().lower() for h in _header(out / rel)]
        if head == ["key", "value"]:
            return {r.get("Key", ""): r.get("Value", "") for r in _read_table(out / rel)}
    return {}


def _image_path(r: dict, image: str | None) -> str:
    if image is None:
        return ""
    name, folder = r.get(f"FileName_{image}") or "", r.get(f"PathName_{image}") or ""
    if name and folder:
        return str(Path(folder) / name)
    url = r.get(f"URL_{image}") or ""
    if url.startswith("file:"):
        return unquote(urlparse(url).path)
    return name


def _well(r: dict, name: ImageName) -> tuple[str, object, object]:
    """Well, row and column: ``Metadata_Well``, else ``Metadata_Row`` + ``Metadata_Column``, else the file name."""
    w = (r.get("Metadata_Well") or "").strip()
    if w:
        try:
            row, col = split_well(w)
        except ValueError:
            return w, "", ""
        return well_name(row, col), row, col
    rs = (r.get("Metadata_Row") or "").strip()
    cs = (r.get("Metadata_Column") or r.get("Metadata_Col") or "").strip()
    if rs and cs.isdigit():
        try:
            row = int(rs) if rs.isdigit() else row_index(rs)
            return well_name(row, int(cs)), row, int(cs)
        except ValueError:
            pass
    if name.well:
        return name.well, name.row, name.col
    return "", "", ""


def _value(v):
    f = as_float(v)
    return "" if math.isnan(f) else f


def pipeline_rows(table: list[dict], maskartifacts: dict | None = None, root=None) -> list[dict]:
    """The per-image table of a pipeline run as rows of ``results.csv`` (see the module docstring)."""
    if not table:
        return []
    cols = list(table[0])
    images = [c[len("FileName_"):] for c in cols if c.startswith("FileName_")]
    ma = maskartifacts or {}
    image = ma.get("image") if ma.get("image") in images else next(
        (n for n in images if looks_brightfield(n)), images[0] if images else None)
    objects = ma.get("objects")
    counts = [c for c in cols if c.startswith("Count_")]
    errors = [c for c in cols if c.startswith("ModuleError_")]
    rows = []
    for r in table:
        path = _image_path(r, image)
        plate = (r.get("Metadata_Plate") or "").strip()
        fld = (r.get("Metadata_Site") or r.get("Metadata_Field") or "").strip()
        need_name = not (plate and fld and (r.get("Metadata_Well") or "").strip())
        name = parse_name(path, root) if path and need_name else ImageName()
        well, row, col = _well(r, name)
        rel = path
        if path and root is not None:
            try:
                rel = Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
            except (ValueError, OSError):
                pass
        bad = [c[len("ModuleError_"):].lstrip("0123456789") or c for c in errors if as_float(r.get(c)) > 0]
        out = {"image": rel, "plate": plate or name.plate, "well": well, "row": row, "col": col,
               "field": fld if fld else ("" if name.field is None else name.field), "channel": image or "",
               "plane": "", "timepoint": "", "image_number": r.get("ImageNumber", ""),
               "status": "error" if bad else "ok",
               "error": f"CellProfiler module error in {', '.join(bad)}" if bad else "", "mask": "", "path": path}
        for feature, key in MEASUREMENTS.items():
            v = _value(r.get(f"{MODULE}_{feature}"))
            out[key] = (v > 0) if (key in _BOOLEAN and v != "") else v
        n = _value(r.get(f"Count_{objects}")) if objects else ""
        out["n_objects"] = int(n) if n != "" else ""
        out["counts"] = {c[len("Count_"):]: _value(r.get(c)) for c in counts}
        rows.append(out)
    return rows


def read_pipeline_run(out_dir) -> PipelineRun:
    """Read a pipeline run folder: its settings, shards, merged tables and per-image rows.

    Raises
    ------
    FileNotFoundError
        ``out_dir`` holds no pipeline run (no ``cp_shards/settings.json``).
    """
    out = Path(out_dir)
    work = out / PIPELINE_WORK
    if not is_pipeline_run(out):
        raise FileNotFoundError(f"{out}: not a pipeline run folder (no {PIPELINE_WORK}/{PIPELINE_SETTINGS})")
    settings = json.loads((work / PIPELINE_SETTINGS).read_text())
    shards = sorted(read_journal(work / JOURNAL).values(), key=lambda s: (s.get("first", 0), s["key"]))
    tables = _merged_tables(out, shards)
    run = PipelineRun(rows=[], settings=settings, tables=tables, shards=shards,
                      experiment=_experiment(out, tables))
    run.n_image_sets = int(settings.get("n_image_sets") or sum(int(b) - int(a) + 1
                                                               for a, b in settings.get("ranges", [])))
    ma = settings.get("maskartifacts")
    if "maskartifacts" not in settings:  # an older run's record: read the pipeline CellProfiler exported
        ma = maskartifacts_settings(run.experiment.get("Pipeline_Pipeline", ""))
    run.image_table = _image_table(out, tables)
    if run.image_table is not None:
        root = settings.get("plate_root") or settings.get("input_dir")
        run.rows = pipeline_rows(_read_table(out / run.image_table), ma, root=root if root else None)
        run.rows.sort(key=lambda r: as_float(r.get("image_number")) if r.get("image_number") else math.inf)
    return run
