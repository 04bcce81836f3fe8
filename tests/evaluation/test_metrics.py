"""Tests for artseg_core.metrics on hand-made cases whose answers are worked out in the comments."""
from __future__ import annotations

import math

import numpy as np
import pytest

from artseg_core.evaluation import metrics as M

pytestmark = pytest.mark.engine  # also run in the numpy-2 environment (make test-numpy2)


# ------------------------------------------------------------------------------------------- image level


def test_image_metrics_hand_case():
    y = [1, 1, 1, 0, 0, 0, 0]
    s = [0.9, 0.6, 0.2, 0.7, 0.4, 0.1, 0.5]
    m = M.image_metrics(y, s, threshold=0.5)
    # predicted positive (>= 0.5): 0.9(T) 0.6(T) 0.7(F) 0.5(F) -> tp=2 fp=2 ; 0.2(T) -> fn=1 ; 0.4 0.1 -> tn=2
    assert (m["tp"], m["fp"], m["fn"], m["tn"], m["n"]) == (2, 2, 1, 2, 7)
    assert m["precision"] == pytest.approx(2 / 4)
    assert m["recall"] == pytest.approx(2 / 3)
    # f1 = 2 * 0.5 * 0.6667 / 1.1667 = 0.5714
    assert m["f1"] == pytest.approx(4 / 7)
    assert m["accuracy"] == pytest.approx(4 / 7)
    # AUC: pairs (pos, neg) with pos > neg: 0.9 beats all 4; 0.6 beats 0.4, 0.1, 0.5 (3); 0.2 beats 0.1 (1)
    # -> 8 of 12
    assert m["roc_auc"] == pytest.approx(8 / 12)


def test_roc_auc_ties_count_half():
    # pos scores [0.5, 0.8], neg [0.5, 0.2]: pairs 0.5~0.5 tie (0.5), 0.5>0.2 (1), 0.8>0.5 (1), 0.8>0.2 (1)
    # -> 3.5 / 4
    assert M.roc_auc([1, 1, 0, 0], [0.5, 0.8, 0.5, 0.2]) == pytest.approx(0.875)
    # all scores equal -> 0.5
    assert M.roc_auc([1, 0, 1, 0], [0.3] * 4) == pytest.approx(0.5)
    # perfect and reversed
    assert M.roc_auc([0, 0, 1], [0.1, 0.2, 0.3]) == 1.0
    assert M.roc_auc([1, 0, 0], [0.1, 0.2, 0.3]) == 0.0


def test_roc_auc_one_class_is_nan_and_zero_division_is_zero():
    m = M.image_metrics([0, 0, 0], [0.1, 0.2, 0.3])
    assert math.isnan(m["roc_auc"])
    # nothing predicted positive, nothing positive: precision and recall 0/0 -> 0.0 (sklearn zero_division=0)
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["accuracy"] == 1.0


def test_image_metrics_validates_input():
    with pytest.raises(ValueError):
        M.image_metrics([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError):
        M.image_metrics([0, 1], [0.1])
    with pytest.raises(ValueError):
        M.image_metrics([0, 1], [0.1, float("nan")])


def test_image_metrics_match_sklearn_if_installed():
    sk = pytest.importorskip("sklearn.metrics", reason="scikit-learn not installed (optional cross-check)")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.random(200) * 0.5 + 0.3 * y, 2)  # rounding creates ties
    m = M.image_metrics(y, s, 0.5)
    assert m["roc_auc"] == pytest.approx(sk.roc_auc_score(y, s))
    assert m["precision"] == pytest.approx(sk.precision_score(y, s >= 0.5))
    assert m["recall"] == pytest.approx(sk.recall_score(y, s >= 0.5))
    assert m["f1"] == pytest.approx(sk.f1_score(y, s >= 0.5))


# ------------------------------------------------------------------------------------------- pixel level


def test_pixel_metrics_hand_case():
    truth = np.zeros((4, 4), bool)
    truth[0:2, 0:2] = True  # 4 pixels
    pred = np.zeros((4, 4), bool)
    pred[0:2, 1:3] = True  # 4 pixels, overlap column 1 -> 2 pixels
    m = M.pixel_metrics(pred, truth)
    # tp=2 fp=2 fn=2 tn=10 ; iou = 2/6 ; dice = 4/8 ; precision = recall = 2/4
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 2, 2, 10)
    assert m["iou"] == pytest.approx(1 / 3)
    assert m["dice"] == pytest.approx(0.5)
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(0.5)


def test_pixel_metrics_empty_conventions():
    z = np.zeros((3, 3), bool)
    one = z.copy()
    one[1, 1] = True
    both_empty = M.pixel_metrics(z, z)
    assert all(both_empty[k] == 1.0 for k in ("iou", "dice", "precision", "recall"))
    missed = M.pixel_metrics(z, one)  # nothing predicted on a dirty image
    assert missed["iou"] == 0.0 and missed["precision"] == 0.0 and missed["recall"] == 0.0
    false_alarm = M.pixel_metrics(one, z)  # something predicted on a clean image
    assert false_alarm["iou"] == 0.0 and false_alarm["precision"] == 0.0 and false_alarm["recall"] == 0.0


def test_pixel_metrics_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        M.pixel_metrics(np.zeros((3, 3)), np.zeros((3, 4)))


def test_pixel_auprc_hand_case():
    prob = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    truth = np.array([1, 0, 1, 0, 0], bool)
    # thresholds 0.9: P=1/1 R=1/2 ; 0.8: P=1/2 R=1/2 ; 0.7: P=2/3 R=2/2 ; lower: R unchanged
    # AP = 0.5 * 1 + 0 * 0.5 + 0.5 * 2/3 = 0.8333
    assert M.pixel_auprc(prob, truth) == pytest.approx(0.5 + 1 / 3)


def test_pixel_auprc_ties_and_edge_cases():
    # all four pixels tied: one threshold, P = 2/4, R = 1 -> AP = 0.5 (the positive rate)
    assert M.pixel_auprc(np.full(4, 0.3), np.array([1, 0, 1, 0], bool)) == pytest.approx(0.5)
    assert M.pixel_auprc(np.array([[0.9, 0.1]]), np.array([[True, False]])) == 1.0
    assert math.isnan(M.pixel_auprc(np.array([0.2, 0.4]), np.zeros(2, bool)))


def test_pixel_auprc_matches_sklearn_if_installed():
    sk = pytest.importorskip("sklearn.metrics", reason="scikit-learn not installed (optional cross-check)")
    rng = np.random.default_rng(1)
    t = rng.random((40, 50)) < 0.2
    p = np.round(np.clip(rng.normal(0.3 + 0.3 * t, 0.2), 0, 1), 2)
    assert M.pixel_auprc(p, t) == pytest.approx(sk.average_precision_score(t.ravel(), p.ravel()))


def test_aggregate_mean_versus_pooled():
    # image A: tp=1 fp=0 fn=0 (iou 1) ; image B: tp=1 fp=3 fn=0 (iou 1/4)
    a = {"iou": 1.0, "dice": 1.0, "precision": 1.0, "recall": 1.0, "tp": 1, "fp": 0, "fn": 0, "tn": 3}
    b = M.pixel_metrics(np.ones((2, 2), bool), np.array([[1, 0], [0, 0]], bool))
    assert b["iou"] == pytest.approx(0.25)
    agg = M.aggregate_pixel_metrics([a, b])
    assert agg["mean_iou"] == pytest.approx((1 + 0.25) / 2)  # each image equally
    assert agg["pooled_iou"] == pytest.approx(2 / 5)  # tp=2, fp=3, fn=0
    assert agg["pooled_precision"] == pytest.approx(2 / 5) and agg["pooled_recall"] == 1.0
    assert agg["n_images"] == 2 and agg["tp"] == 2 and agg["fp"] == 3
    assert math.isnan(M.aggregate_pixel_metrics([])["mean_iou"])


# ------------------------------------------------------------------------------------------ object level


def test_object_metrics_hand_case():
    truth = np.zeros((10, 20), bool)
    truth[1:4, 1:4] = True  # T1 9 px
    truth[1:4, 10:13] = True  # T2 9 px
    truth[7:9, 15:17] = True  # T3 4 px, not found
    pred = np.zeros_like(truth)
    pred[1:4, 1:4] = True  # P1 == T1 -> IoU 1
    pred[1:4, 11:14] = True  # P2 shifted by 1 col: inter 6, union 12 -> IoU 0.5 -> matched (>=)
    pred[6:7, 0:2] = True  # P3 false positive
    m = M.object_metrics(pred, truth, 0.5)
    # tp 2, fp 1, fn 1 -> precision 2/3, recall 2/3
    assert (m["tp"], m["fp"], m["fn"], m["n_pred"], m["n_true"]) == (2, 1, 1, 3, 3)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["mean_matched_iou"] == pytest.approx(0.75)
    # a stricter threshold drops the shifted pair
    m2 = M.object_metrics(pred, truth, 0.6)
    assert (m2["tp"], m2["fp"], m2["fn"]) == (1, 2, 2)


def test_object_metrics_diagonal_touch_is_one_object():
    a = np.zeros((4, 4), bool)
    a[0, 0] = a[1, 1] = True  # 8-connected -> one object
    assert M.as_label_image(a).max() == 1
    m = M.object_metrics(a, a)
    assert (m["tp"], m["n_pred"]) == (1, 1)


def test_object_metrics_one_to_one_when_pred_merges_two_truths():
    # pred is exactly the union of two truths of 2 px each: IoU with each = 2/4 = 0.5
    truth = np.array([[1, 1, 0, 2, 2]], np.int32)
    pred = np.array([[1, 1, 0, 1, 1]], np.int32)  # one label over both truths (label image taken as given)
    m = M.object_metrics(pred, truth, 0.5)
    # only one of the two truths can be matched to the single prediction
    assert (m["tp"], m["fp"], m["fn"]) == (1, 0, 1)


def test_object_metrics_optimal_matching_beats_greedy():
    # P1 overlaps T1 and T2, P2 overlaps only T1. Greedy by IoU takes P1-T1 first and leaves P2 and T2
    # unmatched (1 match); the optimum is P1-T2 + P2-T1 (2 matches).
    # Build it: T1 = cols 0..5 (6 px), T2 = cols 6..8 (3 px); P1 = cols 2..6 (5 px), P2 = cols 0..1 (2 px)
    truth = np.zeros((1, 10), np.int32)
    truth[0, 0:6] = 1
    truth[0, 6:9] = 2
    pred = np.zeros((1, 10), np.int32)
    pred[0, 2:7] = 1
    pred[0, 0:2] = 2
    # P1~T1: inter 4, union 7 -> 0.571 ; P1~T2: inter 1, union 7 -> 0.143 ; P2~T1: inter 2, union 6 -> 0.333
    m = M.object_metrics(pred, truth, 0.1)
    # optimum: P1-T2 (0.143) + P2-T1 (0.333) = 2 matches (greedy would give 1)
    assert m["tp"] == 2 and m["fp"] == 0 and m["fn"] == 0
    assert m["mean_matched_iou"] == pytest.approx((1 / 7 + 1 / 3) / 2)


def test_object_metrics_empty_cases():
    z = np.zeros((5, 5), bool)
    one = z.copy()
    one[2, 2] = True
    e = M.object_metrics(z, z)
    assert e["precision"] == e["recall"] == e["f1"] == 1.0 and e["tp"] == 0
    fa = M.object_metrics(one, z)
    assert fa["fp"] == 1 and fa["precision"] == 0.0 and fa["recall"] == 0.0 and fa["f1"] == 0.0
    assert math.isnan(fa["mean_matched_iou"])


def test_object_metrics_integer_labels_kept_and_validated():
    lab = np.array([[3, 3, 0, 3]], np.uint16)  # label 3 is one object even though split
    m = M.object_metrics(lab, lab > 0)  # truth as a bool mask -> two components
    assert m["n_pred"] == 1 and m["n_true"] == 2 and m["tp"] == 1  # IoU 2/3 with the 2-px part
    with pytest.raises(ValueError):
        M.object_metrics(np.zeros((2, 2), np.float32), np.zeros((2, 2), bool))
    with pytest.raises(ValueError):
        M.object_metrics(np.zeros((2, 2), bool), np.zeros((2, 3), bool))


def test_object_metrics_many_objects_fast():
    rng = np.random.default_rng(2)
    truth = np.zeros((512, 512), bool)
    for r, c in rng.integers(5, 500, size=(300, 2)):
        truth[r:r + 4, c:c + 4] = True
    pred = np.roll(truth, 1, axis=1)
    m = M.object_metrics(pred, truth, 0.5)
    # a shift by one column of a 4x4 square: IoU 12/20 = 0.6 for isolated squares
    assert m["n_pred"] == m["n_true"] and m["recall"] > 0.9


def test_local_iou_scores_each_object_in_its_own_window():
    from artseg_core.evaluation.evaluate import evaluate_arrays, local_iou

    truth = np.zeros((100, 100), np.int32)
    truth[10:20, 10:20] = 1          # 100 px, predicted exactly
    truth[60:70, 60:70] = 2          # 100 px, half predicted
    pred = np.zeros((100, 100), bool)
    pred[10:20, 10:20] = True
    pred[60:70, 60:65] = True
    pred[0:2, 0:10] = True           # 20 false-positive px inside object 1's window (pad 24)
    pred[95:100, 95:100] = True      # 25 px outside both windows: ignored by both
    assert local_iou(pred, truth, 1) == 100 / 120
    assert local_iou(pred, truth, 2) == 50 / 100
    # another object's pixels never count against an object: grow object 1's window over object 2
    assert local_iou(pred, truth, 1, pad=60) == 100 / 120
    # predicting object 2 fully does not change object 1's score
    p2 = pred.copy()
    p2[60:70, 60:70] = True
    assert local_iou(p2, truth, 1, pad=60) == 100 / 120
    rep = evaluate_arrays({"a": pred}, {"a": truth}, types={("a", 1): "debris", ("a", 2): "fibre"})
    assert rep["per_type"]["debris"]["mean_local_iou"] == 100 / 120
    assert rep["per_type"]["fibre"]["mean_local_iou"] == 0.5
    assert rep["per_type"]["fibre"]["pixel_recall"] == 0.5
    with pytest.raises(ValueError, match="label 3"):
        local_iou(pred, truth, 3)
