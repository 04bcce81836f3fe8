"""ArtSeg: find and mask artifacts in brightfield microscopy from image-level labels.

The engine every face (CLI, CellProfiler module, Fiji scripts, plate runner, napari) calls. The subpackages are
layers, each importing only from the layers below it (see ARCHITECTURE.md):

``imgproc`` (numpy image operations) < ``io`` (files) and ``nets`` (torch networks) < ``data``, ``evaluation``,
``weak`` < ``predict`` < ``training`` < ``batch``, ``bridges`` < ``cli``.

Heavy modules (torch) are imported lazily so that ``import artseg_core`` stays cheap.
"""
from __future__ import annotations

from artseg_core._version import __version__

__all__ = ["train", "load_model", "ArtifactModel", "Result", "read_image", "normalize", "__version__"]

_LAZY = {
    "load_model": "artseg_core.predict.model",
    "ArtifactModel": "artseg_core.predict.model",
    "Result": "artseg_core.predict.model",
    "train": "artseg_core.training.pipeline",
    "read_image": "artseg_core.io.images",
    "normalize": "artseg_core.imgproc.normalize",
}


def __getattr__(name):  # lazy access to the public API
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'artseg_core' has no attribute {name!r}")
