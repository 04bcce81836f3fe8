"""The ArtSeg model file: one zip with a JSON manifest and the weights as a pickle-free ``.npz``.

Layout of ``model.artseg``::

    manifest.json   format name and version, configuration, thresholds, training summary,
                    library versions, SHA-256 of weights.npz
    weights.npz     every tensor of both networks as plain numpy arrays ("classifier.<key>", "unet.<key>")

Opening a file never unpickles anything (``numpy.load(allow_pickle=False)``, ``json``), so files from others are
safe to open: the number of members and the unpacked size of each are checked against caps before anything is
read (a small file cannot make the reader allocate gigabytes), and thresholds must be numbers. Every problem
raises :class:`ModelFileError` naming the file and the problem.
"""
from __future__ import annotations

import hashlib
import io as _stdio
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from artseg_core.io.files import atomic_write

FORMAT_NAME = "artseg-model"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.npz"
#: caps checked before reading: members in the zip, unpacked bytes of the manifest and of the weights
MAX_MEMBERS = 16
MAX_MANIFEST_BYTES = 16 << 20
MAX_WEIGHTS_BYTES = 8 << 30
#: unpacked / packed size above which a member is refused (ArtSeg stores members uncompressed: ratio 1)
MAX_RATIO = 20


class ModelFileError(ValueError):
    """A model file that cannot be used: missing, truncated, corrupt, foreign or from a newer ArtSeg."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


def save_model_file(path, manifest: dict[str, Any], arrays: dict[str, np.ndarray]) -> Path:
    """Write a model file atomically.

    Parameters
    ----------
    path : path-like
        Destination (conventionally ``*.artseg``).
    manifest : dict
        JSON-serialisable description (configuration, thresholds, summary). ``format``, ``format_version``
        and ``weights_sha256`` are filled in here.
    arrays : dict of str to ndarray
        Named numeric arrays (no object arrays).
    """
    buf = _stdio.BytesIO()
    for k, a in arrays.items():
        if np.asarray(a).dtype == object:
            raise TypeError(f"array {k!r} has dtype object; only numeric arrays are stored")
    np.savez(buf, **{k: np.ascontiguousarray(a) for k, a in arrays.items()})
    weights = buf.getvalue()
    full = dict(manifest)
    full["format"] = FORMAT_NAME
    full["format_version"] = FORMAT_VERSION
    full["weights_sha256"] = hashlib.sha256(weights).hexdigest()
    path = Path(path)
    with atomic_write(path, mode="wb") as fh:
        with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED) as zf:
            zf.writestr(MANIFEST, json.dumps(full, indent=2, sort_keys=True))
            zf.writestr(WEIGHTS, weights)
    return path


def load_model_file(path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read and verify a model file; return ``(manifest, arrays)``.

    Raises
    ------
    ModelFileError
        When the file is missing, empty, not a zip, truncated, lacks the manifest or weights, is of another
        format, of a newer format version, or fails its checksum.
    """
    path = Path(path)
    if not path.exists():
        raise ModelFileError(path, "model file not found")
    if path.is_dir():
        raise ModelFileError(path, "is a directory, not a model file")
    if path.stat().st_size == 0:
        raise ModelFileError(path, "model file is empty")
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_MEMBERS:
                raise ModelFileError(path, f"not an ArtSeg model file ({len(infos)} members; a model has 2)")
            names = {i.filename for i in infos}
            if MANIFEST not in names:
                if _starts_with_manifest(path):
                    raise ModelFileError(path, "truncated or corrupt model file (its end is missing: copy or "
                                               "download it again)")
                raise ModelFileError(path, "not an ArtSeg model file (no manifest.json inside)")
            for info in infos:
                _check_size(path, info)
            try:
                manifest = json.loads(zf.read(MANIFEST).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ModelFileError(path, f"corrupt manifest ({e})") from None
            if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
                raise ModelFileError(path, "not an ArtSeg model file (foreign manifest)")
            version = manifest.get("format_version")
            if not isinstance(version, int):
                raise ModelFileError(path, "corrupt manifest (no format_version)")
            if version > FORMAT_VERSION:
                raise ModelFileError(
                    path, f"written by a newer ArtSeg (model format {version}, this ArtSeg reads up to "
                          f"{FORMAT_VERSION}): upgrade artseg")
            if WEIGHTS not in names:
                raise ModelFileError(path, "model file has no weights (weights.npz missing)")
            weights = zf.read(WEIGHTS)
    except ModelFileError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, zipfile.LargeZipFile) as e:
        problem = "truncated or corrupt model file" if path.stat().st_size > 22 else "not a model file"
        raise ModelFileError(path, f"{problem} ({e})") from None
    _check_thresholds(path, manifest)
    if hashlib.sha256(weights).hexdigest() != manifest.get("weights_sha256"):
        raise ModelFileError(path, "corrupt model file (weights checksum mismatch)")
    try:
        with np.load(_stdio.BytesIO(weights), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise ModelFileError(path, f"corrupt weights ({e})") from None
    return manifest, arrays


def _starts_with_manifest(path: Path) -> bool:
    """Whether the file begins with the local header of ``manifest.json`` (as every ArtSeg model file does)."""
    with open(path, "rb") as fh:
        head = fh.read(30 + len(MANIFEST))
    return head[:4] == b"PK\x03\x04" and head[30:30 + len(MANIFEST)] == MANIFEST.encode()


def _check_size(path: Path, info: zipfile.ZipInfo) -> None:
    """Refuse a member whose unpacked size is beyond the caps, before it is read."""
    cap = MAX_MANIFEST_BYTES if info.filename == MANIFEST else MAX_WEIGHTS_BYTES
    if info.file_size > cap:
        raise ModelFileError(path, f"not an ArtSeg model file ({info.filename} unpacks to {info.file_size} bytes, "
                                   f"more than the {cap} allowed)")
    if info.file_size > MAX_RATIO * max(info.compress_size, 1) + (1 << 20):
        raise ModelFileError(path, f"not an ArtSeg model file ({info.filename} unpacks {info.compress_size} bytes "
                                   f"to {info.file_size}: a zip bomb?)")


def _check_thresholds(path: Path, manifest: dict) -> None:
    """Thresholds must be finite numbers (a text or a list would fail on every image)."""
    import math

    for key in ("thresholds", "quality_thresholds"):
        d = manifest.get(key)
        if d is None:
            continue
        if not isinstance(d, dict):
            raise ModelFileError(path, f"corrupt manifest ({key} is not a table of numbers)")
        for name, v in d.items():
            if key == "quality_thresholds" and not name.endswith(("_min", "_max")):
                continue  # method, k, n_images: descriptions
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ModelFileError(path, f"corrupt manifest ({key}.{name} is {v!r}, not a number)")


def state_dict_to_arrays(prefix: str, state_dict) -> dict[str, np.ndarray]:
    """Flatten a torch state_dict to ``{prefix.key: ndarray}`` (float tensors stored as float32)."""
    out = {}
    for k, t in state_dict.items():
        a = t.detach().cpu()
        if a.is_floating_point():
            a = a.float()
        out[f"{prefix}.{k}"] = a.numpy()
    return out


def arrays_to_state_dict(prefix: str, arrays: dict[str, np.ndarray]):
    """Inverse of :func:`state_dict_to_arrays` for one prefix."""
    import torch

    p = prefix + "."
    return {k[len(p):]: torch.from_numpy(np.array(v)) for k, v in arrays.items() if k.startswith(p)}
