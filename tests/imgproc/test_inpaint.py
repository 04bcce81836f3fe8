"""Artifact filling: untouched background, matched statistics, polynomial recovery, dtypes."""
from __future__ import annotations

import numpy as np
import pytest

from artseg_core.imgproc.inpaint import eval_background, fill_artifacts, fit_background

pytestmark = pytest.mark.engine  # also run in the numpy-2 environment (make test-numpy2)

SHAPE = (120, 150)


def _quadratic(shape=SHAPE):
    r, c = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    return 1000 + 2.0 * c - 1.5 * r + 0.01 * c * c + 0.004 * r * c - 0.02 * r * r


def _blob_mask(shape=SHAPE, seed=0, n=6, radius=7):
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[: shape[0], : shape[1]]
    mask = np.zeros(shape, bool)
    for _ in range(n):
        y, x = rng.integers(radius, shape[0] - radius), rng.integers(radius, shape[1] - radius)
        mask |= (r - y) ** 2 + (c - x) ** 2 <= radius ** 2
    return mask


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("method", ["median", "background"])
def test_unmasked_pixels_unchanged_and_dtype_kept(dtype, method):
    rng = np.random.default_rng(1)
    scale = 100 if dtype == np.uint8 else 1000
    img = (rng.random(SHAPE) * scale + 20).astype(dtype)
    mask = _blob_mask()
    img[mask] = 7  # the "artifact"
    out = fill_artifacts(img, mask, method=method)
    assert out.dtype == img.dtype and out.shape == img.shape
    np.testing.assert_array_equal(out[~mask], img[~mask])
    assert abs(out[mask].astype(float).mean() - img[~mask].astype(float).mean()) < 0.1 * scale
    assert img[mask].max() == 7  # input not modified in place


def test_background_fill_matches_background_statistics():
    rng = np.random.default_rng(2)
    truth = _quadratic()
    img = (truth + rng.normal(0, 5.0, SHAPE)).astype(np.uint16)
    mask = _blob_mask(seed=3, n=8, radius=9)
    img[mask] = 60000  # bright debris
    out = fill_artifacts(img, mask, method="background", seed=0)
    diff = out[mask].astype(float) - truth[mask]
    assert abs(diff.mean()) < 1.5  # surface unbiased (truncation to int costs ~0.5)
    assert 4.0 < diff.std() < 6.0  # noise of matched std (5)
    # deterministic per seed, different between seeds
    np.testing.assert_array_equal(out, fill_artifacts(img, mask, method="background", seed=0))
    assert not np.array_equal(out, fill_artifacts(img, mask, method="background", seed=1))


def test_polynomial_recovered_despite_cells():
    truth = _quadratic().astype(np.float32)
    img = truth.copy()
    # unmasked "cells": dark disks on 10 % of the field must not bias the robust fit
    cells = _blob_mask(seed=5, n=12, radius=6)
    img[cells] -= 300
    mask = _blob_mask(seed=6, n=5, radius=10) & ~cells
    coef, sigma = fit_background(img, mask)
    r, c = np.nonzero(np.ones(SHAPE, bool))
    surf = eval_background(coef, r, c, SHAPE).reshape(SHAPE)
    assert np.abs(surf - truth).max() < 0.05
    assert sigma < 0.05
    out = fill_artifacts(img, mask, method="background")
    np.testing.assert_allclose(out[mask], truth[mask], atol=0.1)


def test_median_uses_local_ring():
    img = np.full(SHAPE, 100, np.uint8)
    img[:, 75:] = 200
    mask = np.zeros(SHAPE, bool)
    mask[20:30, 20:30] = True  # in the dark half
    mask[80:95, 110:130] = True  # in the bright half
    img[mask] = 0
    out = fill_artifacts(img, mask, method="median")
    assert np.all(out[20:30, 20:30] == 100) and np.all(out[80:95, 110:130] == 200)


def test_median_falls_back_to_global_median():
    rng = np.random.default_rng(4)
    img = rng.normal(50, 1, SHAPE).astype(np.float32)
    img[0:2, 0:2] = 0
    mask = np.zeros(SHAPE, bool)
    mask[0:5, 0:5] = True
    mask[0:2, 0:2] = False
    mask[0, 0] = True  # object A: its 1-px ring holds only 3 free pixels (value 0) -> too few
    out = fill_artifacts(img, mask, method="median", ring=1)
    assert abs(out[0, 0] - np.median(img[~mask])) < 0.5  # global median (~50), not the ring's 0
    assert abs(out[4, 4] - 50) < 3  # the band around it has a proper ring


def test_integer_fill_is_clipped_not_wrapped():
    img = np.random.default_rng(5).normal(250, 10, SHAPE).clip(0, 255).astype(np.uint8)
    mask = _blob_mask(seed=7)
    out = fill_artifacts(img, mask, method="background")
    assert out[mask].max() <= 255 and out[mask].min() > 200


def test_degenerate_masks_and_bad_input():
    img = np.arange(20, dtype=np.uint16).reshape(4, 5)
    np.testing.assert_array_equal(fill_artifacts(img, np.zeros(img.shape, bool)), img)
    with pytest.warns(RuntimeWarning, match="whole image"):
        np.testing.assert_array_equal(fill_artifacts(img, np.ones(img.shape, bool), method="background"), img)
    with pytest.raises(ValueError, match="method"):
        fill_artifacts(img, img > 3, method="telea")
    with pytest.raises(ValueError, match="shape"):
        fill_artifacts(img, np.zeros((5, 4), bool))
    with pytest.raises(ValueError, match="2-D"):
        fill_artifacts(np.zeros((2, 3, 3)), np.zeros((2, 3, 3), bool))
    # a few free pixels are enough for a fit
    mask = np.ones(img.shape, bool)
    mask[0, :] = False
    mask[-1, :3] = False
    out = fill_artifacts(img.astype(np.float32), mask, method="background")
    assert np.all(np.isfinite(out))
