"""ArtSeg: find and mask artifacts in brightfield microscopy from image-level labels.

The engine every face (CLI, CellProfiler module, Fiji scripts, plate runner) calls.
Heavy modules (torch) are imported lazily so that ``import artseg_core`` stays cheap.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["train", "load_model", "ArtifactModel", "Result", "read_image", "normalize", "__version__"]


def __getattr__(name):  # lazy access to the public API
    if name in ("load_model", "ArtifactModel", "Result"):
        from . import model as _m

        return getattr(_m, name)
    if name == "train":
        from .training import train

        return train
    if name in ("read_image", "normalize"):
        from . import io as _io

        return getattr(_io, name)
    raise AttributeError(f"module 'artseg_core' has no attribute {name!r}")
