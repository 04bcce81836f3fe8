"""Where the files of the faces that live outside the engine package are: the CellProfiler plugin, the
CellProfiler pipelines and the ImageJ/Fiji scripts.

In a source checkout (or an editable install) they are the repository's ``plugins/``, ``pipelines/`` and
``fiji_scripts/`` folders. A wheel carries them as data files under ``<prefix>/share/artseg/<folder>``; they are
found through the installed distribution's file list, so an install with ``--target`` or ``--user`` works too.
"""
from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["resource_dir", "ResourceNotFoundError", "FOLDERS"]

#: each folder and one file that must be in it
FOLDERS = {"plugins": "maskartifacts.py", "pipelines": "mask_artifacts_nuclei.cppipe",
           "fiji_scripts": "Mask_Artifacts.ijm"}


class ResourceNotFoundError(FileNotFoundError):
    """The installation lacks one of the faces' folders (names where it looked)."""


def _from_distribution(folder: str, marker: str) -> Path | None:
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        dist = distribution("artseg")
    except (ImportError, PackageNotFoundError):
        return None
    for f in dist.files or ():
        parts = Path(str(f)).parts
        if parts[-3:] == ("artseg", folder, marker) and "share" in parts:
            p = Path(dist.locate_file(f)).resolve()
            if p.is_file():
                return p.parent
    return None


def resource_dir(folder: str) -> Path:
    """The folder holding one of the faces' files.

    Parameters
    ----------
    folder : {"plugins", "pipelines", "fiji_scripts"}

    Returns
    -------
    pathlib.Path
        The checkout's folder when this package runs from a checkout, else the installed copy.

    Raises
    ------
    ResourceNotFoundError
        Neither a checkout nor an installed copy holds it (the message lists the places looked at).
    """
    if folder not in FOLDERS:
        raise ValueError(f"unknown resource folder {folder!r}; one of {sorted(FOLDERS)}")
    marker = FOLDERS[folder]
    beside = Path(__file__).resolve().parents[2]
    checkout, target = beside / folder, beside / "share" / "artseg" / folder  # the latter: pip install --target
    looked = [checkout, target]
    for cand in (checkout, target):
        if (cand / marker).is_file():
            return cand
    found = _from_distribution(folder, marker)
    if found is not None:
        return found
    prefix = Path(sys.prefix) / "share" / "artseg" / folder
    looked += ["the files of the installed 'artseg' distribution", prefix]
    if (prefix / marker).is_file():
        return prefix
    raise ResourceNotFoundError(f"ArtSeg's {folder} folder was not found (looked in "
                                + ", ".join(str(x) for x in looked) + "); reinstall artseg")
