"""Sample data for ``File > Open Sample > ArtSeg``: a synthetic brightfield field and its true artifact mask."""
from __future__ import annotations

from artseg_core.data.phantoms import make_field

__all__ = ["phantom_field"]


def phantom_field(seed: int = 5):
    """A 512 x 512 phantom field with a fibre, debris and a bubble, and its true artifact objects.

    Parameters
    ----------
    seed : int
        Phantom seed (the same seed gives the same field).

    Returns
    -------
    list of tuple
        napari layer data: ``(image, {"name": "phantom field"}, "image")`` and
        ``(labels, {"name": "true artifacts"}, "labels")``.
    """
    f = make_field(shape=(512, 512), seed=seed, artifacts=["fibre", "debris", "bubble"])
    return [(f.image, {"name": "phantom field"}, "image"),
            (f.artifact_labels.astype("int32"), {"name": "true artifacts", "opacity": 0.4}, "labels")]
