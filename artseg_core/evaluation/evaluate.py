"""``artseg evaluate``: predicted masks/labels against ground truth -> a metrics report (dict, text table)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from artseg_core.evaluation.metrics import (
    aggregate_pixel_metrics,
    image_metrics,
    object_metrics,
    pixel_auprc,
    pixel_metrics,
    roc_auc,
)
from artseg_core.io.images import read_image
from artseg_core.io.labels import find_mask, parse_label, read_labels_csv


def _read_types(types_csv) -> dict[tuple[str, int], str]:
    out = {}
    with open(types_csv, newline="") as fh:
        for row in csv.DictReader(fh):
            out[(Path(row["image"]).stem, int(row["object"]))] = row["type"]
    return out


LOCAL_PAD = 24  # pixels around an object's bounding box in which its local IoU is measured


def local_iou(pred: np.ndarray, truth_labels: np.ndarray, label: int, pad: int = LOCAL_PAD) -> float:
    """IoU of one true object with the prediction near it.

    The window is the object's bounding box grown by ``pad`` pixels on each side; pixels of other true objects
    are left out, so each object is scored by itself even when objects of several types share an image.
    Predicted pixels in the window that are not the object count as false positives.
    """
    obj = np.asarray(truth_labels) == label
    rows, cols = np.flatnonzero(obj.any(1)), np.flatnonzero(obj.any(0))
    if rows.size == 0:
        raise ValueError(f"label {label} is not in the truth image")
    win = (slice(max(rows[0] - pad, 0), rows[-1] + 1 + pad), slice(max(cols[0] - pad, 0), cols[-1] + 1 + pad))
    keep = ~((np.asarray(truth_labels)[win] > 0) & ~obj[win])
    p, t = (np.asarray(pred)[win] > 0) & keep, obj[win]
    return float(np.count_nonzero(p & t) / max(np.count_nonzero(p | t), 1))


def evaluate_arrays(pred_masks: dict[str, np.ndarray], truth_labels: dict[str, np.ndarray],
                    probs: dict[str, np.ndarray] | None = None, types: dict[tuple[str, int], str] | None = None
                    ) -> dict:
    """Pixel, object and per-type metrics for matching names in ``pred_masks`` and ``truth_labels``.

    ``truth_labels`` are label images (0 = background); per-type metrics need ``types`` mapping
    (name, label) -> artifact type. Per type: ``pixel_recall`` (pooled), ``detected_fraction`` (objects at
    least half covered) and ``mean_local_iou`` (mean over the objects of :func:`local_iou`).
    """
    per_image, obj_tp, obj_fp, obj_fn, auprcs = [], 0, 0, 0, []
    by_type: dict[str, dict[str, float]] = {}
    for name in sorted(pred_masks):
        if name not in truth_labels:
            continue
        pred = np.asarray(pred_masks[name]) > 0
        tl = np.asarray(truth_labels[name])
        pm = pixel_metrics(pred, tl > 0)
        pm["image"] = name
        per_image.append(pm)
        om = object_metrics(pred, tl, iou_threshold=0.5)
        obj_tp, obj_fp, obj_fn = obj_tp + om["tp"], obj_fp + om["fp"], obj_fn + om["fn"]
        if probs is not None and name in probs and (tl > 0).any():
            auprcs.append(pixel_auprc(probs[name], tl > 0))
        if types:
            for lab in np.unique(tl[tl > 0]):
                t = types.get((name, int(lab)), "unknown")
                obj = tl == lab
                d = by_type.setdefault(t, {"objects": 0, "pixels": 0, "hit_pixels": 0, "detected": 0, "iou": 0.0})
                covered = float((pred & obj).sum())
                d["objects"] += 1
                d["pixels"] += float(obj.sum())
                d["hit_pixels"] += covered
                d["detected"] += covered / max(float(obj.sum()), 1.0) >= 0.5
                d["iou"] += local_iou(pred, tl, int(lab))
    agg = aggregate_pixel_metrics(per_image) if per_image else {}
    with_truth = [r for r in per_image if (np.asarray(truth_labels[r["image"]]) > 0).any()]
    agg_art = aggregate_pixel_metrics(with_truth) if with_truth else {}
    prec = obj_tp / (obj_tp + obj_fp) if obj_tp + obj_fp else 1.0
    rec = obj_tp / (obj_tp + obj_fn) if obj_tp + obj_fn else 1.0
    report = {
        "n_images": len(per_image),
        "pixel": agg,
        "pixel_artifact_images": agg_art,
        "pixel_auprc_mean": float(np.mean(auprcs)) if auprcs else None,
        "object": {"precision": prec, "recall": rec, "f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0,
                   "tp": obj_tp, "fp": obj_fp, "fn": obj_fn, "iou_threshold": 0.5},
        "per_type": {t: {"objects": int(d["objects"]), "pixel_recall": d["hit_pixels"] / max(d["pixels"], 1.0),
                         "detected_fraction": d["detected"] / max(d["objects"], 1),
                         "mean_local_iou": d["iou"] / max(d["objects"], 1)}
                     for t, d in sorted(by_type.items())},
        "per_image": per_image,
    }
    return report


def evaluate_folder(pred_dir, truth_dir, labels_csv=None, types_csv=None, results_csv=None) -> dict:
    """Evaluate an ``artseg predict`` output folder against a folder of ground-truth masks.

    Parameters
    ----------
    pred_dir : path
        Holds ``<name>_mask.tif`` (and optionally ``<name>_prob.tif``) and ``artseg_results.csv``.
    truth_dir : path
        Ground-truth label or binary masks named ``<name>.tif`` (or ``<name>_mask.tif``).
    labels_csv : path, optional
        ``image,label`` ground truth for image-level metrics (uses the results CSV's p_artifact and flagged).
    types_csv : path, optional
        ``image,object,type`` rows for per-artifact-type metrics.
    """
    pred_dir, truth_dir = Path(pred_dir), Path(truth_dir)
    if not pred_dir.is_dir():
        raise ValueError(f"{pred_dir}: not a folder of predictions")
    preds, truths, probs = {}, {}, {}
    for mp in sorted(pred_dir.glob("*_mask.tif")):
        name = mp.name[: -len("_mask.tif")]
        tp = find_mask(truth_dir, Path(f"{name}.tif"))  # the name may contain dots
        if tp is None:
            continue
        preds[name] = read_image(mp, allow_constant=True)
        truths[name] = read_image(tp, allow_constant=True)
        pp = pred_dir / f"{name}_prob.tif"
        if pp.is_file():
            probs[name] = read_image(pp, allow_constant=True)
    if not preds:
        raise ValueError(f"{pred_dir}: no <name>_mask.tif with a matching ground-truth mask in {truth_dir}")
    types = _read_types(types_csv) if types_csv else None
    report = evaluate_arrays(preds, truths, probs or None, types)
    results_csv = Path(results_csv) if results_csv else pred_dir / "artseg_results.csv"
    if labels_csv and results_csv.is_file():
        truth_lbl = {p.stem: lbl for p, lbl in read_labels_csv(labels_csv, check_files=False)}
        y, p, f = [], [], []
        with open(results_csv, newline="") as fh:
            for row in csv.DictReader(fh):
                stem = Path(row["image"]).stem
                if row.get("status") != "ok" or stem not in truth_lbl:
                    continue
                y.append(truth_lbl[stem])
                p.append(float(row["p_artifact"]))
                f.append(1.0 if str(row["flagged"]).lower() == "true" else 0.0)
        if y:
            im = image_metrics(y, f, threshold=0.5)
            im["roc_auc"] = roc_auc(y, p) if 0 < sum(y) < len(y) else None
            report["image"] = im
    return report


def format_table(report: dict) -> str:
    """A plain-text table of the headline numbers."""
    lines = [f"images evaluated: {report['n_images']}"]
    if "image" in report:
        im = report["image"]
        lines.append("image level   precision {precision:.3f}  recall {recall:.3f}  f1 {f1:.3f}".format(**im)
                     + (f"  roc_auc {im['roc_auc']:.3f}" if im.get("roc_auc") is not None else ""))
    for key, label in (("pixel", "pixel, all images"), ("pixel_artifact_images", "pixel, artifact images")):
        px = report.get(key) or {}
        if px:
            lines.append(f"{label:<24}" + "  ".join(f"{k} {px['mean_' + k]:.3f}" for k in
                                                    ("iou", "dice", "precision", "recall"))
                         + f"  (pooled IoU {px['pooled_iou']:.3f})")
    if report.get("pixel_auprc_mean") is not None:
        lines.append(f"pixel AUPRC   {report['pixel_auprc_mean']:.3f}")
    ob = report["object"]
    lines.append(f"object level  precision {ob['precision']:.3f}  recall {ob['recall']:.3f}  f1 {ob['f1']:.3f}"
                 f"  (tp {ob['tp']}, fp {ob['fp']}, fn {ob['fn']}, IoU >= 0.5)")
    if report.get("per_type"):
        lines.append(f"per artifact type: objects, pixel recall, detected (>= 50% covered), "
                     f"local IoU (bounding box + {LOCAL_PAD} px)")
        for t, d in report["per_type"].items():
            lines.append(f"  {t:<10} {d['objects']:>4}  {d['pixel_recall']:.3f}  {d['detected_fraction']:.3f}"
                         f"  {d['mean_local_iou']:.3f}")
    return "\n".join(lines)


__all__ = ["evaluate_folder", "evaluate_arrays", "format_table", "local_iou", "parse_label"]
