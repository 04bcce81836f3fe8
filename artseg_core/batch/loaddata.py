"""A CellProfiler LoadData table that pairs each field's channels with its ArtSeg mask.

Users of the CellProfiler desktop app (which cannot load a torch plugin) run ArtSeg once from the command line
(``artseg batch PLATE -m model.artseg -o OUT --loaddata Brightfield=1,Nuclei=2``) and point a pipeline of
built-in modules at ``OUT/loaddata.csv``: LoadData loads every channel plus the mask image ``ArtifactMask``,
and ConvertImageToObjects turns the mask into objects for MaskObjects / MaskImage (MaskObjects wants a truly
binary mask, which a loaded 0/255 image is not): ``pipelines/loaddata_mask_nuclei.cppipe``.

The table has, per field (one row, in plate order):

* ``FileName_<Name>`` / ``PathName_<Name>`` for every channel (absolute folders);
* ``FileName_ArtifactMask`` / ``PathName_ArtifactMask``: the ArtSeg mask (uint8, artifact pixels 255, so 1.0 in
  CellProfiler);
* ``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Site`` (and ``Metadata_Plane`` / ``Metadata_Timepoint`` when
  the names carry them);
* ``Metadata_ArtSegFlagged`` (0/1, the column to filter on: every field with a mask is flagged),
  ``Metadata_ArtSegAreaFraction`` and ``Metadata_ArtSegProbability`` from the run's results.

Fields whose ArtSeg run failed, or that have no mask file (a run without ``--mask``), are left out and listed.
"""
from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from artseg_core.batch.layout import RESULTS, SETTINGS
from artseg_core.batch.manifest import Manifest, ManifestError, build_manifest
from artseg_core.batch.platenames import channel_matches

__all__ = ["LOADDATA", "MASK_NAME", "LoadDataTable", "parse_channel_names", "write_loaddata"]

LOADDATA = "loaddata.csv"  #: file name of the table in the run folder
MASK_NAME = "ArtifactMask"  #: CellProfiler image name of the ArtSeg mask
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclass
class LoadDataTable:
    """What :func:`write_loaddata` wrote.

    Attributes
    ----------
    path : Path
        The CSV file.
    names : dict
        CellProfiler image name -> channel, in column order (the mask is ``ArtifactMask``).
    rows : int
        Fields written.
    left_out : list of str
        Fields left out, each with the reason.
    """

    path: Path
    names: dict[str, str | None]
    rows: int
    left_out: list[str] = field(default_factory=list)


def parse_channel_names(text: str | None) -> dict[str, str] | None:
    """``"Brightfield=1,Nuclei=2"`` (``,`` or ``;`` between items) -> ``{"Brightfield": "1", "Nuclei": "2"}``.

    None, ``""`` or ``"auto"`` give None (automatic names).

    Raises
    ------
    ValueError
        An item without ``=``, an image name CellProfiler cannot use (letters, digits and ``_``, starting with a
        letter), a name used twice, or the reserved name ``ArtifactMask``.
    """
    if text is None or text.strip().lower() in ("", "auto"):
        return None
    out: dict[str, str] = {}
    for item in re.split(r"[,;]", text):
        if "=" not in item:
            raise ValueError(f"--loaddata: {item.strip()!r} is not NAME=CHANNEL (e.g. Brightfield=1,Nuclei=2)")
        name, chan = (s.strip() for s in item.split("=", 1))
        if not _NAME.match(name):
            raise ValueError(f"--loaddata: {name!r} is not a CellProfiler image name (letters, digits, _; "
                             "starting with a letter)")
        if name == MASK_NAME:
            raise ValueError(f"--loaddata: the name {MASK_NAME} is reserved for the ArtSeg mask")
        if name in out:
            raise ValueError(f"--loaddata: the name {name} is given twice")
        if not chan:
            raise ValueError(f"--loaddata: no channel after {name}=")
        out[name] = chan
    return out


def _auto_name(channel: str) -> str:
    return "Channel" + (re.sub(r"[^A-Za-z0-9]+", "", channel) or "X")


def _location(task) -> tuple:
    n = task.name
    return (n.plate, n.well, n.row, n.col, n.field, n.plane, n.timepoint)


def _read_results(out: Path) -> dict[str, dict]:
    path = out / RESULTS
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no results table; run 'artseg batch' into {out} first")
    with open(path, newline="", encoding="utf-8") as fh:
        return {r["image"]: r for r in csv.DictReader(fh)}


def _flag(value: str) -> int:
    return int(str(value).strip().lower() in ("true", "1", "1.0"))


def write_loaddata(out_dir, plate=None, *, channel: str | None = None, name_regex: str | None = None,
                   names: dict[str, str] | None = None, path=None) -> LoadDataTable:
    """Write ``OUT/loaddata.csv`` for a finished ``artseg batch`` run.

    Parameters
    ----------
    out_dir : path-like
        The run folder (``results.csv`` and the masks under ``outputs/``).
    plate : str or path-like, optional
        The plate the run read (default: the one recorded in ``OUT/batch.json``). All its channels are looked up
        there, not only the one ArtSeg processed.
    channel, name_regex : str, optional
        The run's ``--channel`` and ``--name-regex`` (default: as recorded in ``OUT/batch.json``).
    names : dict, optional
        CellProfiler image name -> channel (``parse_channel_names``). Default: the processed channel is
        ``Brightfield``, every other channel ``Channel<id>`` (``Channel2`` for ``_w2``).
    path : path-like, optional
        Where to write (default ``OUT/loaddata.csv``).

    Returns
    -------
    LoadDataTable

    Raises
    ------
    FileNotFoundError
        No ``results.csv`` in ``out_dir`` (the run has not finished).
    ManifestError
        A named channel that the plate does not have, or a field that lacks a named channel.
    """
    out = Path(out_dir)
    results = _read_results(out)
    settings = {}
    if (out / SETTINGS).is_file():
        settings = json.loads((out / SETTINGS).read_text(encoding="utf-8"))
    plate = plate if plate is not None else settings.get("plate") or settings.get("input")
    if plate is None:
        raise ManifestError(f"{out / SETTINGS}: the plate is not recorded; pass it explicitly")
    channel = channel if channel is not None else settings.get("channel")
    name_regex = name_regex if name_regex is not None else settings.get("name_regex")

    bright = build_manifest(plate, channel=channel, name_regex=name_regex, exclude=out)
    processed = bright.channel
    others = [c for c in bright.channels if c != processed]
    if names is None:
        names = {"Brightfield": processed}
        names.update({_auto_name(c): c for c in others})
    manifests: dict[str, Manifest] = {}
    for name, chan in names.items():
        if chan is None or (processed is not None and _same_channel(bright, chan, processed)):
            manifests[name] = bright
            continue
        known = [c for c in bright.channels if _norm(c) == _norm(chan)] or [chan]
        try:
            manifests[name] = build_manifest(plate, channel=known[0], name_regex=name_regex, exclude=out)
        except ManifestError as e:
            raise ManifestError(f"--loaddata {name}={chan}: {e}") from None
    by_location = {name: {_location(t): t for t in m.tasks} for name, m in manifests.items()}

    left_out: list[str] = []
    rows: list[dict] = []
    extra = [k for k in ("plane", "timepoint") if any(getattr(t.name, k) is not None for t in bright.tasks)]
    for t in bright.tasks:
        r = results.get(t.key)
        if r is None or r.get("status") != "ok":
            left_out.append(f"{t.key}: {'not processed' if r is None else 'ArtSeg failed on it'}")
            continue
        if not r.get("mask"):
            left_out.append(f"{t.key}: no mask file (run 'artseg batch' with --mask)")
            continue
        row = {"Metadata_Plate": t.name.plate, "Metadata_Well": t.name.well,
               "Metadata_Site": "" if t.name.field is None else t.name.field}
        for k in extra:
            v = getattr(t.name, k)
            row[f"Metadata_{k.capitalize()}"] = "" if v is None else v
        loc = _location(t)
        for name in names:
            partner = by_location[name].get(loc)
            if partner is None:
                raise ManifestError(f"{plate}: field {t.key} has no image of channel {names[name]} ({name}); "
                                    "every field needs every channel named in --loaddata")
            p = Path(partner.path).resolve()
            row[f"FileName_{name}"] = p.name
            row[f"PathName_{name}"] = str(p.parent)
        mask = (out / r["mask"]).resolve()
        row[f"FileName_{MASK_NAME}"] = mask.name
        row[f"PathName_{MASK_NAME}"] = str(mask.parent)
        row["Metadata_ArtSegFlagged"] = _flag(r.get("flagged", ""))
        row["Metadata_ArtSegAreaFraction"] = r.get("area_fraction", "")
        row["Metadata_ArtSegProbability"] = r.get("p_artifact", "")
        rows.append(row)
    if not rows:
        raise ManifestError(f"{out}: no field has an ArtSeg mask to pair ({len(left_out)} left out: "
                            f"{'; '.join(left_out[:5])})")
    target = Path(path) if path is not None else out / LOADDATA
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, target)
    return LoadDataTable(path=target, names={**names, MASK_NAME: None}, rows=len(rows), left_out=left_out)


def _norm(channel: str) -> str:
    return re.sub(r"^(w|ch|c)(?=\d)", "", str(channel).strip().lower())


def _same_channel(man: Manifest, wanted: str, processed: str) -> bool:
    """Whether ``wanted`` names the processed channel (also through aliases such as ``w1``/``ch1``)."""
    if _norm(wanted) == _norm(processed):
        return True
    return any(channel_matches(t.name, wanted) for t in man.tasks[:1])
