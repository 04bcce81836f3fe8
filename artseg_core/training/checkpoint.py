"""Training checkpoints: written atomically (temp file + rename), read back without unpickling arbitrary objects."""
from __future__ import annotations

from pathlib import Path

import torch


def save_checkpoint(path, state: dict) -> None:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) to ``path`` atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path) -> dict | None:
    """The checkpoint at ``path`` (``weights_only`` load), or None when there is none."""
    path = Path(path) if path is not None else None
    if path is None or not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)
