"""Training checkpoints, and what a work folder was trained on.

Checkpoints are written atomically (temp file + rename) and read back without unpickling arbitrary objects
(``torch.load(weights_only=True)``). A work folder (``artseg train --work-dir``) records in ``fingerprint.json``
the training images (path, label, size, modification time, mask) and the configuration (profile, seed, validation
split, plane); every checkpoint written there carries the fingerprint's hash. Training started again with the same
folder resumes only when both are unchanged: other data or another configuration is refused with what differs
(``--restart`` trains from scratch), so a finished checkpoint can never pass for a model of new data.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

__all__ = ["save_checkpoint", "load_checkpoint", "CheckpointError", "training_fingerprint", "check_work_dir",
           "FINGERPRINT"]

FINGERPRINT = "fingerprint.json"
_FORMAT = "artseg-train-fingerprint"
#: what train() leaves in a work folder (removed by ``restart``)
_STATE_FILES = ("classifier.ckpt", "unet.ckpt")
_STATE_DIRS = ("pseudo_masks",)


class CheckpointError(ValueError):
    """A work folder or checkpoint that cannot be resumed; the message names the file, the problem and the fix."""


def _stat(p) -> list:
    if p is None:
        return [None, None, None]
    try:
        st = os.stat(p)
        return [str(Path(p).resolve()), st.st_size, st.st_mtime_ns]
    except OSError:
        return [str(p), None, None]


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def training_fingerprint(samples, config: dict) -> dict:
    """What a training run is made from: its images and its configuration, with a hash of each.

    Parameters
    ----------
    samples : iterable of Sample
        The labelled images (``path``, ``label``, ``mask_path``).
    config : dict
        JSON-serialisable settings that change the result (profile, seed, validation fraction, plane ...).

    Returns
    -------
    dict
        ``{"format", "images": {path: [label, size, mtime_ns, mask, mask size, mask mtime_ns]}, "config",
        "data_sha256", "config_sha256", "sha256"}``.
    """
    images = {}
    for s in samples:
        path, size, mtime = _stat(s.path)
        mask = _stat(getattr(s, "mask_path", None))
        images[path] = [int(s.label), size, mtime, *mask]
    cfg = json.loads(json.dumps(config, sort_keys=True, default=str))
    data_sha, cfg_sha = _digest(images), _digest(cfg)
    return {"format": _FORMAT, "images": images, "config": cfg, "data_sha256": data_sha, "config_sha256": cfg_sha,
            "sha256": _digest([data_sha, cfg_sha])}


def _flat(d, prefix="") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _differences(old: dict, new: dict) -> list[str]:
    """Human-readable differences between two fingerprints."""
    out = []
    oi, ni = old.get("images") or {}, new.get("images") or {}
    added = [p for p in ni if p not in oi]
    removed = [p for p in oi if p not in ni]
    changed = [p for p in ni if p in oi and list(oi[p]) != list(ni[p])]
    for what, lst in (("added", added), ("removed", removed), ("changed (label, file or mask)", changed)):
        if lst:
            out.append(f"{len(lst)} image(s) {what}, e.g. {Path(lst[0]).name}")
    oc, nc = _flat(old.get("config") or {}), _flat(new.get("config") or {})
    for k in sorted(set(oc) | set(nc)):
        if oc.get(k) != nc.get(k):
            out.append(f"{k}: {oc.get(k)!r} -> {nc.get(k)!r}")
    return out


def _clear(work: Path) -> list[str]:
    gone = []
    for name in _STATE_FILES:
        for p in (work / name, work / (name + ".tmp")):
            if p.exists():
                p.unlink()
                gone.append(p.name)
    for name in _STATE_DIRS:
        if (work / name).is_dir():
            shutil.rmtree(work / name)
            gone.append(name + "/")
    return gone


def check_work_dir(work_dir, samples, config: dict, restart: bool = False) -> dict:
    """Make sure a work folder's checkpoints belong to this training; record its fingerprint.

    Parameters
    ----------
    work_dir : path-like
        ``artseg train --work-dir`` (created when missing).
    samples : iterable of Sample
        The training images.
    config : dict
        The settings that change the result (see :func:`training_fingerprint`).
    restart : bool
        Remove the folder's checkpoints and pseudo-masks and train from scratch.

    Returns
    -------
    dict
        The fingerprint now recorded in ``work_dir/fingerprint.json``.

    Raises
    ------
    CheckpointError
        The folder holds checkpoints of other data or another configuration (the message lists the differences),
        or checkpoints of unknown origin; rerun with ``--restart`` or use another ``--work-dir``.
    """
    from artseg_core.io.files import write_text

    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    fp = training_fingerprint(samples, config)
    path = work / FINGERPRINT
    if restart:
        _clear(work)
    elif path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(old, dict) or old.get("format") != _FORMAT:
                raise ValueError("not an ArtSeg fingerprint")
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{path}: unreadable ({e}); rerun with --restart to train from scratch, or use "
                                  f"another --work-dir") from None
        if old.get("sha256") != fp["sha256"]:
            diffs = _differences(old, fp) or ["the recorded hashes differ"]
            raise CheckpointError(
                f"{work} holds the training state of other data or another configuration: {'; '.join(diffs[:6])}"
                f"{' ...' if len(diffs) > 6 else ''}. Resuming would give a model that was not trained on these "
                f"images - rerun with --restart to train from scratch, or use another --work-dir")
    else:
        found = [n for n in _STATE_FILES if (work / n).exists()]
        if found:
            raise CheckpointError(f"{work} holds checkpoints ({', '.join(found)}) without a record of what they were "
                                  f"trained on (an older ArtSeg, or copied from elsewhere); rerun with --restart to "
                                  f"train from scratch, or use another --work-dir")
    write_text(path, json.dumps(fp, indent=1, sort_keys=True) + "\n")
    return fp


def _folder_hash(path: Path) -> str | None:
    try:
        return json.loads((path.parent / FINGERPRINT).read_text(encoding="utf-8")).get("sha256")
    except (OSError, ValueError, AttributeError):
        return None


def save_checkpoint(path, state: dict) -> None:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) to ``path`` atomically.

    When the folder has a ``fingerprint.json`` (:func:`check_work_dir`), the checkpoint carries its hash.
    """
    import torch

    path = Path(path)
    fp = _folder_hash(path)
    if fp is not None:
        state = {**state, "artseg_fingerprint": fp}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path, required: tuple[str, ...] = ("model", "optimizer")) -> dict | None:
    """The checkpoint at ``path`` (``weights_only`` load), or None when there is none.

    Raises
    ------
    CheckpointError
        A truncated or foreign file, a checkpoint without the ``required`` entries, or one whose fingerprint
        differs from its folder's ``fingerprint.json`` (copied from another work folder).
    """
    import torch

    path = Path(path) if path is not None else None
    if path is None or not path.exists():
        return None
    fix = "delete it, or rerun with --restart to train from scratch"
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises anything from KeyError to UnpicklingError on a bad file
        kind = "truncated or corrupt" if path.stat().st_size and _looks_like_torch(path) else "not an ArtSeg"
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: {kind} training checkpoint ({first}); {fix}") from None
    if not isinstance(ck, dict) or any(k not in ck for k in required):
        raise CheckpointError(f"{path}: not an ArtSeg training checkpoint (no {', '.join(required)}); {fix}")
    mine, folder = ck.get("artseg_fingerprint"), _folder_hash(path)
    if mine is not None and folder is not None and mine != folder:
        raise CheckpointError(f"{path}: this checkpoint was trained on other data or another configuration than "
                              f"{path.parent / FINGERPRINT} records (copied from another work folder?); {fix}")
    return ck


def _looks_like_torch(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def restore_training(ck: dict, model, optimizer, scheduler, generator) -> None:
    """Load a training checkpoint's network, optimiser, scheduler and random-generator states (in place)."""
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    scheduler.load_state_dict(ck["scheduler"])
    generator.set_state(ck["generator"])
