"""The one schema of ArtSeg's per-image results and the one CSV writer every table of the project goes through.

Columns
-------
:data:`ENGINE_COLUMNS`
    What the engine computes for every image (``artseg predict``'s CSV, the plate runner's ``results.csv``, the
    CellProfiler module's measurements): classifier score, flag, mask statistics, the quality scores
    (:data:`artseg_core.imgproc.quality.QUALITY_KEYS`) and flags (:data:`~artseg_core.imgproc.quality.FLAG_KEYS`),
    status and error message.
:data:`PREDICT_COLUMNS`
    ``artseg predict``'s CSV: ``image`` (the input path), the engine columns and ``output`` (the name stem of the
    image's output files in the output folder; unique per input).
:data:`LOCATION_COLUMNS`
    Where a plate image was taken (``image`` is its key: the path relative to the plate root).
:data:`PLATE_COLUMNS`
    The plate runner's ``results.csv``: location, engine, then ``mask`` (relative to the run folder) and ``path``.

Writing
-------
:func:`csv_text` / :func:`write_csv` neutralise spreadsheet formulas: a text cell that starts with ``=``, ``+``,
``-``, ``@``, a tab or a carriage return (file and plate names can) gets a leading ``'``, the usual rule that makes
Excel, LibreOffice and Google Sheets show it as text. Numbers (also negative ones, and text that reads as a number)
are written as they are. :func:`restore_cell` undoes the rule for programs that read the tables back.
"""
from __future__ import annotations

import csv
import io as _stdio
import math
from pathlib import Path
from typing import Any, Iterable

from artseg_core.imgproc.quality import FLAG_KEYS, QUALITY_KEYS

__all__ = ["ENGINE_COLUMNS", "PREDICT_COLUMNS", "LOCATION_COLUMNS", "PLATE_COLUMNS", "FORMULA_PREFIXES",
           "neutralize_cell", "restore_cell", "csv_text", "write_csv", "read_csv_rows", "error_row"]

#: what the engine reports per image, in this order
ENGINE_COLUMNS = ["p_artifact", "flagged", "segmented", "area_fraction", "n_objects", *QUALITY_KEYS, *FLAG_KEYS,
                  "status", "error"]
#: ``artseg predict``'s CSV
PREDICT_COLUMNS = ["image", *ENGINE_COLUMNS, "output"]
#: where a plate image was taken (``image`` = its key in the plate: the path relative to the plate root)
LOCATION_COLUMNS = ["image", "plate", "well", "row", "col", "field", "channel", "plane", "timepoint"]
#: the plate runner's ``results.csv``
PLATE_COLUMNS = [*LOCATION_COLUMNS, *ENGINE_COLUMNS, "mask", "path"]

#: first characters that make a spreadsheet read a cell as a formula
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def neutralize_cell(value: Any) -> Any:
    """A cell value made safe for spreadsheets: text starting with a formula character gets a leading ``'``.

    Parameters
    ----------
    value : any
        The cell (numbers, booleans and None are returned unchanged).

    Returns
    -------
    any
        ``value``, or ``"'" + value`` for text that a spreadsheet would run as a formula. Text that reads as a
        number (``"-0.5"``) is left alone. Text that already starts with ``'`` and a formula character gets one
        more quote, so that :func:`restore_cell` gives back exactly the original.
    """
    if not isinstance(value, str) or not value:
        return value
    if value[0] in FORMULA_PREFIXES and not _is_number(value):
        return "'" + value
    if value[0] == "'" and len(value) > 1 and (value[1] in FORMULA_PREFIXES or value[1] == "'"):
        return "'" + value
    return value


def restore_cell(value: Any) -> Any:
    """Inverse of :func:`neutralize_cell` for a cell read back from an ArtSeg CSV."""
    if isinstance(value, str) and len(value) > 1 and value[0] == "'" and (
            value[1] in FORMULA_PREFIXES or value[1] == "'"):
        return value[1:]
    return value


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    return neutralize_cell(v)


def csv_text(rows: Iterable[dict], columns: list[str] | None = None, *, extra: bool = True) -> str:
    """Rows as CSV text (``\\n`` line ends), formula cells neutralised.

    Parameters
    ----------
    rows : iterable of dict
        One dict per row; missing keys give empty cells.
    columns : list of str, optional
        Columns in this order (default: the keys of the first row, or :data:`PREDICT_COLUMNS` without rows).
    extra : bool
        Append keys that are not in ``columns`` as further columns (in order of appearance); otherwise they are
        left out.

    Returns
    -------
    str
    """
    rows = list(rows)
    cols = list(columns) if columns is not None else (list(rows[0]) if rows else list(PREDICT_COLUMNS))
    if extra:
        for r in rows:
            for k in r:
                if k not in cols:
                    cols.append(k)
    buf = _stdio.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n", restval="")
    w.writeheader()
    for r in rows:
        w.writerow({k: _cell(v) for k, v in r.items()})
    return buf.getvalue()


def write_csv(path, rows: Iterable[dict], columns: list[str] | None = None, *, extra: bool = True) -> Path:
    """Write rows with :func:`csv_text` atomically (the old file stays whole until the new one is complete)."""
    from artseg_core.io.files import write_text

    return write_text(path, csv_text(rows, columns, extra=extra))


def read_csv_rows(path, restore: bool = True) -> list[dict]:
    """Read a CSV written by :func:`csv_text` (values as strings; neutralised cells restored by default)."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if restore:
        rows = [{k: restore_cell(v) for k, v in r.items()} for r in rows]
    return rows


def error_row(image: str, message: str, columns: list[str] | None = None) -> dict[str, Any]:
    """A row for an image that could not be processed: empty engine columns, ``status=error`` and the message."""
    row: dict[str, Any] = {c: "" for c in (columns or PREDICT_COLUMNS)}
    row.update(image=image, status="error", error=message)
    return row
