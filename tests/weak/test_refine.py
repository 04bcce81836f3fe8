"""Edge map, saliency refinement, binarisation and threshold selection on hand-made images."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from artseg_core.weak.refine import (
    DEFAULT_THRESHOLD,
    CANDIDATE_THRESHOLDS,
    binarize,
    edge_map,
    refine_saliency,
    select_threshold,
)

pytestmark = pytest.mark.engine  # also run in the numpy-2 environment (make test-numpy2)


def _square(shape=(64, 64), lo=16, hi=48, value=1.0):
    img = np.zeros(shape, np.float64)
    img[lo:hi, lo:hi] = value
    return img


def test_edge_map_marks_the_border_of_a_square():
    img = _square()
    e = edge_map(img, dilation=0, sigma=1.0)
    assert e.dtype == np.float32 and e.shape == img.shape
    assert e.min() >= 0 and e.max() <= 1 and e.max() == pytest.approx(1.0)
    # on the border: strong; deep inside and far outside: zero
    assert e[16, 32] > 0.5 and e[47, 32] > 0.5 and e[32, 16] > 0.5
    assert e[32, 32] == 0 and e[2, 2] == 0


def test_edge_map_dilation_widens_the_band():
    img = _square()
    thin = edge_map(img, dilation=0) > 0.2
    wide = edge_map(img, dilation=5) > 0.2
    assert wide.sum() > thin.sum()
    assert wide[thin].all()  # dilation only adds
    assert not thin[16 + 6, 32] and wide[16 + 6, 32]  # 6 px inside the border: reached only after dilation
    assert not wide[32, 32]  # the centre is still more than 5 px from any edge


def test_edge_map_is_scale_invariant_and_robust_to_a_hot_pixel():
    img = _square()
    np.testing.assert_allclose(edge_map(img), edge_map(img * 1000.0 + 7), atol=1e-5)
    hot = _square((128, 128), 32, 96)
    hot[5, 5] = 1e6  # one extreme pixel (its blurred spot < 1 % of the image) must not squash the other edges
    e = edge_map(hot, dilation=0)
    assert e[32, 64] > 0.5


def test_edge_map_of_a_flat_image_is_zero_and_bad_input_raises():
    assert not edge_map(np.full((20, 30), 3.0)).any()
    with pytest.raises(ValueError, match="2-D"):
        edge_map(np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="NaN"):
        edge_map(np.array([[0.0, np.nan], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="dilation"):
        edge_map(np.zeros((8, 8)), dilation=-1)


def test_refine_resizes_keeps_range_and_follows_edges():
    img = _square((64, 64))
    low = np.zeros((8, 8), np.float32)
    low[2:6, 2:6] = 1.0  # coarse saliency over the square
    out = refine_saliency(low, img, use_edges=True)
    assert out.shape == img.shape and out.dtype == np.float32
    assert out.min() == 0.0 and out.max() == pytest.approx(1.0)
    # edges kept, flat interior of the object suppressed relative to its border
    assert out[16, 32] > 0.5
    assert out[32, 32] < 0.1
    plain = refine_saliency(low, img, use_edges=False)
    assert plain[32, 32] == pytest.approx(1.0)  # no edges: just the resized, renormalised saliency
    assert plain[0, 0] == 0.0


def test_refine_without_saliency_is_zero():
    img = _square()
    assert not refine_saliency(np.zeros((64, 64)), img).any()
    with pytest.raises(ValueError, match="saliency"):
        refine_saliency(np.zeros(10), img)


def test_binarize():
    s = np.array([[0.0, 0.49], [0.5, 1.0]])
    np.testing.assert_array_equal(binarize(s, 0.5), [[False, False], [True, True]])
    assert binarize(s, DEFAULT_THRESHOLD).dtype == bool
    with pytest.raises(ValueError, match="finite"):
        binarize(s, float("nan"))


def test_select_threshold_finds_the_separating_value():
    rng = np.random.default_rng(0)
    maps, masks = [], []
    for _ in range(3):
        m = np.zeros((40, 40), bool)
        m[10:25, 12:30] = True
        s = np.where(m, rng.uniform(0.62, 1.0, m.shape), rng.uniform(0.0, 0.28, m.shape))
        maps.append(s)
        masks.append(m)
    best, table = select_threshold(maps, masks)
    # every threshold in (0.28, 0.62] separates perfectly: 0.30 .. 0.60 tie, the middle one is 0.45
    assert best == pytest.approx(0.45)
    assert [r["threshold"] for r in table] == list(CANDIDATE_THRESHOLDS)
    row = {round(r["threshold"], 2): r for r in table}
    assert row[0.45]["iou"] == pytest.approx(1.0) and row[0.45]["dice"] == pytest.approx(1.0)
    assert row[0.05]["iou"] < 1.0 and row[0.95]["iou"] < 1.0
    # IoU by hand at 0.95: fraction of the inside values >= 0.95
    inside = np.concatenate([s[m] for s, m in zip(maps, masks)])
    per_image = [np.mean(s[m] >= 0.95) for s, m in zip(maps, masks)]
    assert row[0.95]["iou"] == pytest.approx(np.mean(per_image))
    assert inside.size == 3 * 15 * 18


def test_select_threshold_dice_and_tie_rules():
    # one image, saliency = 0.3 inside the mask, 0 outside: thresholds 0.1, 0.2, 0.3 tie (IoU 1)
    m = np.zeros((10, 10), bool)
    m[2:5, 2:5] = True
    s = np.where(m, 0.3, 0.0)
    best, table = select_threshold([s], [m], thresholds=[0.3, 0.1, 0.5, 0.2], metric="dice")
    assert best == pytest.approx(0.2)  # middle of the plateau 0.1, 0.2, 0.3 (candidates are sorted)
    assert [r["threshold"] for r in table] == [0.1, 0.2, 0.3, 0.5]
    assert table[-1]["dice"] == 0.0 and table[-1]["iou"] == 0.0
    # even plateau: lower middle
    best2, _ = select_threshold([s], [m], thresholds=[0.1, 0.2, 0.3, 0.25])
    assert best2 == pytest.approx(0.2)


def test_select_threshold_empty_masks_count_as_perfect_only_when_nothing_is_predicted():
    s = np.full((5, 5), 0.4)
    m = np.zeros((5, 5), bool)
    best, table = select_threshold([s], [m], thresholds=[0.2, 0.5])
    assert best == 0.5
    assert table[0]["iou"] == 0.0 and table[1]["iou"] == 1.0


def test_select_threshold_validates_inputs():
    s = np.zeros((4, 4))
    with pytest.raises(ValueError, match="at least one"):
        select_threshold([], [])
    with pytest.raises(ValueError, match="2 saliency maps but 1 masks"):
        select_threshold([s, s], [s > 0])
    with pytest.raises(ValueError, match="mask 1 has shape"):
        select_threshold([s, s], [s > 0, np.zeros((3, 3), bool)])
    with pytest.raises(ValueError, match="metric"):
        select_threshold([s], [s > 0], metric="f1")
    with pytest.raises(ValueError, match="finite"):
        select_threshold([s], [s > 0], thresholds=[0.5, np.inf])


def test_default_thresholds_suit_their_refinement_on_phantoms():
    """The documented defaults beat each other's value on phantoms with a coarse, CAM-like saliency."""
    from artseg_core.data import phantoms
    from artseg_core.weak.refine import DEFAULT_THRESHOLD_PLAIN, default_threshold

    assert default_threshold(True) == DEFAULT_THRESHOLD and default_threshold(False) == DEFAULT_THRESHOLD_PLAIN
    maps_edges, maps_plain, truths = [], [], []
    for seed in range(4):
        field = phantoms.make_field(shape=(128, 128), seed=seed, n_artifacts=2)
        truth = field.artifact_mask
        cam_like = ndi.gaussian_filter(truth.astype(float), 8.0)  # as blurry as a stride-32 map
        maps_edges.append(refine_saliency(cam_like, field.image, use_edges=True))
        maps_plain.append(refine_saliency(cam_like, field.image, use_edges=False))
        truths.append(truth)
    thr = [DEFAULT_THRESHOLD, DEFAULT_THRESHOLD_PLAIN]
    _, edges = select_threshold(maps_edges, truths, thresholds=thr)
    _, plain = select_threshold(maps_plain, truths, thresholds=thr)
    assert edges[0]["iou"] > edges[1]["iou"] + 0.1
    assert plain[1]["iou"] > plain[0]["iou"] + 0.1
