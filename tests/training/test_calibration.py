"""What ``train`` sets as the U-Net threshold and minimum size: the profile's values without hand masks, the best
validation IoU with them."""
from __future__ import annotations

import numpy as np
import pytest

from artseg_core.nets.profiles import get_profile
from artseg_core.predict.model import DEFAULT_THRESHOLDS
from artseg_core.training.pipeline import _calibrate, _Fields


class _Model:
    """The two things _calibrate uses: the profile and a U-Net probability map per normalised image."""

    def __init__(self, profile, probs, **overrides):
        self.profile = get_profile(profile, **overrides)
        self.thresholds = dict(DEFAULT_THRESHOLDS)
        self._probs = probs

    def segment(self, img):
        return self._probs[int(img[0, 0])]


def _fields(n, masks):
    imgs = [np.full((32, 32), i, np.float32) for i in range(n)]  # the pixel value names the field
    y = np.array([i % 2 for i in range(n)])
    return _Fields(samples=[None] * n, imgs=imgs, qscores=[{}] * n, skipped=[], y=y, true_masks=masks,
                   tr=np.arange(0, n - 4), va=np.arange(n - 4, n))


@pytest.mark.parametrize("profile, overrides, expected", [
    ("fast", {}, 0.5), ("scorecam", {}, 0.5), ("mil", {}, 0.5), ("tiny", {}, 0.5),
    ("fast", {"unet_threshold": 0.65}, 0.65)])
def test_without_hand_masks_the_profile_sets_the_unet_threshold(profile, overrides, expected):
    model = _Model(profile, {i: np.full((32, 32), 0.9 * (i % 2), np.float32) for i in range(12)}, **overrides)
    info = _calibrate(model, _fields(12, {}))
    assert model.thresholds["unet"] == pytest.approx(expected) == info["unet_threshold"]
    assert model.thresholds["min_size"] == DEFAULT_THRESHOLDS["min_size"] == info["min_size"]
    assert info["val_iou"] is None and "no hand masks" in info["reference"]


def test_hand_masks_choose_the_threshold_whatever_the_profile_says():
    # an artifact with a 0.35 rim around a 0.45 body (the hand mask) and a 0.95 core: only 0.4 draws the hand mask
    prob = np.zeros((32, 32), np.float32)
    prob[4:28, 4:28] = 0.35
    prob[8:24, 8:24] = 0.45
    prob[12:20, 12:20] = 0.95
    probs = {i: (prob if i % 2 else np.zeros((32, 32), np.float32)) for i in range(12)}
    masks = {i: prob >= 0.45 for i in range(12) if i % 2}
    model = _Model("fast", probs)
    info = _calibrate(model, _fields(12, masks))
    assert model.thresholds["unet"] == pytest.approx(0.4) == info["unet_threshold"]
    assert info["val_iou"] == pytest.approx(1.0)
    assert "hand masks of 2 validation images" == info["reference"]
