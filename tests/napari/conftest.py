"""napari tests run real Qt (xcb platform) under Xvfb, started by pytest-xvfb.

They skip only when a system library is missing: no Xvfb (and no display), or a library Qt's xcb platform plugin
needs (``make qt`` installs them). A missing Python package (napari, PyQt5, pytest-qt) is an error: ``make test``
installs them with the ``napari`` extra.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest


def missing_system_library() -> str | None:
    """Why Qt cannot start under Xvfb on this machine, or None when it can."""
    if not os.environ.get("DISPLAY") and shutil.which("Xvfb") is None:
        return "Xvfb is not installed and there is no display (apt-get install xvfb, or make qt)"
    spec = importlib.util.find_spec("PyQt5")
    if spec is None or not spec.submodule_search_locations:
        return None  # not a system library: importing napari's Qt will fail loudly instead
    plugin = Path(list(spec.submodule_search_locations)[0]) / "Qt5" / "plugins" / "platforms" / "libqxcb.so"
    if plugin.is_file() and shutil.which("ldd"):
        out = subprocess.run(["ldd", str(plugin)], capture_output=True, text=True).stdout
        missing = sorted({ln.split()[0] for ln in out.splitlines() if "not found" in ln})
        if missing:
            return f"Qt's xcb platform plugin lacks system libraries {', '.join(missing)} (make qt)"
    return None


_MISSING = missing_system_library()


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).parent == here:
            item.add_marker(pytest.mark.napari)
            if _MISSING:
                item.add_marker(pytest.mark.skip(reason=_MISSING))
