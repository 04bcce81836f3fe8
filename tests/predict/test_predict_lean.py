"""The memory-lean prediction path gives exactly the results of the plain one.

``ArtifactModel.predict`` no longer keeps a full-size normalised float32 copy of the image while the
U-Net runs: the tiles are normalised on the fly with the percentiles of the whole image.
"""
from __future__ import annotations

import numpy as np
import pytest

from artseg_core.data import phantoms
from artseg_core.imgproc.normalize import NORMALIZE_SUBSAMPLE_PIXELS, apply_normalization, normalize, normalize_range
from artseg_core.predict.model import ArtifactModel
from artseg_core.nets.profiles import get_profile
from artseg_core.imgproc.tiling import predict_tiled


@pytest.mark.parametrize("dtype", [np.uint16, np.uint8, np.int32, np.float32, np.float64])
def test_normalize_by_parts_equals_normalize(dtype):
    rng = np.random.default_rng(0)
    base = rng.normal(3000, 400, (300, 200)).clip(0, 65535)
    if dtype == np.uint8:
        img = (base / 30).astype(np.uint8)
    elif dtype == np.float64:
        img = base + 1e6  # a large offset: the float64 path keeps its precision
    else:
        img = base.astype(dtype)
    whole = normalize(img)
    lo, scale = normalize_range(img)
    part = apply_normalization(img[50:170, 30:190], lo, scale)
    assert part.dtype == np.float32
    np.testing.assert_array_equal(part, whole[50:170, 30:190])
    np.testing.assert_array_equal(apply_normalization(img, lo, scale), whole)


def test_normalize_range_uses_the_subsample_of_normalize():
    side = int(np.sqrt(NORMALIZE_SUBSAMPLE_PIXELS)) + 60  # just above the subsampling limit
    rng = np.random.default_rng(1)
    img = rng.integers(0, 4096, (side, side), dtype=np.uint16)
    img[::2, ::2] = 4095  # the strided subsample sees these, a full-image percentile would not match
    lo, scale = normalize_range(img)
    np.testing.assert_array_equal(apply_normalization(img[:64, :64], lo, scale), normalize(img)[:64, :64])


def test_normalize_range_rejects_bad_input():
    with pytest.raises(ValueError, match="pmin"):
        normalize_range(np.ones((4, 4)), 50, 10)
    with pytest.raises(ValueError, match="non-empty"):
        normalize_range(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="pmin"):  # normalize still checks percentiles first, even when empty
        normalize(np.zeros((0, 3)), 50, 10)


def test_predict_tiled_transform_equals_transformed_input():
    rng = np.random.default_rng(2)
    img = rng.integers(0, 60000, (333, 250), dtype=np.uint16)
    lo, scale = normalize_range(img)

    def fn(b):
        return np.tanh(b * 3.0) + 0.1 * np.roll(b, 1, axis=-1)

    ref = predict_tiled(fn, normalize(img), tile=128, overlap=32, divisor=16)
    got = predict_tiled(fn, img, tile=128, overlap=32, divisor=16,
                        transform=lambda t: apply_normalization(t, lo, scale))
    np.testing.assert_array_equal(got, ref)


@pytest.fixture(scope="module")
def untrained_tiny():
    prof = get_profile("tiny").with_overrides(predict_tile=128, predict_overlap=32)
    return ArtifactModel(prof, *ArtifactModel.build_networks(prof), thresholds={"unet": 0.5, "min_size": 4},
                         device="cpu")


@pytest.mark.parametrize("method", ["percentile", "quartile"])
def test_predict_equals_normalize_then_segment(untrained_tiny, method):
    """predict() scales the image as the model's profile says (``normalization``), then segments and classifies."""
    prof = untrained_tiny.profile.with_overrides(normalization=method)
    m = ArtifactModel(prof, untrained_tiny.classifier, untrained_tiny.unet, thresholds=untrained_tiny.thresholds,
                      device="cpu")
    f = phantoms.make_field((300, 260), seed=4, artifacts=["debris", "bubble"])
    res = m.predict(f.image, gate=False)
    norm = normalize(f.image, method=method)
    np.testing.assert_array_equal(m.normalize(f.image), norm)
    np.testing.assert_array_equal(res.prob, m.segment(norm))
    assert res.p_artifact == m.classify(norm)
    assert res.prob.dtype == np.float32 and res.prob.shape == f.image.shape
    assert res.labels.dtype == np.int32


def test_predict_reads_a_memmap_without_changing_it(untrained_tiny, tmp_path):
    f = phantoms.make_field((256, 256), seed=6, artifacts=["fibre"])
    mm = np.lib.format.open_memmap(tmp_path / "im.npy", mode="w+", dtype=f.image.dtype, shape=f.image.shape)
    mm[:] = f.image
    mm.flush()
    ro = np.load(tmp_path / "im.npy", mmap_mode="r")
    res = untrained_tiny.predict(ro, gate=False)
    np.testing.assert_array_equal(res.prob, untrained_tiny.predict(f.image, gate=False).prob)
    np.testing.assert_array_equal(np.asarray(ro), f.image)


def test_quartile_normalisation_maps_the_fences_to_0_and_1():
    from artseg_core.imgproc.normalize import QUARTILE_FENCE

    rng = np.random.default_rng(3)
    img = rng.normal(1000, 50, (200, 150)).astype(np.float32)
    q25, q75 = np.percentile(img, [25, 75])
    d = q75 - q25 + 1e-6
    lo, scale = normalize_range(img, method="quartile")
    assert lo == pytest.approx(q25 - QUARTILE_FENCE * d)
    assert scale == pytest.approx(1 / ((2 * QUARTILE_FENCE + 1) * d))
    out = normalize(img, method="quartile")
    np.testing.assert_array_equal(out, apply_normalization(img, lo, scale))
    assert np.median(out) == pytest.approx(0.5, abs=0.01)     # symmetric noise: the quartiles sit at 5/12 and 7/12
    assert np.mean((out == 0) | (out == 1)) < 0.001           # 2.5 IQR beyond the quartiles: ~4 sigma
    with pytest.raises(ValueError, match="unknown normalisation 'zscore'"):
        normalize_range(img, method="zscore")


def test_quartile_normalisation_of_a_field_with_equal_quartiles_is_the_percentile_one():
    img = np.full((100, 100), 200, np.uint16)
    img[:10] = np.arange(1000).reshape(10, 100)  # 90 % of the pixels one value: p25 == p75
    assert normalize_range(img, method="quartile") == normalize_range(img)


def test_an_artifact_does_not_change_the_rest_of_the_field_under_quartile():
    """The reason for ``quartile``: a dark artifact on 5 % of a field moves its 1st percentile, so every other pixel
    changes its normalised value under ``percentile``; the quartiles barely move."""
    rng = np.random.default_rng(5)
    clean = rng.normal(1000, 60, (256, 256))
    dirty = clean.copy()
    dirty[:, :13] = 300  # a dark band on 5 % of the field
    rest = np.s_[:, 13:]
    for method, lo_shift, hi_shift in (("percentile", 0.2, 1.0), ("quartile", 0.0, 0.02)):
        shift = np.abs(normalize(dirty, method=method)[rest] - normalize(clean, method=method)[rest])
        assert lo_shift <= np.median(shift) <= hi_shift, (method, np.median(shift))
