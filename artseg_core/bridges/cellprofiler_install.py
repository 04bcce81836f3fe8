"""``artseg cellprofiler-install``: put the MaskArtifacts module (and, if asked, the example pipelines) where
CellProfiler finds them.

CellProfiler loads plugins from one folder (File > Preferences > "CellProfiler plugins directory", or
``cellprofiler --plugins-directory DIR`` headless). The module is one file, ``maskartifacts.py``; it imports the
ArtSeg engine, so CellProfiler must run in a Python environment where ``artseg`` is installed (README,
"CellProfiler"). For the CellProfiler desktop app, which cannot import torch, use the built-in-modules route
instead (``artseg batch --loaddata`` and ``pipelines/loaddata_mask_nuclei.cppipe``).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from artseg_core.bridges.resources import ResourceNotFoundError, resource_dir

__all__ = ["install", "CellProfilerInstallError", "PLUGIN_FILE"]

PLUGIN_FILE = "maskartifacts.py"


class CellProfilerInstallError(ValueError):
    """The plugins folder cannot be used or written, or the plugin files are missing."""


def install(plugins_dir: str | os.PathLike, pipelines_dir: str | os.PathLike | None = None) -> list[Path]:
    """Copy the MaskArtifacts module into a CellProfiler plugins folder.

    Parameters
    ----------
    plugins_dir : path
        CellProfiler's plugins folder; created when missing (its parent must exist).
    pipelines_dir : path, optional
        Also copy the example ``.cppipe`` pipelines (and their README) here; created when missing.

    Returns
    -------
    list of pathlib.Path
        The files written. Re-running overwrites them.

    Raises
    ------
    CellProfilerInstallError
        The folder is a file, its parent is missing, it cannot be written, or the plugin is missing.
    """
    dest = Path(plugins_dir).expanduser()
    if dest.exists() and not dest.is_dir():
        raise CellProfilerInstallError(f"{dest}: is a file, not a folder (give CellProfiler's plugins folder)")
    if not dest.parent.is_dir():
        raise CellProfilerInstallError(f"{dest.parent}: no such folder (give CellProfiler's plugins folder)")
    try:
        sources = [(resource_dir("plugins") / PLUGIN_FILE, dest)]
        if pipelines_dir is not None:
            pdir = resource_dir("pipelines")
            sources += [(p, Path(pipelines_dir).expanduser()) for p in sorted(pdir.glob("*.cppipe"))]
            if (pdir / "README.md").is_file():
                sources.append((pdir / "README.md", Path(pipelines_dir).expanduser()))
    except ResourceNotFoundError as e:
        raise CellProfilerInstallError(str(e)) from e
    written = []
    try:
        for src, folder in sources:
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, folder / src.name)
            written.append(folder / src.name)
    except OSError as e:
        raise CellProfilerInstallError(f"{dest}: cannot write the ArtSeg CellProfiler files: {e}") from e
    return written
