"""Plate inputs -> the ordered list of images to process.

A plate is given as a folder (searched recursively), a glob pattern, a single image, or a CSV manifest: either a
plain table with a ``path`` column (``file``, ``filename``, ``image`` also accepted; optional ``plate``, ``well``,
``field``/``site``, ``channel`` columns) or a CellProfiler LoadData table (``FileName_X``/``PathName_X`` column
pairs, one pair per channel X, with optional ``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Site`` ...).
What a table does not say is parsed from the file names (:mod:`.platenames`).

Only one channel is processed: the one named by ``channel`` (``--channel``); when there are several and none is
named, a single channel whose name says brightfield ("Bright Field", "BF", "Phase" ...) is taken, otherwise the
call fails and lists the channels found.
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

__all__ = ["ImageTask", "Manifest", "build_manifest", "ManifestError"]


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


def build_manifest(source: str | os.PathLike, *, channel: str | None = None, name_regex: str | None = None,
                   exclude: str | os.PathLike | None = None) -> Manifest:
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

    Returns
    -------
    Manifest

    Raises
    ------
    ManifestError
        Missing input, unreadable or malformed CSV, no images, an unknown or ambiguous channel, a bad regex, or
        two inputs that would write the same output files.
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
        for f in files:
            try:
                nm = parse_name(f, root=root, regex=regex)
            except ValueError as e:
                raise ManifestError(f"{f}: {e}") from None
            if nm is None:
                unmatched += 1
                continue
            if nm.skip:
                continue
            items.append((f, nm))
        if unmatched:
            notes.append(f"{unmatched} file(s) do not match --name-regex and are left out")
        if not items:
            raise ManifestError(f"{src}: no image matches the naming pattern "
                                f"{name_regex!r}" if regex is not None else f"{src}: no images to process")

    if kind != "loaddata":
        chans_all = sorted({nm.channel for _, nm in items if nm.channel is not None}, key=_natural)
        chosen = _choose_channel(chans_all, channel, src)
        if chosen is not None:
            sel = [(q, nm) for q, nm in items if channel_matches(nm, chosen)]
            if not sel:
                raise ManifestError(f"{src}: no image has channel {chosen!r} (channels found: "
                                    f"{', '.join(chans_all) or 'none in the file names'})")
            if len(sel) < len(items):
                notes.append(f"channel {chosen}: {len(sel)} of {len(items)} images")
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
    return Manifest(tasks=tasks, root=str(root), source=src, kind=kind, channels=chans_all, channel=chosen,
                    notes=notes)


def _nz(v, big):
    return big if v is None else v


def _natural(s: str):
    return [(0, int(t), "") if t.isdigit() else (1, 0, t.lower()) for t in re.split(r"(\d+)", s) if t]
