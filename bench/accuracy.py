"""Accuracy on a held-apart plate: weak routes vs strong supervision vs zero-label vs a non-learned baseline.

    python bench/accuracy.py [--quick] [--seed 0] [--train-fields 200] [--profile fast] [--out bench_out/accuracy]
                             [--backgrounds ../shared/data/real] [--test-fields 96] [--variants weak,strong,...]

* weak       the default route (profile ``fast``): pseudo-masks from the clean fields - candidate objects and
             pixel evidence judged against the clean fields (weak/evidence.py), thresholds chosen on held-out
             clean fields, an ignored band below the threshold (alias: weak_evidence)
* weak_paper the paper's route on the same networks (profile ``scorecam``): Score-CAM x edge map (alias weak_edge);
             weak_cam: Score-CAM without the edge map
* weak_paste weak, plus synthetic artifacts (strokes, blobs, local blur, shading; training/paste.py, not the
             phantom generator) drawn into half of the clean fields' U-Net crops with exact masks
* weak_paste_all  weak_paste, and the classifier also sees 30 % of the clean images it draws with synthetic
             artifacts, labelled artifact (its own classifier)
* weak_pretrain  weak, with the U-Net first pretrained (masked-region inpainting, training/pretrain.py) on 400
             unlabelled fields of the same kind of plate plus the training fields (``train(unlabelled=...)``); its
             ``pretrain_s`` is reported apart from ``train_s`` (a plate is pretrained once)
* strong     the U-Net trained on the true masks of every training image (the upper bound)
* weak_mil   the MIL route: classifier head pooling the top 2 % of its logit map, that logit map as saliency
             (its own 0.5 boundary), pseudo-masks with an ignored band
* masks_K    weak plus hand masks of K artifact training fields (own loss term, oversampled)
* zero_label the clean training fields only: a normality model of them (``artseg train --clean DIR``)
* <variant>_second_opinion  reported beside every variant whose model stores a second opinion (the evidence
             route): the same model, predicted with ``second_opinion=True`` (a field the classifier leaves unflagged
             is flagged and segmented when its object evidence scores above every held-out clean field's)
* baseline   no learning: pixels that deviate strongly from a smoothed background (robust z-score > 4), cleaned;
             ``baseline_clean``: the same detector with its z chosen on the training plate's clean fields by the
             zero-label mode's rule (leave ``zero_label_clean_empty`` of them without an object): the comparison
             at the same share of empty clean fields
Learned variants whose classifiers have the same head (pooling), paste share and normalisation use one classifier
(same seed, trained once, or taken from ``--classifier-from`` for the profile's head), so they differ only in their
U-Net targets. Pixel IoU is the mean over the test plate's artifact images; image F1 is the classifier's on the test
plate; ``local_iou_by_kind`` scores each true object in a window around it, per artifact kind (which kinds weak
supervision reaches); ``image_recall_by_kind`` is the share of test fields holding a kind that were flagged, and
``classifier_train_accuracy`` how well the classifier fits its own training fields. Prints one final JSON line.
``--train-fields`` asks how the numbers move with the size of the labelled plate (the classifier is short of data at
200 fields). ``clean_empty`` is the fraction of clean test fields with no predicted pixel; on the real-background
plate ``clean_empty_by_source`` gives it per real image folder ([share, clean fields]), because some folders'
"clean" crops carry real dust or debris that their SOURCE.md reports, and ``clean_empty_known_clean`` leaves those
folders out (``real_plate.OWN_ARTIFACT_SOURCES``; on a phantom plate it equals ``clean_empty``). ``--backgrounds DIR``
builds both plates from real transmitted-light images (``bench/real_plate.py``: crops of regions without real
artifacts, with composited artifacts) instead of phantoms.
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
from artseg_core.nets.profiles import get_profile  # noqa: E402


def baseline_score(image: np.ndarray) -> np.ndarray:
    """The non-learned detector's map: robust z-score of |image - smooth background| (Gaussian sigma 2)."""
    from scipy import ndimage as ndi

    x = normalize(image)
    bg = ndi.median_filter(x[::4, ::4], size=15)
    bg = ndi.zoom(bg, (x.shape[0] / bg.shape[0], x.shape[1] / bg.shape[1]), order=1)[: x.shape[0], : x.shape[1]]
    dev = np.abs(x - bg)
    dev = ndi.gaussian_filter(dev, 2)
    mad = np.median(np.abs(dev - np.median(dev))) + 1e-6
    return ((dev - np.median(dev)) / (1.4826 * mad)).astype(np.float32)


def baseline_mask(image: np.ndarray, z: float = 4.0, min_size: int = 64, score: np.ndarray | None = None
                  ) -> np.ndarray:
    """Non-learned detector: :func:`baseline_score` > z, closed, small objects removed (``score``: the image's
    :func:`baseline_score`, when already computed)."""
    from scipy import ndimage as ndi

    m = ndi.binary_closing((baseline_score(image) if score is None else score) > z, iterations=2)
    return clean_mask(m.astype(np.float32), 0.5, min_size=min_size)


def baseline_clean_z(plate: Path, target_empty: float, min_size: int = 64) -> float:
    """The detector's z chosen as the zero-label mode chooses its threshold: the lowest z that leaves
    ``target_empty`` of the training plate's clean fields without an object of ``min_size`` px (the same clean
    fields and rule; the fixed z = 4 leaves most clean fields with a mask)."""
    from artseg_core.weak.evidence import clean_field_threshold

    maps = [baseline_score(read_image(p)) for p in _clean_paths(plate)]
    return clean_field_threshold(maps, min_size, target_empty)[0]


def _clean_paths(plate: Path) -> list[Path]:
    """The clean fields of a plate (its labels.csv)."""
    from artseg_core.io.labels import read_labels_csv

    return [p for p, label in read_labels_csv(plate / "labels.csv", plate / "images") if label == 0]


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


def field_sources(plate: Path) -> dict:
    """{field stem: real image folder} of a real-background plate (its ``sources.csv``); {} for a phantom plate."""
    import csv

    if not (plate / "sources.csv").is_file():
        return {}
    with open(plate / "sources.csv") as fh:
        return {Path(r["image"]).stem: r["source"] for r in csv.DictReader(fh)}


def _route(profile_name: str, keys: tuple[str, ...]) -> dict:
    """The named profile's values of ``keys``: a route's settings, applied on top of the bench's profile."""
    prof = get_profile(profile_name)
    return {k: getattr(prof, k) for k in keys}


#: the default route (profile fast): its pseudo-masks, classifier head and U-Net cut, also under --quick's tiny profile
EVIDENCE = _route("fast", ("cam_source", "edge_refine", "pseudo_ignore", "cls_pool", "cls_pool_param", "normalization",
                           "unet_threshold"))
#: share of clean-field U-Net crops given synthetic artifacts in the weak_paste variant (training/paste.py)
PASTE = 0.5
#: share of clean classifier training images given synthetic artifacts (and the artifact label) in weak_paste_all
CLS_PASTE = 0.3
#: the multiple-instance route (profile mil)
MIL = _route("mil", ("cls_pool", "cls_pool_param", "cam_source", "edge_refine", "pseudo_ignore", "unet_threshold",
                     "normalization"))
#: the paper's route: Score-CAM x edge map on the average-pooling head (profile scorecam)
PAPER = _route("scorecam", ("cam_source", "edge_refine", "pseudo_ignore", "cls_pool", "unet_threshold",
                             "normalization"))


def clean_empty(preds: dict, labels: dict) -> float:
    """Fraction of clean fields with no predicted pixel."""
    clean = [s for s in preds if labels[s] == 0]
    return float(np.mean([not np.asarray(preds[s]).any() for s in clean])) if clean else float("nan")


def clean_empty_by_source(preds: dict, labels: dict, sources: dict) -> dict:
    """:func:`clean_empty` per real image folder, with its number of clean fields: {source: [share, fields]}. Some
    sources' "clean" crops carry real artifacts of their own (dust specks and out-of-focus dust discs on
    sephace_zstacks, debris specks on usiigaci_t98g_phase), so a mask there is not always a false positive."""
    out = {}
    for src in sorted(set(sources.values())):
        sub = {s: p for s, p in preds.items() if sources.get(s) == src}
        n = sum(labels[s] == 0 for s in sub)
        if n:
            out[src] = [round(clean_empty(sub, labels), 3), int(n)]
    return out


def clean_empty_known_clean(preds: dict, labels: dict, sources: dict) -> float | None:
    """:func:`clean_empty` over the clean fields whose source is not in ``real_plate.OWN_ARTIFACT_SOURCES`` (all of
    them on a phantom plate); None when there are none."""
    from real_plate import OWN_ARTIFACT_SOURCES

    sub = {s: p for s, p in preds.items() if sources.get(s) not in OWN_ARTIFACT_SOURCES}
    return round(clean_empty(sub, labels), 4) if any(labels[s] == 0 for s in sub) else None


def score_model(model, imgs, truth, labels, types=None, sources=None, second_opinion: bool = False) -> dict:
    preds, ys, ps, fl = {}, [], [], []
    for s, im in imgs.items():
        r = model.predict(im, gate=True, second_opinion=second_opinion)
        preds[s] = r.mask
        ys.append(labels[s])
        ps.append(r.p_artifact)
        fl.append(float(r.flagged))
    rep = evaluate_arrays(preds, truth, types=types)
    im = image_metrics(ys, fl, threshold=0.5)
    flagged = dict(zip(imgs, fl))
    return {"image_recall_by_kind": _kind_recall(flagged, types) if types else {},
            "iou": rep["pixel_artifact_images"]["mean_iou"], "pooled_iou": rep["pixel_artifact_images"]["pooled_iou"],
            "object_f1": rep["object"]["f1"], "image_f1": im["f1"], "image_precision": im["precision"],
            "image_recall": im["recall"], "image_roc_auc": roc_auc(ys, ps), "clean_empty": clean_empty(preds, labels),
            "clean_empty_known_clean": clean_empty_known_clean(preds, labels, sources or {}),
            "clean_empty_by_source": clean_empty_by_source(preds, labels, sources or {}), **_kind_iou(rep)}


def _kind_recall(flagged: dict, types: dict) -> dict:
    """Per artifact kind: share of the test fields holding that kind that were flagged (which kinds the image-level
    decision misses; a field with several kinds counts for each)."""
    fields: dict[str, set] = {}
    for (stem, _obj), kind in types.items():
        fields.setdefault(kind, set()).add(stem)
    return {k: round(float(np.mean([flagged[s] for s in sorted(v) if s in flagged])), 3)
            for k, v in sorted(fields.items()) if any(s in flagged for s in v)}


def _kind_iou(rep: dict) -> dict:
    """Mean local IoU per artifact kind (each object scored in a window around it; see evaluate.local_iou)."""
    return {"local_iou_by_kind": {k: round(d["mean_local_iou"], 4) for k, d in rep["per_type"].items()}}


def _some_masks(plate: Path, k: int, out: Path) -> Path:
    """A folder with the masks of the first ``k`` artifact training fields (sorted by name): the hand masks."""
    import csv

    out.mkdir(parents=True)
    with open(plate / "labels.csv") as fh:
        art = sorted(Path(r["image"]).stem for r in csv.DictReader(fh) if r["label"] == "artifact")
    for stem in art[:k]:
        shutil.copy(plate / "masks" / f"{stem}.tif", out / f"{stem}.tif")
    return out


def _settings(pairs: list[str], profile: str) -> dict:
    """``KEY=VALUE`` strings as profile overrides, each value cast to the type of the profile's setting."""
    base, out = get_profile(profile).to_dict(), {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in base:
            raise ValueError(f"--set {pair!r}: expected KEY=VALUE with KEY a profile setting")
        cur = base[key]
        if isinstance(cur, bool):
            out[key] = value.lower() in ("1", "true", "yes", "on")
        elif isinstance(cur, (int, float, str)):
            out[key] = type(cur)(value)
        else:  # None default (e.g. cam_threshold): a number
            out[key] = float(value)
    return out


#: unlabelled fields of the weak_pretrain variant's plate (users own thousands of fields; 400 on 2 cores)
N_UNLABELLED = 400


def _unlabelled_plate(out: Path, a, size: int) -> Path:
    """The images folder of a plate of :data:`N_UNLABELLED` fields made like the training plate (another seed),
    whose labels are not used: the plate's unlabelled fields."""
    if a.backgrounds is not None:
        from real_plate import make_real_plate

        make_real_plate(out, N_UNLABELLED, "train", prevalence=0.5, seed=a.seed + 500, size=size,
                        root=a.backgrounds)
    else:
        make_plate(out, rows=4, cols=10, fields=N_UNLABELLED // 40, prevalence=0.5, seed=a.seed + 500,
                   shape=(size, size), plate="unlabelled")
    return out / "images"


def _clean_fields(plate: Path, out: Path) -> Path:
    """A folder with the clean training fields only: the zero-label variant's whole training set."""
    out.mkdir(parents=True)
    for p in _clean_paths(plate):
        shutil.copy(p, out / p.name)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small plates and the tiny profile (a few minutes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", default=None, help="profile (default fast; tiny with --quick)")
    ap.add_argument("--train-fields", type=int, default=None,
                    help="training fields, rounded to whole fields per well of a 4x10 plate "
                         "(default 200; 48 with --quick)")
    ap.add_argument("--test-fields", type=int, default=None, help="test fields (default 96; 24 with --quick)")
    ap.add_argument("--backgrounds", type=Path, default=None,
                    help="folder of real images (../shared/data/real): plates on real backgrounds")
    ap.add_argument("--variants", default="weak,weak_paper,strong",
                    help="comma list of weak, weak_edge, weak_mil, weak_evidence, weak_paste, weak_paste_all, "
                         "weak_pretrain, strong, "
                         "zero_label, masks_K "
                         "(K = 1, 4, 8, ...)")
    ap.add_argument("--cls-epochs", type=int, default=None, help="override the profile's classifier epochs")
    ap.add_argument("--unet-steps", type=int, default=None, help="U-Net steps, exactly (default: the profile's rule)")
    ap.add_argument("--classifier-from", type=Path, default=None,
                    help="a model file trained on the same training plate (same seed and size): its classifier is "
                         "shared by the variants with the average-pooling head instead of training one")
    ap.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                    help="a profile setting for every learned variant, e.g. --set unet_scale=1 (repeatable)")
    ap.add_argument("--out", type=Path, default=Path("bench_out/accuracy"))
    a = ap.parse_args(argv)
    profile = a.profile or ("tiny" if a.quick else "fast")
    try:
        settings = _settings(a.settings, profile)
    except ValueError as e:
        ap.error(str(e))
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
    n_tr, n_te = int(np.prod(list(tr_shape.values()))), int(np.prod(list(te_shape.values())))
    if a.test_fields is not None:
        n_te = a.test_fields
        te_shape = dict(rows=4, cols=12, fields=max(1, round(n_te / 48)))
    if a.backgrounds is not None:
        from real_plate import make_real_plate

        make_real_plate(trp, n_tr, "train", prevalence=0.5, seed=a.seed, size=size, root=a.backgrounds)
        make_real_plate(tep, n_te, "test", prevalence=0.5, seed=a.seed + 1000, size=size, root=a.backgrounds)
    else:
        make_plate(trp, **tr_shape, prevalence=0.5, seed=a.seed, shape=(size, size), plate="train")
        make_plate(tep, **te_shape, prevalence=0.5, seed=a.seed + 1000, shape=(size, size), plate="test")
    imgs, truth, labels, types = test_set(tep)
    sources = field_sources(tep)
    results, seconds, pretrain_s, cls_train_acc = {}, {}, {}, {}
    catalogue = {"weak": dict(EVIDENCE), "weak_evidence": dict(EVIDENCE), "weak_paper": dict(PAPER),
                 "weak_edge": dict(PAPER), "weak_cam": dict(PAPER, edge_refine=False), "weak_mil": dict(MIL),
                 "weak_paste": dict(EVIDENCE, unet_paste=PASTE),
                 "weak_paste_all": dict(EVIDENCE, unet_paste=PASTE, cls_paste=CLS_PASTE),
                 "strong": dict(masks=trp / "masks", use_masks_for_training=True)}
    names = [v.strip() for v in a.variants.split(",") if v.strip()]
    for v in names:
        if v.startswith("masks_") and v[6:].isdigit():
            catalogue[v] = dict(EVIDENCE, masks=_some_masks(trp, int(v[6:]), out / f"hand_{v}"))
        elif v == "zero_label":
            catalogue[v] = dict(zero_label=True)
        elif v == "weak_pretrain":
            catalogue[v] = dict(EVIDENCE, unlabelled=_unlabelled_plate(out / "unlabelled_plate", a, size))
        elif v not in catalogue:
            ap.error(f"unknown variant {v!r}")
    variants = [(v, catalogue[v]) for v in names]
    # one classifier per head (pooling and its parameter), classifier paste share and normalisation, shared by its
    # variants
    prof0 = get_profile(profile)

    def classifier_key(kw: dict) -> tuple:
        merged = {**settings, **kw}
        pool = merged.get("cls_pool", prof0.cls_pool)
        param = float(merged.get("cls_pool_param", prof0.cls_pool_param)) if pool != "avg" else None
        return pool, param, float(merged.get("cls_paste", 0.0)), merged.get("normalization", prof0.normalization)

    shared: dict[tuple, Path] = {}
    if a.classifier_from is not None:
        shared[classifier_key({})] = a.classifier_from
    for name, kw in variants:
        wd = out / f"work_{name}"
        wd.mkdir(parents=True)
        cls_key = classifier_key(kw)  # which shared classifier
        t = time.perf_counter()
        budget = {k: v for k, v in (("cls_epochs", a.cls_epochs), ("unet_steps", a.unet_steps)) if v is not None}
        if kw.get("zero_label"):
            model = train(clean=_clean_fields(trp, out / "clean_fields"), profile=profile, seed=a.seed,
                          progress=False)
        else:
            model = train(trp / "images", trp / "labels.csv", profile=profile, seed=a.seed, work_dir=wd,
                          progress=False, classifier_from=shared.get(cls_key), **budget, **{**settings, **kw})
        seconds[name] = round(time.perf_counter() - t, 1)
        if model.summary.get("seconds", {}).get("pretrain"):
            pretrain_s[name] = model.summary["seconds"]["pretrain"]
            seconds[name] = round(seconds[name] - pretrain_s[name], 1)
        model.save(out / f"{name}.artseg")
        fit = ((model.summary.get("classifier") or {}).get("train_metrics") or {}).get("accuracy")
        if fit is not None:
            cls_train_acc[name] = round(fit, 3)
        if not model.zero_label:
            shared.setdefault(cls_key, out / f"{name}.artseg")
        loaded = load_model(out / f"{name}.artseg")
        results[name] = score_model(loaded, imgs, truth, labels, types, sources)
        print(name, results[name], f"{seconds[name]} s", flush=True)
        if loaded.second_opinion is not None and not loaded.profile.second_opinion:
            # the same model with the object evidence's second opinion on the fields its classifier leaves unflagged
            results[f"{name}_second_opinion"] = score_model(loaded, imgs, truth, labels, types, sources,
                                                            second_opinion=True)
            print(f"{name}_second_opinion", results[f"{name}_second_opinion"], flush=True)
    z_clean = baseline_clean_z(trp, get_profile(profile).zero_label_clean_empty)
    base_scores = {s: baseline_score(im) for s, im in imgs.items()}
    for name, z in (("baseline", 4.0), ("baseline_clean", z_clean)):
        base_preds = {s: baseline_mask(im, z=z, score=base_scores[s]) for s, im in imgs.items()}
        base = evaluate_arrays(base_preds, truth, types=types)
        results[name] = {"iou": base["pixel_artifact_images"]["mean_iou"],
                         "pooled_iou": base["pixel_artifact_images"]["pooled_iou"], "object_f1": base["object"]["f1"],
                         "clean_empty": clean_empty(base_preds, labels), "z": round(float(z), 2),
                         "clean_empty_known_clean": clean_empty_known_clean(base_preds, labels, sources),
                         "clean_empty_by_source": clean_empty_by_source(base_preds, labels, sources),
                         **_kind_iou(base)}
    r4 = {v: {k: (round(x, 4) if isinstance(x, float) else x) for k, x in r.items()
              if k not in ("local_iou_by_kind", "image_recall_by_kind", "clean_empty_by_source")}
          for v, r in results.items()}
    weak_best = results["weak"]["iou"] if "weak" in results else None
    line = {
        "bench": "accuracy", "profile": profile, "image_size": size,
        "settings": settings,
        "plate": f"real backgrounds ({a.backgrounds})" if a.backgrounds is not None else "phantom",
        "n_train": int(len(list((trp / "images").iterdir()))), "n_test": len(imgs),
        **{f"{v}_iou": r4[v]["iou"] for v in results},
        **{f"{v}_clean_empty": r4[v]["clean_empty"] for v in results},
        **{f"{v}_clean_empty_known_clean": r4[v]["clean_empty_known_clean"] for v in results},
        **{f"{v}_image_f1": r4[v]["image_f1"] for v in results if "image_f1" in r4[v]},
        **{f"{v}_image_roc_auc": r4[v]["image_roc_auc"] for v in results if "image_roc_auc" in r4[v]},
        "image_f1": r4[names[0]]["image_f1"], "image_roc_auc": r4[names[0]]["image_roc_auc"],
        "weak_over_strong": (round(weak_best / max(results["strong"]["iou"], 1e-9), 3)
                             if weak_best is not None and "strong" in results else None),
        "train_s": seconds, "pretrain_s": pretrain_s, "classifier_train_accuracy": cls_train_acc,
        "local_iou_by_kind": {k: {v: results[v]["local_iou_by_kind"].get(k) for v in results}
                              for k in sorted(set().union(*(r["local_iou_by_kind"] for r in results.values())))},
        "image_recall_by_kind": {v: results[v]["image_recall_by_kind"] for v in results
                                 if results[v].get("image_recall_by_kind")},
        "clean_empty_by_source": {v: results[v]["clean_empty_by_source"] for v in results
                                  if results[v].get("clean_empty_by_source")},
        "details": results, "seconds": {**seconds, "total": round(time.perf_counter() - t0, 1)},
    }
    print(json.dumps(line))
    return line


if __name__ == "__main__":
    main()
