"""Image-level, pixel-level and object-level metrics (numpy/scipy only, no scikit-learn).

Conventions
-----------
* Image level (:func:`image_metrics`): a ratio whose denominator is zero (e.g. precision with no positive
  prediction) is 0.0, as scikit-learn's ``zero_division=0``; ROC-AUC is NaN when only one class is present.
* Pixel level (:func:`pixel_metrics`): a 0/0 ratio is 1.0 when prediction and truth are both empty (perfect
  agreement on a clean image) and 0.0 otherwise (e.g. precision of an empty prediction on a dirty image).
* Object level (:func:`object_metrics`): same rule, with objects instead of pixels.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "roc_auc",
    "image_metrics",
    "pixel_metrics",
    "pixel_auprc",
    "aggregate_pixel_metrics",
    "as_label_image",
    "object_metrics",
]


def _ratio(num: float, den: float, both_empty: bool = False) -> float:
    if den == 0:
        return 1.0 if both_empty else 0.0
    return float(num) / float(den)


def _f1(p: float, r: float) -> float:
    return 0.0 if p + r == 0 else 2.0 * p * r / (p + r)


def _midranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given the mean of the ranks they span."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    n = xs.size
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], n]  # exclusive
    avg = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(n, np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def roc_auc(y_true: Sequence, y_score: Sequence) -> float:
    """Area under the ROC curve by the rank (Mann-Whitney U) formula; ties count one half.

    ``AUC = (sum of the ranks of the positives - P (P + 1) / 2) / (P N)`` with mid-ranks for ties.
    Returns NaN when ``y_true`` has only one class.
    """
    t = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(y_score, dtype=np.float64).ravel()
    if t.shape != s.shape:
        raise ValueError(f"y_true and y_score differ in length: {t.size} vs {s.size}")
    n_pos = int(t.sum())
    n_neg = t.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = _midranks(s)
    return float((r[t].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def image_metrics(y_true: Sequence, y_score: Sequence, threshold: float = 0.5) -> dict:
    """Image-level classification metrics.

    Parameters
    ----------
    y_true : sequence of bool or {0, 1}
        True label per image (1 = artifact).
    y_score : sequence of float
        Score per image (e.g. ``p_artifact``); predicted positive when ``score >= threshold``.
    threshold : float

    Returns
    -------
    dict
        ``precision, recall, f1, accuracy, roc_auc`` (floats; roc_auc NaN with one class only),
        ``tp, fp, tn, fn, n`` (ints), ``threshold``.
    """
    t = np.asarray(y_true)
    if t.dtype.kind not in "bui" or (t.size and not np.isin(t, (0, 1)).all()):
        raise ValueError("y_true must hold 0/1 or bool values")
    t = t.astype(bool).ravel()
    s = np.asarray(y_score, dtype=np.float64).ravel()
    if t.shape != s.shape:
        raise ValueError(f"y_true and y_score differ in length: {t.size} vs {s.size}")
    if not np.isfinite(s).all():
        raise ValueError("y_score contains NaN or Inf")
    pred = s >= threshold
    tp = int(np.sum(pred & t))
    fp = int(np.sum(pred & ~t))
    fn = int(np.sum(~pred & t))
    tn = int(np.sum(~pred & ~t))
    p = _ratio(tp, tp + fp)
    r = _ratio(tp, tp + fn)
    return {"precision": p, "recall": r, "f1": _f1(p, r), "accuracy": _ratio(tp + tn, t.size),
            "roc_auc": roc_auc(t, s), "tp": tp, "fp": fp, "tn": tn, "fn": fn, "n": int(t.size),
            "threshold": float(threshold)}


def _as_bool_pair(pred, truth) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred)
    t = np.asarray(truth)
    if p.shape != t.shape:
        raise ValueError(f"prediction and truth differ in shape: {p.shape} vs {t.shape}")
    return p.astype(bool, copy=False), t.astype(bool, copy=False)


def pixel_metrics(pred: np.ndarray, truth: np.ndarray) -> dict:
    """Pixel-level agreement of a predicted mask with the true mask.

    Parameters
    ----------
    pred, truth : numpy.ndarray
        Masks of the same shape (non-zero = artifact).

    Returns
    -------
    dict
        ``iou`` = TP/(TP+FP+FN), ``dice`` = 2TP/(2TP+FP+FN), ``precision`` = TP/(TP+FP), ``recall`` =
        TP/(TP+FN), and the counts ``tp, fp, fn, tn``. When both masks are empty every ratio is 1.0;
        any other 0/0 ratio is 0.0.
    """
    p, t = _as_bool_pair(pred, truth)
    tp = int(np.count_nonzero(p & t))
    n_p = int(np.count_nonzero(p))
    n_t = int(np.count_nonzero(t))
    fp = n_p - tp
    fn = n_t - tp
    tn = int(p.size) - tp - fp - fn
    empty = n_p == 0 and n_t == 0
    return {"iou": _ratio(tp, tp + fp + fn, empty), "dice": _ratio(2 * tp, 2 * tp + fp + fn, empty),
            "precision": _ratio(tp, tp + fp, empty), "recall": _ratio(tp, tp + fn, empty),
            "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def pixel_auprc(prob: np.ndarray, truth: np.ndarray) -> float:
    """Average precision (area under the precision-recall curve) of a probability map.

    ``AP = sum_k (R_k - R_{k-1}) P_k`` over the distinct probability values taken as thresholds, from high
    to low (step-wise, no interpolation: the definition scikit-learn's ``average_precision_score`` uses).
    Pixels with equal probability enter together. Returns NaN when ``truth`` has no positive pixel.
    To pool several images, concatenate their raveled maps first.
    """
    s = np.asarray(prob, dtype=np.float64).ravel()
    t = np.asarray(truth).astype(bool).ravel()
    if s.shape != t.shape:
        raise ValueError(f"prob and truth differ in size: {s.size} vs {t.size}")
    n_pos = int(t.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    s = s[order]
    t = t[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.size - 1]  # last index of each tie group
    tps = np.cumsum(t)[last].astype(np.float64)
    predicted = (last + 1).astype(np.float64)
    precision = tps / predicted
    recall = tps / n_pos
    d_recall = np.diff(np.r_[0.0, recall])
    return float(np.sum(d_recall * precision))


def aggregate_pixel_metrics(results: Iterable[Mapping]) -> dict:
    """Combine per-image :func:`pixel_metrics` results.

    Returns
    -------
    dict
        ``mean_iou, mean_dice, mean_precision, mean_recall``: the per-image values averaged over images
        (each image counts equally; empty/empty images count 1.0). ``pooled_iou, pooled_dice,
        pooled_precision, pooled_recall``: computed once from the TP/FP/FN summed over all images (each pixel
        counts equally). ``tp, fp, fn, tn`` (sums) and ``n_images``. Means are NaN for an empty list.
    """
    rs = list(results)
    keys = ("iou", "dice", "precision", "recall")
    out: dict = {}
    for k in keys:
        out[f"mean_{k}"] = float(np.mean([r[k] for r in rs])) if rs else float("nan")
    tp = sum(int(r["tp"]) for r in rs)
    fp = sum(int(r["fp"]) for r in rs)
    fn = sum(int(r["fn"]) for r in rs)
    tn = sum(int(r.get("tn", 0)) for r in rs)
    empty = tp + fp + fn == 0
    out["pooled_iou"] = _ratio(tp, tp + fp + fn, empty)
    out["pooled_dice"] = _ratio(2 * tp, 2 * tp + fp + fn, empty)
    out["pooled_precision"] = _ratio(tp, tp + fp, empty)
    out["pooled_recall"] = _ratio(tp, tp + fn, empty)
    out.update({"tp": tp, "fp": fp, "fn": fn, "tn": tn, "n_images": len(rs)})
    return out


def as_label_image(mask_or_labels: np.ndarray) -> np.ndarray:
    """Label image (int32, 0 = background) from a bool mask or an existing label image.

    Bool arrays are split into connected components with full connectivity (8-neighbours in 2-D, as
    ``skimage.measure.label``'s default). Integer arrays are taken as label images unchanged (so a 0/255
    uint8 mask is ONE object: pass ``mask > 0`` to split it into components).
    """
    a = np.asarray(mask_or_labels)
    if a.dtype == bool:
        from scipy import ndimage as ndi

        lab, _ = ndi.label(a, structure=np.ones((3,) * a.ndim, bool))
        return lab.astype(np.int32, copy=False)
    if a.dtype.kind not in "ui":
        raise ValueError(f"expected a bool mask or an integer label image, got dtype {a.dtype}")
    if a.dtype.kind == "i" and a.size and a.min() < 0:
        raise ValueError("label image has negative labels")
    return a


def _overlaps(pl: np.ndarray, tl: np.ndarray):
    """Unique labels of each image, and IoU of every overlapping (pred, truth) pair."""
    pu, p_inv = np.unique(pl.ravel(), return_inverse=True)
    tu, t_inv = np.unique(tl.ravel(), return_inverse=True)
    p_area = np.bincount(p_inv, minlength=pu.size)
    t_area = np.bincount(t_inv, minlength=tu.size)
    both = (pl.ravel() != 0) & (tl.ravel() != 0)
    pair = p_inv[both].astype(np.int64) * tu.size + t_inv[both]
    pairs, inter = np.unique(pair, return_counts=True)
    pi, ti = np.divmod(pairs, tu.size)
    iou = inter / (p_area[pi] + t_area[ti] - inter)
    p_keep = pu != 0
    t_keep = tu != 0
    # re-index to object numbers 0..n-1 without the background
    p_idx = np.cumsum(p_keep) - 1
    t_idx = np.cumsum(t_keep) - 1
    return int(p_keep.sum()), int(t_keep.sum()), p_idx[pi], t_idx[ti], iou


def object_metrics(pred: np.ndarray, truth: np.ndarray, iou_threshold: float = 0.5) -> dict:
    """Object-level detection metrics with one-to-one matching at ``IoU >= iou_threshold``.

    Parameters
    ----------
    pred, truth : numpy.ndarray
        Bool masks (split into 8-connected components) or integer label images (0 = background);
        see :func:`as_label_image`.
    iou_threshold : float
        A predicted and a true object match when they overlap and their IoU is at least this.

    Returns
    -------
    dict
        ``precision`` = TP/n_pred, ``recall`` = TP/n_true, ``f1``, ``tp, fp, fn, n_pred, n_true``,
        ``mean_matched_iou`` (NaN without matches). With no objects on either side the ratios are 1.0.

    Notes
    -----
    The matching is optimal: it maximises the number of matched pairs, then their summed IoU (Hungarian
    algorithm, ``scipy.optimize.linear_sum_assignment``). For thresholds above 0.5 a pair with IoU > 0.5 is
    necessarily unique, so the assignment is only solved on the (rare) ambiguous part.
    """
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    pl = as_label_image(pred)
    tl = as_label_image(truth)
    if pl.shape != tl.shape:
        raise ValueError(f"prediction and truth differ in shape: {pl.shape} vs {tl.shape}")
    n_pred, n_true, pi, ti, iou = _overlaps(pl, tl)
    ok = iou >= iou_threshold
    pi, ti, iou = pi[ok], ti[ok], iou[ok]
    matched_iou: list[float] = []
    if iou.size:
        # pairs whose pred and truth each appear only once are matched directly
        p_count = np.bincount(pi, minlength=n_pred)
        t_count = np.bincount(ti, minlength=n_true)
        simple = (p_count[pi] == 1) & (t_count[ti] == 1)
        matched_iou.extend(iou[simple].tolist())
        if (~simple).any():
            from scipy.optimize import linear_sum_assignment

            cp, ct, ci = pi[~simple], ti[~simple], iou[~simple]
            rows, r_inv = np.unique(cp, return_inverse=True)
            cols, c_inv = np.unique(ct, return_inverse=True)
            big = float(min(rows.size, cols.size) + 1)
            w = np.zeros((rows.size, cols.size))
            w[r_inv, c_inv] = big + ci  # count first, then IoU
            r, c = linear_sum_assignment(w, maximize=True)
            good = w[r, c] > 0
            matched_iou.extend((w[r, c][good] - big).tolist())
    tp = len(matched_iou)
    fp = n_pred - tp
    fn = n_true - tp
    empty = n_pred == 0 and n_true == 0
    p = _ratio(tp, n_pred, empty)
    r = _ratio(tp, n_true, empty)
    return {"precision": p, "recall": r, "f1": 1.0 if empty else _f1(p, r), "tp": tp, "fp": fp, "fn": fn,
            "n_pred": n_pred, "n_true": n_true,
            "mean_matched_iou": float(np.mean(matched_iou)) if matched_iou else float("nan"),
            "iou_threshold": float(iou_threshold)}
