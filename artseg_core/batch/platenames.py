"""Plate, well, field and channel from microscope image file names.

Recognised conventions (tried in this order):

* **Operetta / Opera Phenix (Harmony export)**: ``r02c05f134p01-ch1sk1fk1fl1.tiff`` - row 2 (B), column 5,
  field 134, plane 1, channel 1; ``sk`` is the time point. The plate comes from the folder.
* **Cytation / Gen5 image export**: ``A1_01_1_1_Bright Field_001.tif`` - well A1, imaging step 01, channel
  (wavelength) index 1, site (field) 1, channel name "Bright Field", sequence number 001 (kept as the time
  point); a Cytation C10 may insert a region after the well (``A1ROI1_02_...``). Gen5's own documentation is not
  public; this reading follows the regular expression of a CellProfiler pipeline run on Cytation 5 exports
  (Zenodo record 5933221, ``Well_Plate_Wavelength_site_channel_001``) and C10 files shown on forum.image.sc
  (thread 69372).
* **ImageXpress (MetaXpress)**: ``PLATE_A01_s1_w1.tif`` - optional plate prefix, well, ``_s`` site (field),
  ``_w`` wavelength (channel), optional ``_z`` plane and the GUID MetaXpress may append; ``_thumb`` files are
  thumbnails and are skipped.
* A user regular expression with named groups ``plate``, ``well`` (or ``row`` and ``col``), ``field``,
  ``channel``, ``plane``, ``timepoint``; it is searched in the path relative to the plate root, with "/"
  separators and without the file extension.

Wells are written as row letters and a two-digit column (``B05``; ``AF48`` on a 1536-well plate).
"""
from __future__ import annotations

import re
import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

__all__ = ["ImageName", "parse_name", "well_name", "row_letters", "row_index", "split_well",
           "channel_matches", "looks_brightfield", "image_stem", "GENERIC_FOLDERS"]

#: folder names that say nothing about the plate (the plate is then taken from the folder above)
GENERIC_FOLDERS = {"images", "image", "timepoint_1", "zstep_1", "raw", "tiff", "tif", "data", "export"}

_OPERETTA = re.compile(
    r"r(?P<row>\d{1,3})c(?P<col>\d{1,3})f(?P<field>\d{1,5})p(?P<plane>\d{1,4})"
    r"-ch(?P<channel>\d{1,3})sk(?P<timepoint>\d{1,5})fk\d{1,5}fl\d{1,5}$", re.IGNORECASE)
_GEN5 = re.compile(
    r"^(?P<well>[A-Z]{1,2}\d{1,3})(?:ROI(?P<roi>\d+))?_(?P<step>\d{1,2})_(?P<chindex>\d{1,2})"
    r"_(?P<field>\d{1,4})_(?P<channel>[^_].*?)_(?P<timepoint>\d{3,})$")
_IMAGEXPRESS = re.compile(
    r"^(?:(?P<plate>.*?)_)?(?P<well>[A-Z]{1,2}\d{1,3})(?:_s(?P<field>\d{1,4}))?(?:_w(?P<channel>\d{1,2}))?"
    r"(?:_z(?P<plane>\d{1,4}))?(?P<thumb>_thumb)?"
    r"(?:_?[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12})?$")
_WELL = re.compile(r"^(?P<row>[A-Za-z]{1,2})0*(?P<col>\d{1,3})$")
_BRIGHTFIELD_WORDS = {"bf", "tl", "pc", "dic", "brightfield", "bright field", "phase", "phase contrast", "transmitted"}


@dataclass(frozen=True)
class ImageName:
    """What an image file name says about where it was taken.

    Attributes
    ----------
    plate : str
        Plate name ("" when unknown).
    well : str
        Well as row letters + two-digit column, e.g. ``"B05"`` ("" when the name has no well).
    row, col : int or None
        1-based row and column.
    field : int or None
        Field (site) number as written in the name.
    channel : str or None
        Channel as written (number or name); ``channel_aliases`` holds other accepted spellings.
    plane, timepoint : int or None
    convention : str
        ``"operetta"``, ``"gen5"``, ``"imagexpress"``, ``"regex"`` or ``"none"``.
    """

    plate: str = ""
    well: str = ""
    row: int | None = None
    col: int | None = None
    field: int | None = None
    channel: str | None = None
    plane: int | None = None
    timepoint: int | None = None
    convention: str = "none"
    channel_aliases: tuple[str, ...] = dataclasses.field(default=(), compare=False)
    skip: bool = dataclasses.field(default=False, compare=False)

    def as_dict(self) -> dict:
        """The fields written to the results table (no aliases, no skip flag)."""
        d = asdict(self)
        d.pop("channel_aliases")
        d.pop("skip")
        return d


def row_letters(row: int) -> str:
    """1 -> "A", 26 -> "Z", 27 -> "AA" (1536-well plates have rows A..AF)."""
    if row < 1:
        raise ValueError(f"plate rows are numbered from 1, got {row}")
    s = ""
    while row > 0:
        row, rem = divmod(row - 1, 26)
        s = chr(ord("A") + rem) + s
    return s


def row_index(letters: str) -> int:
    """Inverse of :func:`row_letters` ("A" -> 1, "AF" -> 32), case-insensitive."""
    if not letters or not letters.isalpha() or not letters.isascii():
        raise ValueError(f"not a plate row: {letters!r}")
    n = 0
    for ch in letters.upper():
        n = n * 26 + (ord(ch) - ord("A") + 1)
    return n


def well_name(row: int, col: int) -> str:
    """``well_name(2, 5) == "B05"``."""
    if col < 1:
        raise ValueError(f"plate columns are numbered from 1, got {col}")
    return f"{row_letters(row)}{col:02d}"


def split_well(well: str) -> tuple[int, int]:
    """``"B5"``, ``"b05"`` -> ``(2, 5)``. Raises ValueError for anything else."""
    m = _WELL.match(well.strip())
    if not m:
        raise ValueError(f"not a well name: {well!r} (expected row letters and a column number, e.g. B05)")
    return row_index(m["row"]), int(m["col"])


def _int(s: str | None) -> int | None:
    return None if s is None or s == "" else int(s)


def _norm_channel(s: str) -> str:
    """Lower-case, strip a ``w``/``ch``/``c`` prefix of a number and leading zeros: "w01" -> "1"."""
    t = s.strip().lower()
    m = re.fullmatch(r"(?:ch|c|w)?0*(\d+)", t)
    if m:
        return m.group(1)
    return re.sub(r"[\s_\-]+", " ", t)


def channel_matches(name: ImageName, wanted: str) -> bool:
    """Whether ``wanted`` (a ``--channel`` value) names this image's channel or one of its aliases."""
    if name.channel is None:
        return False
    w = _norm_channel(wanted)
    return any(_norm_channel(c) == w for c in (name.channel, *name.channel_aliases))


def looks_brightfield(channel: str | None) -> bool:
    """Whether a channel *name* says brightfield/transmitted light ("Bright Field", "BF", "Phase", ...)."""
    if channel is None:
        return False
    t = re.sub(r"[\s_\-]+", " ", channel.strip().lower())
    return t in _BRIGHTFIELD_WORDS or t.replace(" ", "").startswith(("bright", "phase", "trans"))


def image_stem(name: str) -> str:
    """File name without its image extension (``.ome.tif`` counts as one extension)."""
    low = name.lower()
    for ext in (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".png", ".jpeg", ".jpg"):
        if low.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    return Path(name).stem


def _plate_from_folder(rel: PurePosixPath, root_name: str) -> str:
    for part in reversed(rel.parts[:-1]):
        if part.lower() not in GENERIC_FOLDERS:
            return part
    return root_name


def _from_well(well: str) -> tuple[str, int | None, int | None]:
    r, c = split_well(well)
    return well_name(r, c), r, c


def parse_name(path: str | Path, root: str | Path | None = None, regex: str | re.Pattern | None = None
               ) -> ImageName | None:
    """Parse plate, well, field, channel, plane and time point from an image path.

    Parameters
    ----------
    path : str or Path
        The image file.
    root : str or Path, optional
        The plate root the path lies under; folders between the root and the file can name the plate. The
        root's own name is the plate when nothing else does.
    regex : str or compiled pattern, optional
        A user pattern with named groups (see the module docstring). When given, only it is tried, and a path
        it does not match gives ``None``.

    Returns
    -------
    ImageName or None
        ``None`` only when ``regex`` is given and does not match. Names that follow no known convention give an
        ``ImageName`` with ``convention="none"`` and an empty well.

    Raises
    ------
    ValueError
        ``regex`` is invalid or has none of the groups ``well``, ``row``/``col`` or ``field``, or a matched
        well/row is not a plate position.
    """
    p = Path(path)
    if root is not None:
        try:
            rel = PurePosixPath(p.resolve().relative_to(Path(root).resolve()).as_posix())
        except ValueError:
            rel = PurePosixPath(p.name)
        root_name = Path(root).resolve().name
    else:
        rel = PurePosixPath(p.name)
        root_name = p.resolve().parent.name
    stem = image_stem(p.name)
    folder_plate = _plate_from_folder(rel, root_name) if root is not None else _plate_from_folder(
        PurePosixPath(p.resolve().parent.name, p.name), root_name)

    if regex is not None:
        pat = re.compile(regex) if isinstance(regex, str) else regex
        groups = set(pat.groupindex)
        if not (groups & {"well", "row", "field"}):
            raise ValueError(f"--name-regex {pat.pattern!r} needs named groups such as (?P<well>...), "
                             f"(?P<row>...)(?P<col>...) or (?P<field>...)")
        target = str(rel.with_name(stem)) if rel.name else stem
        m = pat.search(target)
        if m is None:
            return None
        g = {k: v for k, v in m.groupdict().items() if v is not None}
        well, r, c = "", None, None
        if "well" in g:
            well, r, c = _from_well(g["well"])
        elif "row" in g and "col" in g:
            rs = g["row"]
            r = int(rs) if rs.isdigit() else row_index(rs)
            c = int(g["col"])
            well = well_name(r, c)
        return ImageName(plate=g.get("plate") or folder_plate, well=well, row=r, col=c,
                         field=_int(g.get("field")), channel=g.get("channel"), plane=_int(g.get("plane")),
                         timepoint=_int(g.get("timepoint")), convention="regex")

    m = _OPERETTA.search(stem)
    if m:
        r, c = int(m["row"]), int(m["col"])
        return ImageName(plate=folder_plate, well=well_name(r, c), row=r, col=c, field=int(m["field"]),
                         channel=m["channel"], plane=int(m["plane"]), timepoint=int(m["timepoint"]),
                         convention="operetta", channel_aliases=(f"ch{m['channel']}",))
    m = _GEN5.match(stem)
    if m:
        well, r, c = _from_well(m["well"])
        return ImageName(plate=folder_plate, well=well, row=r, col=c, field=int(m["field"]),
                         channel=m["channel"], timepoint=int(m["timepoint"]), convention="gen5",
                         channel_aliases=(m["chindex"],))
    m = _IMAGEXPRESS.match(stem)
    if m and (m["field"] is not None or m["channel"] is not None):
        well, r, c = _from_well(m["well"])
        return ImageName(plate=m["plate"] or folder_plate, well=well, row=r, col=c, field=_int(m["field"]),
                         channel=m["channel"], plane=_int(m["plane"]), convention="imagexpress",
                         channel_aliases=(f"w{m['channel']}",) if m["channel"] else (),
                         skip=m["thumb"] is not None)
    return ImageName(plate=folder_plate, convention="none")
