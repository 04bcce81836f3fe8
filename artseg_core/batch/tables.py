"""The plate run's tables: one results row per image (from the journal) and one summary row per well."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

from artseg_core.batch.journal import read_journal
from artseg_core.batch.layout import JOURNAL, RESULTS, WELLS
from artseg_core.imgproc.quality import FLAG_KEYS
from artseg_core.io.results import ENGINE_COLUMNS, LOCATION_COLUMNS, PLATE_COLUMNS, read_csv_rows
from artseg_core.io.results import csv_text as _csv_text

__all__ = ["RESULT_COLUMNS", "ENGINE_COLUMNS", "LOCATION_COLUMNS", "WELL_COLUMNS", "results_rows", "well_rows",
           "csv_text", "read_csv_rows", "truthy", "as_float", "finalize"]

#: the columns of ``results.csv``: one schema for the whole project (:mod:`artseg_core.io.results`)
RESULT_COLUMNS = PLATE_COLUMNS
QC_FLAGS = tuple(FLAG_KEYS)
WELL_COLUMNS = ["plate", "well", "row", "col", "fields", "ok", "failed", "flagged_fields", "flagged_fraction",
                "mean_area_fraction", "max_area_fraction", "mean_p_artifact", "qc_flagged_fields",
                *[f"{f}_fields" for f in QC_FLAGS]]


def truthy(v) -> bool:
    """CSV/JSON booleans: True, "True", "true", "1" -> True."""
    if isinstance(v, bool):
        return v
    if v is None:
        return False
    return str(v).strip().lower() in ("true", "1", "yes")


def as_float(v) -> float:
    """A number from a CSV/JSON cell, NaN when empty or not a number."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def results_rows(records: dict[str, dict], order: Iterable[str]) -> list[dict]:
    """Journal records -> result rows, one per image key in ``order`` (keys without a record are skipped)."""
    rows = []
    for key in order:
        rec = records.get(key)
        if rec is not None:
            rows.append(dict(rec["row"]))
    return rows


def _mean(xs: list[float]) -> float | str:
    xs = [x for x in xs if not math.isnan(x)]
    return round(sum(xs) / len(xs), 6) if xs else ""


def well_rows(rows: list[dict]) -> list[dict]:
    """Per-well summary of result rows: fields, failures, flagged fields, artifact fraction, QC flag counts.

    Failed images count in ``fields`` and ``failed`` only; the means are over images that were processed.
    """
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((str(r.get("plate", "")), str(r.get("well", ""))), []).append(r)
    out = []
    for (plate, well), rs in groups.items():
        ok = [r for r in rs if r.get("status") == "ok"]
        flagged = sum(truthy(r.get("flagged")) for r in ok)
        af = [as_float(r.get("area_fraction")) for r in ok]
        w = {"plate": plate, "well": well, "row": rs[0].get("row", ""), "col": rs[0].get("col", ""),
             "fields": len(rs), "ok": len(ok), "failed": len(rs) - len(ok), "flagged_fields": flagged,
             "flagged_fraction": round(flagged / len(ok), 6) if ok else "",
             "mean_area_fraction": _mean(af),
             "max_area_fraction": round(max(af), 6) if af and not all(math.isnan(a) for a in af) else "",
             "mean_p_artifact": _mean([as_float(r.get("p_artifact")) for r in ok]),
             "qc_flagged_fields": sum(any(truthy(r.get(f)) for f in QC_FLAGS) for r in ok)}
        for f in QC_FLAGS:
            w[f"{f}_fields"] = sum(truthy(r.get(f)) for r in ok)
        out.append(w)

    def order(w):
        r, c = w["row"], w["col"]
        return (w["plate"], int(r) if str(r).isdigit() else 10 ** 9, int(c) if str(c).isdigit() else 10 ** 9,
                w["well"])

    return sorted(out, key=order)


def csv_text(rows: list[dict], columns: list[str]) -> str:
    """Rows as CSV text with the given columns first and any extra keys after them (formula cells neutralised,
    :func:`artseg_core.io.results.csv_text`)."""
    return _csv_text(rows, columns)


def finalize(out_dir, manifest=None) -> tuple[list[dict], Path, Path]:
    """Rebuild ``results.csv`` and ``wells.csv`` from the journal (deduplicated, in plate order), atomically.

    Without a manifest (``artseg report OUT``) the plate order recorded in the journal is used.
    """
    from artseg_core.io.files import write_text

    out = Path(out_dir)
    records = read_journal(out / JOURNAL)
    if manifest is not None:
        order = [t.key for t in manifest.tasks]
    else:
        order = sorted(records, key=lambda k: (records[k].get("index", 10 ** 12), k))
    rows = results_rows(records, order)
    res = write_text(out / RESULTS, csv_text(rows, RESULT_COLUMNS))
    wells = write_text(out / WELLS, csv_text(well_rows(rows), WELL_COLUMNS))
    return rows, res, wells
