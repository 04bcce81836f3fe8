"""``artseg fiji-install``: put the ArtSeg commands into a Fiji or ImageJ 1.x installation.

What goes where (menu: Plugins > ArtSeg):

* ImageJ 1.x (a folder with ``ij.jar`` and ``plugins/``): ``plugins/ArtSeg/Mask_Artifacts.ijm``.
* ImageJ 1.x as a distribution installs it (Debian/Ubuntu ``imagej``: ``/usr/share/java/ij.jar``, no writable
  ``plugins/`` next to it): the user plugins folder ``~/.imagej/plugins/ArtSeg/`` that Debian's ``imagej``
  launcher reads (it starts ImageJ with ``-ijpath ~/.imagej``). Give the jar, its folder, or the user folder
  (``~/.imagej``, or any folder with a ``plugins/`` subfolder, or a ``plugins`` folder itself).
* Fiji (a folder with ``scripts/`` or a Fiji launcher such as ``ImageJ-linux64``, ``fiji-linux-x64``,
  ``ImageJ-win64.exe``; ``Fiji.app`` itself or the folder holding it): the macro in the same ImageJ 1.x way,
  ``Fiji.app/plugins/ArtSeg/Mask_Artifacts.ijm``, so ``run("Mask Artifacts", "...")`` receives its options
  exactly as in ImageJ 1.x; the Python-mode script as ``Fiji.app/scripts/Plugins/ArtSeg/Mask_Artifacts_Python.py``
  (menu "Mask Artifacts Python").

Next to each installed script goes ``artseg_command.txt``: the command the macro runs, by default the
absolute path of this environment's ``artseg`` executable, so ImageJ finds the engine without a PATH.
"""
from __future__ import annotations

import os
import shlex
import shutil
import sys
import time
from pathlib import Path

from artseg_core.bridges.resources import ResourceNotFoundError, resource_dir

__all__ = ["install", "detect_layout", "default_artseg_command", "script_sources", "FijiInstallError",
           "COMMAND_FILE", "user_imagej_dir"]

#: file next to the installed scripts holding the command that runs the engine
COMMAND_FILE = "artseg_command.txt"
MACRO = "Mask_Artifacts.ijm"
PY_SCRIPT = "Mask_Artifacts.py"
PY_INSTALLED = "Mask_Artifacts_Python.py"
_FIJI_LAUNCHERS = ("ImageJ-linux64", "ImageJ-linux32", "ImageJ-win64.exe", "ImageJ-win32.exe", "ImageJ-macosx",
                   "fiji-linux-x64", "fiji-linux-arm64", "fiji-windows-x64.exe", "fiji-windows-arm64.exe",
                   "fiji-macos", "fiji")


class FijiInstallError(ValueError):
    """The target is not a Fiji or ImageJ folder, or the scripts cannot be found/written."""


def script_sources() -> Path:
    """The folder holding ``Mask_Artifacts.ijm`` and ``Mask_Artifacts.py`` in this installation.

    The repository's ``fiji_scripts/`` (source checkout or editable install), else the copy a wheel installs
    (:func:`artseg_core.bridges.resources.resource_dir`).
    """
    try:
        return resource_dir("fiji_scripts")
    except ResourceNotFoundError as e:
        raise FijiInstallError(str(e)) from e


def user_imagej_dir() -> Path:
    """ImageJ 1.x's per-user folder as Debian's ``imagej`` launcher uses it (``-ijpath ~/.imagej``)."""
    return Path.home() / ".imagej"


def _has_ij_jar(d: Path) -> bool:
    return (d / "ij.jar").is_file() or any(d.glob("ij-1.*.jar"))


def detect_layout(target_dir: str | os.PathLike) -> tuple[str, Path]:
    """Tell a Fiji from an ImageJ 1.x installation and find the folder whose ``plugins/`` receives the macro.

    Parameters
    ----------
    target_dir : path
        ``Fiji.app`` (or the folder holding it); an ImageJ 1.x folder (``ij.jar`` + ``plugins/``); ImageJ's jar
        itself or a folder with ``ij.jar`` but no ``plugins/`` (a distribution's ImageJ such as Debian's
        ``/usr/share/java/ij.jar``: the user folder ``~/.imagej`` is used); a user ImageJ folder with a
        ``plugins/`` subfolder (``~/.imagej``); or a ``plugins`` folder itself.

    Returns
    -------
    kind : {"fiji", "imagej"}
    root : pathlib.Path
        The folder whose ``plugins/`` receives the macro (``Fiji.app`` when given the folder that holds it,
        ``~/.imagej`` for a distribution's ImageJ).

    Raises
    ------
    FijiInstallError
        The path does not exist or is none of these (the message says what was looked for).
    """
    d = Path(target_dir).expanduser()
    if d.is_file() and d.suffix.lower() == ".jar" and d.name.lower().startswith("ij"):
        d = d.parent  # ImageJ's jar: look at its folder
    if not d.is_dir():
        raise FijiInstallError(f"{d}: no such folder (give the Fiji.app or ImageJ folder, or ImageJ's ij.jar)")
    for root in (d, d / "Fiji.app", d / "Fiji"):
        if not root.is_dir():
            continue
        if ((root / "scripts").is_dir() or any((root / x).exists() for x in _FIJI_LAUNCHERS)
                or ((root / "Contents" / "MacOS").is_dir() and (root / "jars").is_dir())):
            return "fiji", root.resolve()
    if (d / "plugins").is_dir():  # ImageJ 1.x folder, or a user folder such as ~/.imagej
        return "imagej", d.resolve()
    if _has_ij_jar(d):  # a distribution's ImageJ (Debian: /usr/share/java/ij.jar): the user's plugins folder
        return "imagej", user_imagej_dir()
    if d.name == "plugins":
        return "imagej", d.resolve().parent
    raise FijiInstallError(f"{d}: neither a Fiji folder (Fiji.app with scripts/ or a Fiji launcher such as "
                           "ImageJ-linux64) nor an ImageJ 1.x folder (ij.jar, or a folder with plugins/ such as "
                           "~/.imagej)")


def _quote(path: str) -> str:
    if os.name == "nt":
        return f'"{path}"' if (" " in path and not path.startswith('"')) else path
    return shlex.quote(path)


def default_artseg_command() -> str:
    """How ImageJ should run this environment's engine: the absolute path of its ``artseg`` executable.

    Falls back to ``<python> -m artseg_core.cli`` when no ``artseg`` script is installed next to the Python
    interpreter or on the PATH. Paths are quoted for the shell the macro uses (sh, or cmd on Windows).
    """
    exe_dir = Path(sys.executable).parent
    names = ("artseg.exe", "artseg") if os.name == "nt" else ("artseg",)
    for folder in (exe_dir, exe_dir / "Scripts", exe_dir.parent / "bin"):
        for n in names:
            if (folder / n).is_file() and os.access(folder / n, os.X_OK):
                return _quote(str((folder / n).absolute()))
    found = shutil.which("artseg")
    if found:
        return _quote(str(Path(found).absolute()))
    return f"{_quote(str(Path(sys.executable).absolute()))} -m artseg_core.cli"


def install(target_dir: str | os.PathLike, artseg_command: str | None = None) -> list[Path]:
    """Install the ArtSeg commands into a Fiji or ImageJ 1.x folder.

    Parameters
    ----------
    target_dir : path
        ``Fiji.app`` (or the folder holding it), an ImageJ 1.x folder, ImageJ's jar (Debian:
        ``/usr/share/java/ij.jar``, installed for the user into ``~/.imagej/plugins``) or a user plugins
        folder; see :func:`detect_layout`.
    artseg_command : str, optional
        Shell command the macro runs for the engine (quote paths with spaces); default
        :func:`default_artseg_command`.

    Returns
    -------
    list of pathlib.Path
        The files written (scripts and command files). Re-running overwrites them.

    Raises
    ------
    FijiInstallError
        Not a Fiji/ImageJ folder, scripts missing, an empty command, or a folder that cannot be written.
    """
    kind, root = detect_layout(target_dir)
    src = script_sources()
    cmd = (artseg_command if artseg_command is not None else default_artseg_command()).strip()
    if not cmd or "\n" in cmd:
        raise FijiInstallError(f"invalid artseg command {artseg_command!r}: give one line, e.g. /path/to/artseg")
    note = (f"# Written by `artseg fiji-install` on {time.strftime('%Y-%m-%d %H:%M')}: the command Mask Artifacts "
            "runs for the ArtSeg engine.\n# Edit the next line to use another environment.\n")
    plan = [(root / "plugins" / "ArtSeg", [(src / MACRO, MACRO)])]
    if kind == "fiji":
        py = src / PY_SCRIPT
        if py.is_file():
            plan.append((root / "scripts" / "Plugins" / "ArtSeg", [(py, PY_INSTALLED)]))
    written: list[Path] = []
    try:
        for dest, files in plan:
            dest.mkdir(parents=True, exist_ok=True)
            for source, name in files:
                shutil.copyfile(source, dest / name)
                written.append(dest / name)
            (dest / COMMAND_FILE).write_text(note + cmd + "\n", encoding="utf-8")
            written.append(dest / COMMAND_FILE)
    except OSError as e:
        raise FijiInstallError(f"{root}: cannot write the ArtSeg scripts: {e}") from e
    return written
