"""Accuracy on a held-apart phantom plate: weak vs weak+edges vs strong supervision vs a non-learned baseline.

    python bench/accuracy.py [--quick] [--seed 0] [--train-fields 200] [--profile fast] [--out bench_out/accuracy]

* weak       image-level labels only; Score-CAM pseudo-masks without edge refinement
* weak_edge  the same with the edge-map refinement (Sobel magnitude, dilated, normalised)
* strong     the U-Net trained on the true masks of every training image (the upper bound)
* baseline   no learning: pixels that deviate strongly from a smoothed background (robust z-score), cleaned
All three learned variants share one classifier (same seed, trained once), so they differ only in their U-Net
targets. Pixel IoU is the mean over the test plate's artifact images; image F1 is the classifier's on the test
plate; ``local_iou_by_kind`` scores each true object in a window around it, per artifact kind (which kinds
weak supervision reaches). Prints one final JSON line. ``--train-fields`` asks how the numbers move with the size
of the labelled plate (the classifier is short of data at 200 fields).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from artseg_core import load_model, train  # noqa: E402
from artseg_core.evaluation.evaluate import evaluate_arrays  # noqa: E402
from artseg_core.io.images import list_images, read_image
from artseg_core.imgproc.normalize import normalize  # noqa: E402
from artseg_core.evaluation.metrics import image_metrics, roc_auc  # noqa: E402
from artseg_core.data.phantoms import make_plate  # noqa: E402
from artseg_core.imgproc.postprocess import clean_mask  # noqa: E402


def baseline_mask(image: np.ndarray, z: float = 4.0, min_size: int = 64) -> np.ndarray:
    """Non-learned detector: |image - smooth background| / robust noise > z, closed, small objects removed."""
    from scipy import ndimage as ndi

    x = normalize(image)
    bg = ndi.median_filter(x[::4, ::4], size=15)
    bg = ndi.zoom(bg, (x.shape[0] / bg.shape[0], x.shape[1] / bg.shape[1]), order=1)[: x.shape[0], : x.shape[1]]
    dev = np.abs(x - bg)
    dev = ndi.gaussian_filter(dev, 2)
    mad = np.median(np.abs(dev - np.median(dev))) + 1e-6
    score = (dev - np.median(dev)) / (1.4826 * mad)
    m = ndi.binary_closing(score > z, iterations=2)
    return clean_mask(m.astype(np.float32), 0.5, min_size=min_size)


def test_set(plate: Path):
    import csv

    labels = {}
    with open(plate / "labels.csv") as fh:
        for r in csv.DictReader(fh):
            labels[Path(r["image"]).stem] = int(r["label"] == "artifact")
    imgs = {p.stem: read_image(p) for p in list_images([plate / "images"])}
    truth = {s: read_image(plate / "masks" / f"{s}.tif", allow_constant=True) for s in imgs}
    with open(plate / "artifacts.csv") as fh:
        types = {(Path(r["image"]).stem, int(r["object"])): r["type"] for r in csv.DictReader(fh)}
    return imgs, truth, labels, types


def score_model(model, imgs, truth, labels, types=None) -> dict:
    preds, ys, ps, fl = {}, [], [], []
    for s, im in imgs.items():
        r = model.predict(im, gate=True)
        preds[s] = r.mask
        ys.append(labels[s])
        ps.append(r.p_artifact)
        fl.append(float(r.flagged))
    rep = evaluate_arrays(preds, truth, types=types)
    im = image_metrics(ys, fl, threshold=0.5)
    return {"iou": rep["pixel_artifact_images"]["mean_iou"], "pooled_iou": rep["pixel_artifact_images"]["pooled_iou"],
            "object_f1": rep["object"]["f1"], "image_f1": im["f1"], "image_precision": im["precision"],
            "image_recall": im["recall"], "image_roc_auc": roc_auc(ys, ps), **_kind_iou(rep)}


def _kind_iou(rep: dict) -> dict:
    """Mean local IoU per artifact kind (each object scored in a window around it; see evaluate.local_iou)."""
    return {"local_iou_by_kind": {k: round(d["mean_local_iou"], 4) for k, d in rep["per_type"].items()}}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small plates and the tiny profile (a few minutes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", default=None, help="profile (default fast; tiny with --quick)")
    ap.add_argument("--train-fields", type=int, default=None,
                    help="training fields, rounded to whole fields per well of a 4x10 plate "
                         "(default 200; 48 with --quick)")
    ap.add_argument("--out", type=Path, default=Path("bench_out/accuracy"))
    a = ap.parse_args(argv)
    profile = a.profile or ("tiny" if a.quick else "fast")
    size = 256 if a.quick else 512
    out = a.out
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    trp, tep = out / "train_plate", out / "test_plate"
    # train: 48 fields with --quick, else 200 (as the demo); test: 24 or 96 fields (with 96, one wrong field moves
    # image F1 by about 0.02 rather than 0.08)
    tr_shape = dict(rows=4, cols=6, fields=2) if a.quick else dict(rows=4, cols=10, fields=5)
    if a.train_fields is not None:
        if a.train_fields < 1:
            ap.error("--train-fields must be >= 1")
        tr_shape = dict(rows=4, cols=10, fields=max(1, round(a.train_fields / 40)))
    te_shape = dict(rows=2, cols=6, fields=2) if a.quick else dict(rows=4, cols=12, fields=2)
    make_plate(trp, **tr_shape, prevalence=0.5, seed=a.seed, shape=(size, size), plate="train")
    make_plate(tep, **te_shape, prevalence=0.5, seed=a.seed + 1000, shape=(size, size), plate="test")
    imgs, truth, labels, types = test_set(tep)
    results, seconds = {}, {}
    variants = [("weak", dict(edge_refine=False)), ("weak_edge", dict(edge_refine=True)),
                ("strong", dict(masks=trp / "masks", use_masks_for_training=True))]
    first_ckpt = None
    for name, kw in variants:
        wd = out / f"work_{name}"
        wd.mkdir(parents=True)
        if first_ckpt is not None:  # the same classifier for every variant
            shutil.copy(first_ckpt, wd / "classifier.ckpt")
        t = time.perf_counter()
        model = train(trp / "images", trp / "labels.csv", profile=profile, seed=a.seed, work_dir=wd,
                      progress=False, **kw)
        seconds[name] = round(time.perf_counter() - t, 1)
        first_ckpt = first_ckpt or wd / "classifier.ckpt"
        model.save(out / f"{name}.artseg")
        results[name] = score_model(load_model(out / f"{name}.artseg"), imgs, truth, labels, types)
        print(name, results[name], f"{seconds[name]} s", flush=True)
    base = evaluate_arrays({s: baseline_mask(im) for s, im in imgs.items()}, truth, types=types)
    results["baseline"] = {"iou": base["pixel_artifact_images"]["mean_iou"],
                           "pooled_iou": base["pixel_artifact_images"]["pooled_iou"], "object_f1": base["object"]["f1"],
                           **_kind_iou(base)}
    line = {
        "bench": "accuracy", "profile": profile, "image_size": size,
        "n_train": int(np.prod(list(tr_shape.values()))), "n_test": len(imgs),
        "weak_iou": round(results["weak"]["iou"], 4), "weak_edge_iou": round(results["weak_edge"]["iou"], 4),
        "strong_iou": round(results["strong"]["iou"], 4), "baseline_iou": round(results["baseline"]["iou"], 4),
        "image_f1": round(results["weak"]["image_f1"], 4), "image_roc_auc": round(results["weak"]["image_roc_auc"], 4),
        "weak_over_strong": round(max(results["weak"]["iou"], results["weak_edge"]["iou"])
                                  / max(results["strong"]["iou"], 1e-9), 3),
        "local_iou_by_kind": {k: {v: results[v]["local_iou_by_kind"].get(k) for v in results}
                              for k in sorted(results["weak"]["local_iou_by_kind"])},
        "details": results, "seconds": {**seconds, "total": round(time.perf_counter() - t0, 1)},
    }
    print(json.dumps(line))
    return line


if __name__ == "__main__":
    main()
