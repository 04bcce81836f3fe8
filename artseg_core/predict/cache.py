"""One model cache for every face that loads a model more than once (plate workers, CellProfiler, ImageJ bridge).

A model is keyed by its file's resolved path, size and modification time and by the device: a model file
replaced in place (a retrained ``model.artseg``) is loaded again, never served stale. A few models stay loaded
(least recently used ones are dropped). Safe to call from several threads: one thread loads a given model while
the others wait for it.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

__all__ = ["load_model_cached", "clear_model_cache", "cache_key", "MAX_MODELS"]

#: models kept loaded at once
MAX_MODELS = 4

_cache: "OrderedDict[tuple, object]" = OrderedDict()
_lock = threading.Lock()
_loading: dict[tuple, threading.Lock] = {}


def cache_key(path, device: str = "cpu") -> tuple:
    """``(resolved path, size, mtime_ns, device)`` of a model file.

    Raises
    ------
    ModelFileError
        The file does not exist.
    """
    from artseg_core.io.modelfile import ModelFileError

    p = Path(path)
    try:
        st = os.stat(p)
    except OSError:
        raise ModelFileError(p, "model file not found") from None
    return (str(p.resolve()), st.st_size, st.st_mtime_ns, str(device))


def load_model_cached(path, device: str = "cpu"):
    """The model in ``path`` on ``device``, loaded once and shared.

    Parameters
    ----------
    path : path-like
        An ``.artseg`` model file.
    device : str
        Torch device ("cpu", "cuda", "auto", ...), passed to :func:`artseg_core.predict.model.load_model`.

    Returns
    -------
    ArtifactModel
        The same object for the same file (path, size, modification time) and device.

    Raises
    ------
    ModelFileError
        A missing or unusable model file (nothing is cached then).
    """
    key = cache_key(path, device)
    with _lock:
        m = _cache.get(key)
        if m is not None:
            _cache.move_to_end(key)
            return m
        gate = _loading.setdefault(key, threading.Lock())
    with gate:  # one loader per key; the others wait and then find it cached
        with _lock:
            m = _cache.get(key)
            if m is not None:
                _cache.move_to_end(key)
                return m
        from artseg_core.predict.model import load_model

        try:
            m = load_model(path, device=device)
        except BaseException:
            with _lock:
                _loading.pop(key, None)
            raise
        with _lock:
            _cache[key] = m
            _cache.move_to_end(key)
            while len(_cache) > MAX_MODELS:
                _cache.popitem(last=False)
            _loading.pop(key, None)
        return m


def clear_model_cache() -> None:
    """Drop every cached model."""
    with _lock:
        _cache.clear()
