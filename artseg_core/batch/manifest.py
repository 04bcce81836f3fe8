"""Plate inputs -> the ordered list of images to process.

A plate is given as a folder (searched recursively), a glob pattern, a single image, or a CSV manifest: either a
plain table with a ``path`` column (``file``, ``filename``, ``image`` also accepted; optional ``plate``, ``well``,
``field``/``site``, ``channel`` columns) or a CellProfiler LoadData table (``FileName_X``/``PathName_X`` column
pairs, one pair per channel X, with optional ``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Site`` ...).
What a table does not say is parsed from the file names (:mod:`.platenames`).

Only one channel is processed: the one named by ``channel`` (``--channel``); when there are several and none is
named, a single channel whose name says brightfield ("Bright Field", "BF", "Phase" ...) is taken, otherwise the
call fails and lists the channels found. Files whose names carry no channel go with the chosen channel (a plain
``B02_s1.tif`` is an image like ``A01_s1_w1.tif``); files of another channel are left out and listed in
:attr:`Manifest.skipped` with the reason. A plain CSV manifest is processed as written (only an explicit
``--channel`` leaves rows of other channels out).

Nothing is left out silently: ImageXpress thumbnails, files a ``--name-regex`` does not match, files of other
channels and files in folders that ArtSeg or its phantom generator wrote (``masks/``, ``nuclei_masks/``,
``pseudo_masks/``, a plate run's or ``artseg predict``'s output folder; processed with ``include_derived``) are
listed in :attr:`Manifest.skipped`. Two files for the same plate, well, field, channel, plane and time point are
refused (``allow_duplicates`` processes both).
"""
from __future__ import annotations

import csv
import glob
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from artseg_core.batch.platenames import (
    ImageName,
    channel_matches,
    image_stem,
    looks_brightfield,
    parse_name,
    split_well,
    well_name,
)

__all__ = ["ImageTask", "Manifest", "build_manifest", "ManifestError", "DERIVED_FOLDERS"]

#: folder names that hold masks, not images to process (written by the phantom generator and ``artseg train``)
DERIVED_FOLDERS = {"masks", "nuclei_masks", "pseudo_masks", "predictions"}
#: files that mark a folder written by ArtSeg (a plate run, ``artseg predict``)
_RUN_MARKERS = (("batch.json", "journal.jsonl"), (".artseg_predict.json",), ("artseg_results.csv",))


class ManifestError(ValueError):
    """The plate input cannot be turned into an image list (message names the input and the problem)."""


@dataclass(frozen=True)
class ImageTask:
    """One image to process.

    Attributes
    ----------
    index : int
        Position in the plate order (plate, row, column, field, time point, plane, path).
    key : str
        Unique id of the image in this plate: its path relative to the plate root, "/"-separated. The journal
        and the results table are keyed by it.
    path : str
        Absolute path of the image file.
    out_subdir : str
        Folder (relative, "/"-separated, "" for the top) under the run's ``outputs/`` that receives this image's
        output files; mirrors the input folders so that equal file names in different folders cannot collide.
    name : ImageName
        Plate, well, field, channel, plane and time point.
    """

    index: int
    key: str
    path: str
    out_subdir: str
    name: ImageName

    def meta(self) -> dict:
        """The location columns of the results table for this image."""
        d = {"image": self.key}
        d.update({k: ("" if v is None else v) for k, v in self.name.as_dict().items() if k != "convention"})
        return d


@dataclass
class Manifest:
    """The images of a plate run, in plate order, and how they were chosen."""

    tasks: list[ImageTask]
    root: str
    source: str
    kind: str  # "folder", "glob", "file", "csv", "loaddata"
    channels: list[str] = field(default_factory=list)
    channel: str | None = None
    notes: list[str] = field(default_factory=list)
    #: files found but not processed, with the reason: ``(path, reason)``
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tasks)


_PATH_COLUMNS = ("path", "file", "filename", "image", "image_path", "imagepath", "file_path")
_META = {
    "plate": ("plate", "metadata_plate"),
    "well": ("well", "metadata_well"),
    "row": ("row", "metadata_row"),
    "col": ("col", "column", "metadata_col", "metadata_column"),
    "field": ("field", "site", "metadata_field", "metadata_site", "metadata_fov"),
    "channel": ("channel", "metadata_channel"),
    "plane": ("plane", "z", "metadata_plane", "metadata_z", "metadata_zplane"),
    "timepoint": ("timepoint", "time", "t", "metadata_timepoint", "metadata_time", "metadata_t"),
}


def _is_under(p: Path, folder: Path | None) -> bool:
    if folder is None:
        return False
    try:
        p.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def _glob_root(pattern: str) -> Path:
    parts = Path(pattern).parts
    keep = []
    for part in parts:
        if glob.has_magic(part):
            break
        keep.append(part)
    return Path(*keep) if keep else Path(".")


def _cell(row: dict, names: tuple[str, ...]) -> str | None:
    for n in names:
        v = row.get(n)
        if v is not None and str(v).strip() != "":
            return str(v).strip()
    return None


def _override(name: ImageName, row: dict, csv_path: Path, line: int) -> ImageName:
    """Table metadata wins over what the file name says."""
    vals = {k: _cell(row, cols) for k, cols in _META.items()}
    upd: dict = {}
    try:
        if vals["well"]:
            r, c = split_well(vals["well"])
            upd.update(well=well_name(r, c), row=r, col=c)
        elif vals["row"] and vals["col"]:
            rs = vals["row"]
            from artseg_core.batch.platenames import row_index

            r = int(rs) if rs.isdigit() else row_index(rs)
            c = int(vals["col"])
            upd.update(well=well_name(r, c), row=r, col=c)
        for k in ("field", "plane", "timepoint"):
            if vals[k]:
                upd[k] = int(float(vals[k]))
    except ValueError as e:
        raise ManifestError(f"{csv_path}, line {line}: {e}") from None
    if vals["plate"]:
        upd["plate"] = vals["plate"]
    if vals["channel"]:
        upd["channel"] = vals["channel"]
        upd["channel_aliases"] = ()
    if upd and name.convention == "none":
        upd["convention"] = "table"
    return _replace(name, **upd)


def _replace(name: ImageName, **kw) -> ImageName:
    import dataclasses

    return dataclasses.replace(name, **kw)


def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows = [{(k or "").strip().lower(): v for k, v in r.items()} for r in reader]
            header = [(h or "").strip() for h in (reader.fieldnames or [])]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ManifestError(f"{path}: cannot read the CSV manifest: {e}") from None
    if not header:
        raise ManifestError(f"{path}: the CSV manifest is empty (no header line)")
    return header, rows


def _choose_channel(found: list[str], wanted: str | None, what: str) -> str | None:
    """Pick the channel to process among ``found`` (distinct names); None when there is no channel at all."""
    if wanted is not None or not found:
        return wanted
    if len(found) == 1:
        return found[0]
    bright = [c for c in found if looks_brightfield(c)]
    if len(bright) == 1:
        return bright[0]
    raise ManifestError(f"{what}: several channels ({', '.join(found)}); choose the brightfield one with "
                        f"--channel")


def _from_loaddata(csv_path: Path, header: list[str], rows: list[dict], channel: str | None,
                   regex) -> tuple[list[tuple[Path, ImageName]], list[str], str | None]:
    chans = [h[len("FileName_"):] for h in header if h.lower().startswith("filename_")
             and h[len("FileName_"):].lower() in {x[len("PathName_"):].lower() for x in header
                                                  if x.lower().startswith("pathname_")}]
    if not chans:
        raise ManifestError(f"{csv_path}: LoadData table needs FileName_X and PathName_X columns for a channel X")
    if channel is not None:
        pick = [c for c in chans if c.lower() == channel.lower()]
        if not pick:
            raise ManifestError(f"{csv_path}: no channel {channel!r} in the LoadData table (channels: "
                                f"{', '.join(chans)})")
        chosen = pick[0]
    else:
        chosen = _choose_channel(chans, None, str(csv_path))
    fn, pn = f"filename_{chosen.lower()}", f"pathname_{chosen.lower()}"
    items = []
    for i, row in enumerate(rows, start=2):
        f, d = _cell(row, (fn,)), _cell(row, (pn,))
        if not f:
            raise ManifestError(f"{csv_path}, line {i}: empty FileName_{chosen}")
        p = Path(d or "") / f
        if not p.is_absolute():
            p = csv_path.parent / p
        items.append((p, _name_for(p, None, regex, row, csv_path, i)))
    return items, chans, chosen


def _name_for(p: Path, root: Path | None, regex, row: dict | None, csv_path: Path | None, line: int) -> ImageName:
    try:
        nm = parse_name(p, root=root, regex=regex)
    except ValueError as e:
        raise ManifestError(f"{p}: {e}") from None
    if nm is None:  # the user regex does not match: use what the table says
        nm = ImageName(plate=p.resolve().parent.name, convention="none")
    if row is not None:
        nm = _override(nm, row, csv_path, line)
    return nm


def _derived_reason(f: Path, root: Path, cache: dict) -> str | None:
    """Why ``f`` lies in a folder of masks or outputs (below ``root``), or None."""
    try:
        rel = f.resolve().relative_to(root.resolve())
    except ValueError:
        return None
    d = root.resolve()
    for part in rel.parts[:-1]:
        d = d / part
        if part.lower() in DERIVED_FOLDERS:
            return f"in a {part!r} folder (masks, not images); process it with --include-derived"
        hit = cache.get(d)
        if hit is None:
            hit = any(all((d / m).exists() for m in marks) for marks in _RUN_MARKERS)
            cache[d] = hit
        if hit:
            return f"in an ArtSeg output folder ({d}); process it with --include-derived"
    return None


def build_manifest(source: str | os.PathLike, *, channel: str | None = None, name_regex: str | None = None,
                   exclude: str | os.PathLike | None = None, include_derived: bool = False,
                   allow_duplicates: bool = False) -> Manifest:
    """Turn a plate input into the ordered list of images to process.

    Parameters
    ----------
    source : str or path-like
        Folder (recursive), glob pattern (``**`` allowed), one image, or a CSV manifest (plain or LoadData).
    channel : str, optional
        The brightfield channel to process ("1", "w1", "ch1", "Bright Field", a LoadData channel name ...).
    name_regex : str, optional
        Regular expression with named groups (plate, well, row, col, field, channel, plane, timepoint) used
        instead of the built-in naming conventions; for folders and globs, files it does not match are left out.
    exclude : path-like, optional
        A folder whose files are never inputs (the run's output folder when it lies inside the plate).
    include_derived : bool
        Also process files in folders of masks and ArtSeg outputs (found in a folder or glob).
    allow_duplicates : bool
        Process two files that name the same plate, well, field, channel, plane and time point (else refused).

    Returns
    -------
    Manifest
        With :attr:`Manifest.skipped` listing every file found and left out, and why.

    Raises
    ------
    ManifestError
        Missing input, unreadable or malformed CSV, no images, an unknown or ambiguous channel, a bad regex,
        two inputs that would write the same output files, or two files for the same field and channel.
    """
    from artseg_core.io.images import IMAGE_SUFFIXES, list_images

    src = str(source)
    p = Path(src)
    notes: list[str] = []
    excl = Path(exclude) if exclude is not None else None
    regex = None
    if name_regex is not None:
        try:
            regex = re.compile(name_regex)
        except re.error as e:
            raise ManifestError(f"--name-regex {name_regex!r}: {e}") from None

    items: list[tuple[Path, ImageName]] = []
    skipped: list[tuple[str, str]] = []
    chans_all: list[str] = []
    chosen: str | None = channel
    if p.is_file() and p.suffix.lower() == ".csv":
        header, rows = _read_csv(p)
        if any(h.lower().startswith("filename_") for h in header):
            kind = "loaddata"
            items, chans_all, chosen = _from_loaddata(p, header, rows, channel, regex)
        else:
            kind = "csv"
            col = next((c for c in _PATH_COLUMNS if c in {h.lower() for h in header}), None)
            if col is None:
                raise ManifestError(f"{p}: the CSV manifest needs a 'path' column (or file, filename, image; or "
                                    f"CellProfiler LoadData FileName_X/PathName_X columns); found: "
                                    f"{', '.join(header)}")
            for i, row in enumerate(rows, start=2):
                v = _cell(row, (col,))
                if not v:
                    raise ManifestError(f"{p}, line {i}: empty {col!r}")
                q = Path(v)
                if not q.is_absolute():
                    q = p.parent / q
                items.append((q, _name_for(q, None, regex, row, p, i)))
        if not items:
            raise ManifestError(f"{p}: the CSV manifest lists no images")
        missing = [str(q) for q, _ in items if not q.is_file()]
        if missing:
            more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
            raise ManifestError(f"{p}: listed image(s) not found: {', '.join(missing[:3])}{more}")
        root = Path(os.path.commonpath([str(q.resolve().parent) for q, _ in items]))
    else:
        if p.is_dir():
            kind, root = "folder", p
            try:
                files = list_images(p, recursive=True)
            except (ValueError, OSError) as e:
                raise ManifestError(f"{p}: {e}") from None
        elif p.is_file():
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                raise ManifestError(f"{p}: not an image, a folder or a .csv manifest")
            kind, root, files = "file", p.parent, [p]
        elif glob.has_magic(src):
            kind, root = "glob", _glob_root(src)
            files = list_images(src, recursive=True)
        else:
            raise ManifestError(f"{src}: no such folder, file or glob pattern")
        files = [f for f in files if not _is_under(f, excl)]
        if not files:
            raise ManifestError(f"{src}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
        unmatched = 0
        marks: dict = {}
        for f in files:
            why = None if include_derived else _derived_reason(f, root, marks)
            if why is not None:
                skipped.append((str(f), why))
                continue
            try:
                nm = parse_name(f, root=root, regex=regex)
            except ValueError as e:
                raise ManifestError(f"{f}: {e}") from None
            if nm is None:
                unmatched += 1
                skipped.append((str(f), f"does not match --name-regex {name_regex!r}"))
                continue
            if nm.skip:
                skipped.append((str(f), "thumbnail (MetaXpress _thumb file)"))
                continue
            items.append((f, nm))
        if unmatched:
            notes.append(f"{unmatched} file(s) do not match --name-regex and are left out")
        if not items:
            more = f" ({len(skipped)} file(s) left out: {skipped[0][1]} ...)" if skipped else ""
            raise ManifestError((f"{src}: no image matches the naming pattern {name_regex!r}" if regex is not None
                                 else f"{src}: no images to process") + more)

    if kind != "loaddata":
        chans_all = sorted({nm.channel for _, nm in items if nm.channel is not None}, key=_natural)
        if kind == "csv" and channel is None:
            chosen = None  # a table is processed as written
        else:
            chosen = _choose_channel(chans_all, channel, src)
        if chosen is not None:
            sel, other = [], []
            for q, nm in items:
                (sel if nm.channel is None or channel_matches(nm, chosen) else other).append((q, nm))
            if not any(nm.channel is not None for _, nm in sel) and other:
                raise ManifestError(f"{src}: no image has channel {chosen!r} (channels found: "
                                    f"{', '.join(chans_all) or 'none in the file names'})")
            for q, nm in other:
                skipped.append((str(q), f"channel {nm.channel} (processing channel {chosen})"))
            if other:
                notes.append(f"channel {chosen}: {len(sel)} of {len(items)} images; {len(other)} of other "
                             f"channels left out")
            no_chan = sum(1 for _, nm in sel if nm.channel is None)
            if no_chan and len(chans_all):
                notes.append(f"{no_chan} image(s) without a channel in the name are processed with channel "
                             f"{chosen}")
            items = sel
    unparsed = sum(1 for _, nm in items if not nm.well)
    if unparsed:
        notes.append(f"{unparsed} image(s) have no well in their name (naming convention not recognised; "
                     f"use --name-regex)")

    # de-duplicate (same file listed twice) and order by plate position
    seen: dict[str, tuple[Path, ImageName]] = {}
    for q, nm in items:
        seen.setdefault(os.path.realpath(q), (q, nm))
    if len(seen) < len(items):
        notes.append(f"{len(items) - len(seen)} duplicate listing(s) of the same file ignored")
    root = root.resolve()
    rows_ = []
    for real, (q, nm) in seen.items():
        try:
            key = PurePosixPath(Path(real).relative_to(root).as_posix())
        except ValueError:
            key = PurePosixPath(Path(real).as_posix().lstrip("/"))
        rows_.append((nm, str(key), real))
    big = 10 ** 9
    rows_.sort(key=lambda t: (t[0].plate, _nz(t[0].row, big), _nz(t[0].col, big), _nz(t[0].field, big),
                              _nz(t[0].timepoint, big), _nz(t[0].plane, big), _natural(t[1])))
    if not allow_duplicates:
        _refuse_duplicates(rows_, root, chosen)
    tasks = []
    outs: dict[tuple[str, str], str] = {}
    for i, (nm, key, real) in enumerate(rows_):
        sub = str(PurePosixPath(key).parent)
        sub = "" if sub == "." else sub
        stem = image_stem(PurePosixPath(key).name)
        other = outs.get((sub, stem))
        if other is not None:
            raise ManifestError(f"{root / key} and {root / other} would write the same output files "
                                f"(same name {stem!r} in one folder); rename one or list only one")
        outs[(sub, stem)] = key
        tasks.append(ImageTask(index=i, key=key, path=real, out_subdir=sub, name=nm))
    if skipped:
        notes.append(f"{len(skipped)} file(s) left out (listed with the reason in skipped.csv)")
    return Manifest(tasks=tasks, root=str(root), source=src, kind=kind, channels=chans_all, channel=chosen,
                    notes=notes, skipped=skipped)


def _refuse_duplicates(rows_: list, root: Path, chosen: str | None) -> None:
    """Two files for one plate position (plate, well, field, channel, plane, time point) would count it twice."""
    from artseg_core.batch.platenames import _norm_channel

    groups: dict[tuple, list[str]] = {}
    for nm, key, _real in rows_:
        if not nm.well:
            continue  # no position known: nothing to compare
        ch = nm.channel if nm.channel is not None else chosen
        pos = (nm.plate, nm.well, nm.field, _norm_channel(ch) if ch is not None else None, nm.plane, nm.timepoint)
        groups.setdefault(pos, []).append(key)
    dups = [(pos, keys) for pos, keys in groups.items() if len(keys) > 1]
    if not dups:
        return
    lines = []
    for (plate, well, fld, ch, plane, tp), keys in dups[:5]:
        where = f"plate {plate!r} well {well}" + (f" field {fld}" if fld is not None else "") + \
            (f" channel {ch}" if ch is not None else "") + (f" plane {plane}" if plane is not None else "") + \
            (f" time point {tp}" if tp is not None else "")
        lines.append(f"{where}: {', '.join(keys)}")
    more = f"; and {len(dups) - 5} more" if len(dups) > 5 else ""
    raise ManifestError(f"{root}: {len(dups)} plate position(s) have more than one file, which would count them "
                        f"twice - {'; '.join(lines)}{more}. Point PLATE at the image folder, use --channel or "
                        f"--name-regex, or --allow-duplicates to process every file")


def _nz(v, big):
    return big if v is None else v


def _natural(s: str):
    return [(0, int(t), "") if t.isdigit() else (1, 0, t.lower()) for t in re.split(r"(\d+)", s) if t]
