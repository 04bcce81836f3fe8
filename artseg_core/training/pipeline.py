"""``train()``: the whole weak-supervision pipeline, from image-level labels to one :class:`ArtifactModel`.

1. classifier (ResNet) on clean/artifact labels;
2. Score-CAM saliency (or, for a MIL classifier head, its own logit map) on the artifact images, optionally
   multiplied by an edge map, binarised at a threshold chosen on validation masks (or the documented default)
   -> pseudo-masks;
3. U-Net trained on the pseudo-masks (clean images are exact background; optionally an ignored band between
   confident foreground and background; hand masks, where given, enter through their own oversampled loss term),
   optionally starting from weights pretrained on the plate's unlabelled fields (``unlabelled``);
4. calibration on the validation split: classifier threshold (best F1), gate, U-Net threshold and minimum object
   size (best mean IoU against validation masks, or against pseudo-masks when there are none);
5. QC thresholds learned from the clean training images.

:func:`train` reads as these steps; each is one function below (``_read_fields``, ``_classifier_step``,
``_pseudo_mask_step``, ``_pretrain_step``, ``_unet_step``, ``_calibrate``, ``_summary``).
"""
from __future__ import annotations

import logging
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from artseg_core.io.labels import Sample, load_labeled_set, read_mask
from artseg_core.io.images import ImageReadError, read_image
from artseg_core.imgproc.normalize import normalize
from artseg_core.evaluation.metrics import image_metrics, pixel_metrics
from artseg_core.predict.model import DEFAULT_THRESHOLDS, ArtifactModel, pixel_size_from_files, resolve_device
from artseg_core.nets.profiles import get_profile, unet_training_steps
from artseg_core.imgproc.quality import fit_quality_thresholds, quality_scores
from artseg_core.training.checkpoint import check_work_dir

log = logging.getLogger("artseg.train")

UNET_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
#: with fewer hand-masked fields than this, all of them train (none is held out to choose thresholds): measured on
#: the bench plates, one masked field in the validation split was never trained on and chose every threshold alone
#: (evidence map 0.9, U-Net 0.7, minimum size 256 px), IoU 0.15 instead of 0.23 on real backgrounds
MIN_MASKS_FOR_VALIDATION = 10
MIN_SIZES = (0, 16, 32, 64, 128, 256)
#: below this share of its artifact (or clean) training fields flagged (or left unflagged) the classifier is said
#: not to fit them (see classifier_fit_text)
FIT_ACCURACY = 0.9


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): ``val_fraction`` of each class (at least one when the class has >= 3 images)."""
    rng = np.random.default_rng(seed)
    tr, va = [], []
    for c in (0, 1):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        k = int(round(val_fraction * len(idx)))
        if val_fraction > 0 and len(idx) >= 3:
            k = max(k, 1)
        k = min(k, max(len(idx) - 1, 0))
        va.extend(idx[:k])
        tr.extend(idx[k:])
    return np.sort(np.array(tr, int)), np.sort(np.array(va, int))


def _read_mask(path: Path, shape) -> np.ndarray:
    """A binary or label mask (an all-zero mask is allowed) or an ImageJ ROI set, as bool, checked against the
    image shape."""
    return read_mask(path, shape)


def best_classifier_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """Threshold on p_artifact with the best F1 on validation (midpoint between neighbouring scores)."""
    if len(y) == 0 or y.min() == y.max():
        return 0.5
    cand = np.unique(p)
    mids = np.concatenate([[0.5], (cand[:-1] + cand[1:]) / 2]) if len(cand) > 1 else np.array([0.5])
    best, best_f1 = 0.5, -1.0
    for t in sorted(mids, key=lambda t: abs(t - 0.5)):  # prefer thresholds near 0.5 on ties
        f1 = image_metrics(y, p, threshold=float(t))["f1"]
        if f1 > best_f1 + 1e-12:
            best, best_f1 = float(t), f1
    return best


@dataclass
class _Fields:
    """Every readable training image, normalised once, with its label, QC scores, hand mask and split."""
    samples: list
    imgs: list
    qscores: list
    skipped: list
    y: np.ndarray
    true_masks: dict
    tr: np.ndarray
    va: np.ndarray


def _resolve_profile(profile, cam_mode, edge_refine, overrides):
    prof = get_profile(profile, **overrides)
    if overrides.get("unet_steps") is not None and "unet_crops_per_image" not in overrides:
        prof = prof.with_overrides(unet_crops_per_image=0)  # steps asked for explicitly: exactly that many
    if cam_mode is not None or edge_refine is not None:
        prof = prof.with_overrides(cam_mode=cam_mode, edge_refine=edge_refine)
    return prof


@contextmanager
def _work_folder(work_dir):
    """(folder, kept): the user's ``work_dir`` (kept) or a temporary folder removed afterwards."""
    if work_dir is not None:
        work = Path(work_dir)
        work.mkdir(parents=True, exist_ok=True)
        yield work, True
        return
    with tempfile.TemporaryDirectory(prefix="artseg-train-") as tmp:
        yield Path(tmp), False


def _read_fields(samples, plane, val_fraction, seed, progress, *, normalization: str, clean_only: bool = False,
                 masks_train: bool = False) -> _Fields:
    """Step 0: read and normalise every image once (QC scores from the raw pixels), hand masks, split.

    ``masks_train``: hand masks are training targets; when there are fewer than :data:`MIN_MASKS_FOR_VALIDATION`
    of them, their fields all go to the training split (a few masks teach more than they calibrate)."""
    imgs, kept, qscores, skipped = [], [], [], []
    it = samples
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(samples, desc="reading", unit="img")
    for s in it:
        try:
            raw = read_image(s.path, plane=plane)
        except ImageReadError as e:
            log.warning("skipping %s", e)
            skipped.append(str(e))
            continue
        imgs.append(normalize(raw, method=normalization))
        qscores.append(quality_scores(raw))
        kept.append(s)
    y = np.array([s.label for s in kept], int)
    if clean_only:
        if len(y) < 2:
            raise ValueError("zero-label training needs at least 2 readable clean images")
    elif y.sum() == 0 or y.sum() == len(y):
        raise ValueError("after skipping unreadable files, training needs both clean and artifact images")
    true_masks = {i: _read_mask(s.mask_path, imgs[i].shape) for i, s in enumerate(kept) if s.mask_path is not None}
    tr, va = stratified_split(y, val_fraction, seed)
    if masks_train and 0 < len(true_masks) < MIN_MASKS_FOR_VALIDATION:
        masked = np.isin(va, list(true_masks))
        if masked.any():
            log.info("%d hand-masked field(s) moved from validation to training (fewer than %d masks)",
                     int(masked.sum()), MIN_MASKS_FOR_VALIDATION)
            tr, va = np.sort(np.concatenate([tr, va[masked]])), va[~masked]
    log.info("training set: %d images (%d artifact), validation: %d, masks: %d, skipped: %d",
             len(tr), int(y[tr].sum()), len(va), len(true_masks), len(skipped))
    return _Fields(kept, imgs, qscores, skipped, y, true_masks, tr, va)


def _classifier_step(prof, cls, f: _Fields, seed, dev, work, progress, classifier_from=None):
    """Step 1: fit the classifier (or take the trained one of ``classifier_from``); its validation threshold (best
    F1) and the U-Net gate."""
    import torch

    from artseg_core.nets.resnet import resize_for_classifier
    from artseg_core.training.classifier import ClassifierFitConfig, fit_classifier, predict_proba

    y, tr, va = f.y, f.tr, f.va
    x_all = torch.cat([resize_for_classifier(im, prof.cls_size) for im in f.imgs])
    if classifier_from is not None:
        cfit = _reuse_classifier(cls, classifier_from, prof.normalization)
    else:
        cfit = fit_classifier(cls, x_all[tr], y[tr], x_all[va] if len(va) else None, y[va] if len(va) else None,
                              ClassifierFitConfig(epochs=prof.cls_epochs, batch_size=prof.cls_batch, lr=prof.cls_lr,
                                                  plateau=prof.cls_plateau, early_stop=prof.cls_early_stop, seed=seed,
                                                  fast_math=prof.train_fast_math, paste_fraction=prof.cls_paste,
                                                  ema_decay=prof.cls_ema, keep=prof.cls_keep,
                                                  schedule=prof.cls_schedule),
                              device=dev, checkpoint=work / "classifier.ckpt", progress=progress)
    p_all = predict_proba(cls, x_all, device=dev)
    cls_thr = best_classifier_threshold(y[va], p_all[va]) if len(va) else 0.5
    art_val = p_all[va][y[va] == 1] if len(va) else np.array([])
    gate = float(np.clip(min(0.5 * cls_thr, 0.5 * art_val.min() if art_val.size else 0.5 * cls_thr), 1e-3, cls_thr))
    return x_all, p_all, cfit, cls_thr, gate


def _reuse_classifier(cls, path, normalization: str) -> dict:
    """Load the classifier of a model file trained on the same images (same profile networks and normalisation);
    its fit summary."""
    from artseg_core.predict.model import load_model

    other = load_model(path, device="cpu")
    if other.classifier is None:
        raise ValueError(f"{path}: a zero-label model has no classifier to reuse")
    if other.profile.normalization != normalization:
        raise ValueError(f"{path}: its classifier saw images under the {other.profile.normalization!r} "
                         f"normalisation, this training uses {normalization!r}")
    try:
        cls.load_state_dict(other.classifier.state_dict())
    except RuntimeError as e:
        raise ValueError(f"{path}: its classifier does not fit this profile's ({str(e).splitlines()[0]})") from None
    cfit = dict((other.summary.get("classifier") or {}))
    return {"epochs_run": cfit.get("epochs_run", 0), "best_epoch": cfit.get("best_epoch"),
            "reused_from": str(path)}


def _pseudo_mask_step(prof, cls, x_all, f: _Fields, dev, work, keep, progress, seed=0):
    """Step 2: Score-CAM saliency of every artifact image (optionally edge-refined), binarised at a threshold
    chosen on validation hand masks (or the profile's default) -> pseudo-masks, written to the work folder.

    Returns ``(pseudo-masks, summary, U-Net targets, threshold, second opinion)``; the second opinion
    (:class:`~artseg_core.weak.evidence.SecondOpinion`) comes from the evidence route only, else None."""
    from artseg_core.weak.logitmap import LOGIT_THRESHOLD, logit_saliency
    from artseg_core.weak.refine import binarize, default_threshold, edge_map, refine_saliency, select_threshold
    from artseg_core.weak.scorecam import score_cam

    if prof.cam_source == "evidence":
        return _evidence_step(prof, f, seed, work, keep, progress)
    if prof.cam_source not in ("scorecam", "logit", "evidence"):
        raise ValueError(f"unknown saliency source {prof.cam_source!r}; choose scorecam, logit or evidence")
    if prof.cam_source == "logit" and getattr(cls, "pool", "avg") == "avg":
        raise ValueError("cam_source='logit' needs a MIL classifier head (cls_pool='topk' or 'lse')")

    art_idx = np.flatnonzero(f.y == 1)
    saliency: dict[int, np.ndarray] = {}
    it = art_idx
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(art_idx, desc=f"Score-CAM ({prof.cam_mode})", unit="img")
    for i in it:
        if prof.cam_source == "logit":  # the MIL head's own evidence map; 0.5 = its decision boundary
            sal = logit_saliency(cls, x_all[i:i + 1].to(dev), f.imgs[i].shape)
            saliency[int(i)] = sal * edge_map(f.imgs[i], dilation=prof.edge_dilation) if prof.edge_refine else sal
            continue
        cam = score_cam(cls, x_all[i:i + 1].to(dev), cls.layer4, target=1, mode=prof.cam_mode,
                        top_k=prof.cam_top_k if prof.cam_mode == "fast" else None)[0]
        saliency[int(i)] = refine_saliency(cam, f.imgs[i], use_edges=prof.edge_refine, dilation=prof.edge_dilation)
    with_masks = [i for i in art_idx if i in f.true_masks]
    sel_idx = [i for i in with_masks if i in set(f.va.tolist())] or with_masks
    if sel_idx:
        cam_thr, _table = select_threshold([saliency[i] for i in sel_idx], [f.true_masks[i] for i in sel_idx])
        cam_thr_source = f"selected on {len(sel_idx)} masked images"
    else:
        cam_thr = prof.cam_threshold if prof.cam_threshold is not None else default_threshold(prof.edge_refine)
        if prof.cam_source == "logit":  # the network's own boundary (halved where edges scale the map down)
            cam_thr = LOGIT_THRESHOLD * (0.5 if prof.edge_refine else 1.0)
        cam_thr, cam_thr_source = float(cam_thr), "profile default (no validation masks)"
    pseudo = {i: binarize(s, cam_thr) for i, s in saliency.items()}
    if keep:
        _write_pseudo_masks(work, f, pseudo)
    info = {"mode": prof.cam_mode, "edge_refine": prof.edge_refine, "threshold": float(cam_thr),
            "threshold_source": cam_thr_source,
            "mean_pseudo_mask_fraction": float(np.mean([m.mean() for m in pseudo.values()]))}
    if prof.cam_source != "scorecam" or prof.pseudo_ignore > 0:
        info.update(source=prof.cam_source, classifier_pool=prof.cls_pool, ignore_band=prof.pseudo_ignore)
    return pseudo, info, saliency, cam_thr, None


def _write_pseudo_masks(work, f: _Fields, pseudo: dict) -> None:
    """Keep the pseudo-masks in the work folder, where the user can look at them."""
    from artseg_core.io.files import write_tiff

    (work / "pseudo_masks").mkdir(exist_ok=True)
    for i, m in pseudo.items():
        write_tiff(work / "pseudo_masks" / f"{f.samples[i].path.stem}.tif", (m * 255).astype(np.uint8))


def _evidence_step(prof, f: _Fields, seed, work, keep, progress):
    """Step 2 of the evidence route (:mod:`artseg_core.weak.evidence`), all fitted on the training split:

    * pixel evidence (pixels of artifact vs clean fields) -> a map that finds diffuse artifacts;
    * object evidence on the candidate objects (everything that stands out from the smooth background, cells
      included) -> which compact objects are artifacts;
    * pseudo-mask = kept objects | evidence map above its threshold. Both thresholds are the lowest that leave
      ``evidence_clean_empty`` of the held-out clean validation fields without a kept object / an evidence object
      of ``evidence_min_size`` px (with validation hand masks, the map's threshold is chosen on those instead);
    * optionally (``evidence_normal_ignore``), the map's pseudo-mask pixels that look like clean fields' pixels
      leave the U-Net loss (:func:`_ignore_normal_pixels`).
    """
    import torch

    from artseg_core.imgproc.features import pixel_features
    from artseg_core.imgproc.parallel import ordered_map
    from artseg_core.imgproc.postprocess import clean_mask
    from artseg_core.weak.evidence import (
        candidate_objects,
        clean_field_threshold,
        fit_object_evidence,
        SecondOpinion,
        fit_pixel_evidence,
        object_features,
    )
    from artseg_core.weak.refine import select_threshold

    workers = torch.get_num_threads()  # filter banks of this many fields at once; results do not depend on it
    tr = [int(i) for i in f.tr]
    ev, fit_info = fit_pixel_evidence([f.imgs[i] for i in tr], f.y[tr], seed=seed, workers=workers)
    val = set(int(i) for i in f.va)
    art_idx = [int(i) for i in np.flatnonzero(f.y == 1)]
    clean_val = [i for i in sorted(val) if f.y[i] == 0]
    ref = clean_val or [i for i in tr if f.y[i] == 0]
    need = sorted(set(tr) | set(art_idx) | set(ref))  # every validation field: an artifact field or in ref
    # evidence_normal_ignore: the clean fields' normality model, scored on the filter banks below
    normality = _normality_of_clean_fields(prof, f, tr, seed, workers) if prof.evidence_normal_ignore > 0 else None

    def filter_bank(i):
        feats = pixel_features(f.imgs[i])
        return i, feats, candidate_objects(feats)

    banks = ordered_map(filter_bank, need, workers)
    if progress:  # counts finished fields (ordered_map takes up to `workers` fields ahead)
        from tqdm.auto import tqdm
        banks = tqdm(banks, total=len(need), desc="pixel and object evidence", unit="img")
    maps, cands, rows, looks_normal = {}, {}, {}, {}
    for i, feats, cand in banks:
        maps[i] = ev.score_features(feats)
        cands[i] = cand
        rows[i] = object_features(feats, maps[i], *cand)
        if normality is not None and f.y[i] == 1:
            looks_normal[i] = normality[0].score_features(feats) < prof.evidence_normal_ignore
        del feats
    va = sorted(val)  # held-out fields stop the object model's fit
    oev, obj_info = fit_object_evidence([rows[i] for i in tr], f.y[tr], seed=seed,
                                        val_rows=[rows[i] for i in va] or None, val_labels=f.y[va] if va else None)
    # object logits (not probabilities: those saturate at 1.0 and would tie clean and artifact fields)
    obj_scores = {i: (oev.logit(rows[i]) if oev is not None else np.full(len(rows[i]), -np.inf, np.float32))
                  for i in need}
    peaks = np.array([obj_scores[i].max() if len(obj_scores[i]) else -np.inf for i in ref])
    obj_thr = float(np.quantile(peaks, prof.evidence_clean_empty, method="higher")) + 1e-4 if len(peaks) else np.inf
    # the image decision's second opinion (predict(second_opinion=True)): a field whose best object scores above
    # every held-out clean field's
    opinion = None
    if oev is not None and len(peaks) and np.isfinite(peaks.max()):
        opinion = SecondOpinion(ev, oev, float(peaks.max()))
    masked_val = [i for i in art_idx if i in f.true_masks and i in val]
    ms = prof.evidence_min_size
    if masked_val:
        thr, _table = select_threshold([maps[i] for i in masked_val], [f.true_masks[i] for i in masked_val])
        source = f"selected on {len(masked_val)} masked validation images"
    else:
        thr, empty = clean_field_threshold([maps[i] for i in ref], ms, prof.evidence_clean_empty)
        source = (f"lowest leaving {empty:.0%} of {len(ref)} {'validation' if clean_val else 'training'} clean "
                  f"fields without an object of {ms} px")

    def kept_objects(i):
        lab, _n = cands[i]
        return np.concatenate([[False], obj_scores[i] >= obj_thr])[lab]

    objects = {i: kept_objects(i) for i in art_idx}
    pseudo = {i: objects[i] | clean_mask(maps[i], thr, min_size=ms) for i in art_idx}
    if keep:
        _write_pseudo_masks(work, f, pseudo)
    # the U-Net target: pseudo-mask = 1; the band of evidence in [ignore x threshold, threshold) outside it ignored
    targets = {i: np.where(pseudo[i], 1.0, np.minimum(maps[i], thr * 0.999)).astype(np.float32) for i in art_idx}
    normal_info = None
    if normality is not None:
        share = _ignore_normal_pixels(prof, pseudo, objects, looks_normal, targets, thr)
        normal_info = {"below": prof.evidence_normal_ignore, "normality": normality[1],
                       "share_of_pseudo_mask_pixels": share}
        log.info("pseudo-mask pixels that look normal (score < %g): %.1f%% left out of the U-Net loss",
                 prof.evidence_normal_ignore, 100 * share)
    info = {"source": "evidence", "evidence": fit_info, "objects": obj_info, "threshold": float(thr),
            "threshold_source": source,
            "object_threshold": round(obj_thr, 4) if np.isfinite(obj_thr) else None, "object_threshold_scale": "logit",
            "object_threshold_source": f"{prof.evidence_clean_empty:.0%} of {len(ref)} clean fields without a kept "
                                       f"candidate object",
            "ignore_band": prof.pseudo_ignore, **({"normal_pixels_ignored": normal_info} if normal_info else {}),
            "second_opinion_threshold": round(opinion.threshold, 4) if opinion else None,
            "second_opinion_threshold_source": f"highest object score of {len(ref)} clean "
                                               f"{'validation' if clean_val else 'training'} fields",
            "mean_pseudo_mask_fraction": float(np.mean([m.mean() for m in pseudo.values()]))}
    log.info("evidence pseudo-masks: map threshold %.3f (%s), object threshold (logit) %.3f, mean fraction %.4f", thr,
             source, obj_thr, info["mean_pseudo_mask_fraction"])
    return pseudo, info, targets, float(thr), opinion


def _normality_of_clean_fields(prof, f: _Fields, tr, seed, workers):
    """``(model, fit summary)``: the normality model (:class:`~artseg_core.weak.evidence.Normality`, the zero-label
    mode's) of the clean training fields, for ``evidence_normal_ignore``; that setting needs an ignored band."""
    from artseg_core.weak.evidence import fit_normality

    if prof.pseudo_ignore <= 0:
        raise ValueError("evidence_normal_ignore needs an ignored band (pseudo_ignore > 0)")
    return fit_normality([f.imgs[i] for i in tr if f.y[i] == 0], seed=seed, workers=workers)


def _ignore_normal_pixels(prof, pseudo, objects, looks_normal, targets, thr) -> float:
    """In place: pseudo-mask pixels of the evidence map that look like the clean fields' pixels leave the U-Net loss;
    returns their share of the pseudo-mask pixels.

    ``looks_normal``: per artifact field, where the clean fields' normality score is below
    ``evidence_normal_ignore`` (1 = the clean fields' 99.9th percentile). Such pseudo-mask pixels outside the kept
    candidate objects (``objects``: those were already judged against the clean fields' objects) get a target in
    the ignored band. They are not made background: the inside of a diffuse artifact can look normal pixel by
    pixel."""
    band = thr * (1 + prof.pseudo_ignore) / 2  # inside [pseudo_ignore x threshold, threshold): left out of the loss
    before = sum(int(pseudo[i].sum()) for i in looks_normal)
    ignored = 0
    for i, normal in looks_normal.items():
        normal = pseudo[i] & ~objects[i] & normal
        targets[i][normal] = band
        ignored += int(normal.sum())
    return round(ignored / max(before, 1), 4)


def pseudo_target(saliency: np.ndarray, threshold: float, ignore: float) -> np.ndarray:
    """U-Net target from a saliency map: 1 where ``saliency >= threshold`` (confident foreground); with
    ``ignore > 0``, :data:`~artseg_core.training.unet.IGNORE` in the band ``[ignore * threshold, threshold)``
    (left out of the loss) and 0 below it (confident background). ``ignore = 0``: the plain bool pseudo-mask."""
    from artseg_core.training.unet import IGNORE

    fg = np.asarray(saliency) >= threshold
    if ignore <= 0:
        return fg
    t = np.where(np.asarray(saliency) >= ignore * threshold, IGNORE, 0).astype(np.uint8)
    t[fg] = 1
    return t


def _unet_step(prof, unet, f: _Fields, saliency, cam_thr, use_masks_for_training, seed, dev, work, progress,
               pretrained: bool = False):
    """Step 3: the U-Net on pseudo-masks; clean images are exact background (all 0, no ignore band).

    Hand masks: with ``prof.hand_mask_fraction > 0`` their images fill that share of every batch and have a loss
    term of their own; with 0 they replace the pseudo-masks in the one loss (the earlier behaviour)."""
    import torch

    from artseg_core.training.unet import MIN_MASKED_SHARE, UNetFitConfig, fit_unet, masked_share

    own_loss = use_masks_for_training and prof.hand_mask_fraction > 0

    def target(i: int) -> np.ndarray:
        if use_masks_for_training and i in f.true_masks:
            return f.true_masks[i]
        if f.y[i] != 1:
            return np.zeros(f.imgs[i].shape, bool)
        return pseudo_target(saliency[i], cam_thr, prof.pseudo_ignore)

    hand = [own_loss and int(i) in f.true_masks for i in f.tr]
    clean = [f.y[i] == 0 and not h for i, h in zip(f.tr, hand)]
    log.info("U-Net targets: %d hand-masked training fields%s; ignore band %s; synthetic artifacts in %s", sum(hand),
             f" ({prof.hand_mask_fraction:.0%} of each batch, own loss term)" if any(hand) else "",
             f"[{prof.pseudo_ignore:g} x threshold, threshold)" if prof.pseudo_ignore > 0 else "none",
             f"{prof.unet_paste:.0%} of the crops of {sum(clean)} clean fields" if prof.unet_paste > 0 else "none")
    images, targets = [f.imgs[i] for i in f.tr], [target(int(i)) for i in f.tr]
    # a retry starts again from the pretrained weights (else from fresh ones)
    start = {k: v.detach().clone() for k, v in unet.state_dict().items()} if pretrained else None

    def fit(run_seed: int, lr: float, checkpoint: Path) -> dict:
        return fit_unet(unet, images, targets,
                        UNetFitConfig(steps=unet_training_steps(prof, len(f.tr)), batch_size=prof.unet_batch,
                                      tile=prof.unet_tile, lr=lr, seed=run_seed, fast_math=prof.train_fast_math,
                                      hand_fraction=prof.hand_mask_fraction, hand_weight=prof.hand_mask_weight,
                                      paste_fraction=prof.unet_paste),
                        device=dev, checkpoint=checkpoint, progress=progress, hand=hand if any(hand) else None,
                        clean=clean)

    def share() -> float:
        return masked_share(unet, images, targets, prof.unet_tile, prof.unet_threshold, dev)

    ufit = fit(seed, prof.unet_lr, work / "unet.ckpt")
    masked = share()
    if masked < MIN_MASKED_SHARE:
        # a training that collapsed (seen once on a real-background bench plate: loss flat from the first steps,
        # probabilities 0.1-0.3 everywhere, every mask empty) is run once more from other weights, half the step size
        log.warning("U-Net: it masks the foreground of only %.0f%% of its training fields at its threshold %.2f; "
                    "training it again (seed %d, learning rate %.1e)", 100 * masked, prof.unet_threshold, seed + 1,
                    prof.unet_lr / 2)
        first = {"training_fields_masked": round(masked, 3),
                 "final_loss": ufit["history"][-1]["loss"] if ufit["history"] else None}
        if start is None:
            torch.manual_seed(seed + 1)
            start = ArtifactModel.build_unet(prof).state_dict()
        unet.load_state_dict(start)
        ufit = fit(seed + 1, prof.unet_lr / 2, work / "unet_retry.ckpt")
        masked = share()
        ufit["retried_after_collapse"] = first
        if masked < MIN_MASKED_SHARE:
            log.error("U-Net: after a second training it still masks only %.0f%% of its training fields; its masks "
                      "will be mostly empty. Check the pseudo-masks in the work folder.", 100 * masked)
    ufit["training_fields_masked"] = round(masked, 3)
    ufit["collapsed"] = bool(masked < MIN_MASKED_SHARE)
    ufit["hand_masked_fields"] = int(sum(hand))
    ufit["paste"] = {"fraction": prof.unet_paste, "clean_fields": int(sum(clean))} if prof.unet_paste > 0 else None
    return ufit


def _pretrained_file(prof, unlabelled) -> dict | None:
    """The pretraining file given as ``unlabelled`` (checked against the profile's U-Net before any training), or
    None when ``unlabelled`` is None or a folder."""
    from artseg_core.training.pretrain import check_pretrained, read_pretrained

    if unlabelled is None or Path(unlabelled).is_dir():
        return None
    src = Path(unlabelled)
    if not src.is_file():
        raise ValueError(f"{src}: unlabelled must be a folder of images or a file written by 'artseg pretrain'")
    d = read_pretrained(src)
    check_pretrained(ArtifactModel.build_unet(prof), d, str(src), prof.normalization)
    return d


def _pretrain_step(prof, unet, unlabelled, pretrained, f: _Fields, seed, dev, work, plane, progress) -> dict | None:
    """Step 3a (optional): the U-Net starts from weights pretrained by masked-region inpainting
    (:mod:`artseg_core.training.pretrain`): ``pretrained`` (read by :func:`_pretrained_file` from a file written by
    ``artseg pretrain``), or learned here from the folder ``unlabelled`` plus the training fields (the weights are
    kept in ``work`` as ``pretrained_unet.pt``)."""
    from artseg_core.io.images import list_images
    from artseg_core.training.pretrain import (load_pretrained, pretrain_config, pretrain_unet, reset_head,
                                               save_pretrained)

    if unlabelled is None:
        return None
    src = Path(unlabelled)
    if pretrained is not None:
        load_pretrained(unet, pretrained, str(src))
        log.info("U-Net: starting from %s (pretrained on %s fields)", src, pretrained["info"].get("n_fields"))
        return {"source": str(src), "reused": True,
                **{k: pretrained["info"].get(k) for k in ("n_fields", "steps_run", "final_loss", "seconds")}}
    paths = sorted(set(list_images([src], recursive=True)) | {s.path for s in f.samples})
    cfg = pretrain_config(prof, seed)
    info = pretrain_unet(unet, paths, cfg, device=dev, checkpoint=work / "pretrain.ckpt", progress=progress,
                         plane=plane)
    save_pretrained(work / "pretrained_unet.pt", unet, cfg, info)
    reset_head(unet)
    return {"source": str(src), "reused": False,
            **{k: info[k] for k in ("n_fields", "steps_run", "final_loss", "seconds", "skipped")}}


def _calibrate(model, f: _Fields) -> dict:
    """Step 4: U-Net threshold and minimum object size on the validation split (into ``model.thresholds``)."""
    from artseg_core.imgproc.postprocess import clean_mask

    cal_idx = [int(i) for i in (f.va if len(f.va) else f.tr) if int(i) in f.true_masks or f.y[i] == 0]
    if any(i in f.true_masks for i in cal_idx):
        # U-Net threshold and minimum size: best mean IoU against hand masks (clean images count with empty masks)
        probs = {i: model.segment(f.imgs[i]) for i in cal_idx}
        refs = {i: f.true_masks.get(i, np.zeros(f.imgs[i].shape, bool)) for i in cal_idx}
        best = (-1.0, DEFAULT_THRESHOLDS["unet"], DEFAULT_THRESHOLDS["min_size"])
        for thr in UNET_THRESHOLDS:
            for ms in MIN_SIZES:
                score = float(np.mean([pixel_metrics(clean_mask(probs[i], thr, ms), refs[i])["iou"] for i in probs]))
                if score > best[0] + 1e-9:
                    best = (score, thr, ms)
        val_iou, unet_thr, min_size = best
        ref_kind = f"hand masks of {sum(i in f.true_masks for i in cal_idx)} validation images"
    else:
        # Without hand masks, matching the (blurry, over-large) pseudo-masks would only copy their errors: keep the
        # profile's threshold (0.5 in every built-in profile) and the default size.
        val_iou, unet_thr, min_size = None, model.profile.unet_threshold, DEFAULT_THRESHOLDS["min_size"]
        ref_kind = "none (no hand masks): the profile's threshold and the default minimum size"
    model.thresholds.update(unet=float(unet_thr), min_size=int(min_size))
    return {"val_iou": val_iou, "reference": ref_kind, "unet_threshold": unet_thr, "min_size": min_size}


def _summary(f: _Fields, seed, dev, p_all, cfit, cam_info, ufit, calib, thresholds, seconds) -> dict:
    y, va = f.y, f.va

    def metrics(idx) -> dict:  # at the calibrated threshold; empty where the split has one class only
        if not len(idx) or y[idx].min() == y[idx].max():
            return {}
        m = image_metrics(y[idx], p_all[idx], threshold=thresholds["classifier"])
        return {k: (float(v) if isinstance(v, (int, float, np.floating, np.integer)) else v) for k, v in m.items()}

    return {
        "n_images": int(len(y)), "n_artifact": int(y.sum()), "n_clean": int(len(y) - y.sum()),
        "n_train": int(len(f.tr)), "n_val": int(len(va)), "n_masks": len(f.true_masks), "skipped": f.skipped,
        "seed": seed, "device": dev,
        "classifier": {"epochs_run": cfit["epochs_run"], "best_epoch": cfit["best_epoch"],
                       **{k: cfit[k] for k in ("kept", "weight_average_decay") if k in cfit},
                       # how well it fits its own training fields (a classifier that does not fit them misses
                       # those kinds of artifact on new fields too), and the held-out validation fields
                       "train_metrics": metrics(f.tr), "val_metrics": metrics(va)},
        "scorecam": cam_info,
        "unet": {"steps_run": ufit["steps_run"], "hand_masked_fields": ufit.get("hand_masked_fields", 0),
                 "synthetic_artifacts": ufit.get("paste"),
                 "final_loss": ufit["history"][-1]["loss"] if ufit["history"] else None,
                 # share of its training fields whose foreground it masks; a collapsed training is run once more
                 **{k: ufit[k] for k in ("training_fields_masked", "collapsed", "retried_after_collapse")
                    if k in ufit}},
        "calibration": {**calib, "classifier_threshold": thresholds["classifier"], "gate": thresholds["gate"]},
        "seconds": seconds,
    }


def _train_zero_label(prof, samples, plane, val_fraction, seed, dev, pixel_size, progress, t0) -> ArtifactModel:
    """Zero-label mode: a normality model of the clean fields (:class:`~artseg_core.weak.evidence.Normality`)
    fitted on the training split; its threshold leaves ``zero_label_clean_empty`` of the held-out clean fields
    without an object of ``evidence_min_size`` px."""
    import torch

    from artseg_core.weak.evidence import clean_field_threshold, fit_normality

    f = _read_fields(samples, plane, val_fraction, seed, progress, clean_only=True, normalization=prof.normalization)
    tr, va = [int(i) for i in f.tr], [int(i) for i in f.va]
    if not va:  # stratified_split keeps >= 1 image for training; the threshold needs held-out fields
        tr, va = tr[:-1], tr[-1:]
    nm, fit_info = fit_normality([f.imgs[i] for i in tr], seed=seed, workers=torch.get_num_threads())
    thr, empty = clean_field_threshold([nm.score(f.imgs[i]) for i in va], prof.evidence_min_size,
                                       prof.zero_label_clean_empty)
    model = ArtifactModel(prof, None, None, thresholds={"classifier": 0.5, "gate": 0.5, "unet": float(thr),
                                                        "min_size": int(prof.evidence_min_size)},
                          device=dev, normality=nm,
                          pixel_size=pixel_size if pixel_size is not None
                          else pixel_size_from_files([s.path for s in f.samples]))
    model.quality_thresholds = fit_quality_thresholds([f.qscores[i] for i in tr])
    model.summary = {
        "mode": "zero_label", "n_images": int(len(f.y)), "n_artifact": 0, "n_clean": int(len(f.y)),
        "n_train": len(tr), "n_val": len(va), "n_masks": 0, "skipped": f.skipped, "seed": seed, "device": dev,
        "normality": fit_info,
        "calibration": {"anomaly_threshold": float(thr), "min_size": int(prof.evidence_min_size),
                        "reference": f"lowest threshold leaving {empty:.0%} of {len(va)} held-out clean fields "
                                     f"without an object of {prof.evidence_min_size} px"},
        "seconds": {"total": round(time.perf_counter() - t0, 1)},
    }
    log.info("trained (zero-label): %s", model.summary["calibration"])
    return model


def classifier_fit_text(classifier_summary: dict) -> str:
    """One line for the user on how well the classifier fits its own training fields (``train_metrics`` of a
    model's summary). It warns when fewer than :data:`FIT_ACCURACY` of the artifact fields are flagged (a field it
    does not flag gets no mask, so artifacts like those go unmasked on new fields too) or of the clean fields are
    left unflagged (false alarms on clean fields)."""
    m = classifier_summary.get("train_metrics") or {}
    if "accuracy" not in m:
        return "classifier on its training fields: not recorded in this model file (an older one)"
    clean_left = m["tn"] / max(m["fp"] + m["tn"], 1)  # share of clean fields left unflagged
    text = (f"classifier on its training fields: accuracy {m['accuracy']:.2f}, artifact fields flagged "
            f"{m['recall']:.2f}, clean fields flagged {1 - clean_left:.2f}")
    issues = []
    if m["recall"] < FIT_ACCURACY:
        issues.append("artifacts like the ones it misses there (often small or faint) will go unflagged and "
                      "unmasked on new fields")
    if clean_left < FIT_ACCURACY:
        issues.append("expect clean fields flagged (and masked) on new plates too")
    if issues:
        text += f" - it does not fit them well: {'; '.join(issues)}. More labelled fields may help"
    return text


def train(images=None, labels=None, *, clean=None, artifact=None, masks=None, profile="fast",
          val_fraction: float = 0.2, seed: int = 0, device: str = "auto", work_dir=None, progress: bool = True,
          cam_mode: str | None = None, edge_refine: bool | None = None, use_masks_for_training: bool = True,
          plane: int | None = None, restart: bool = False, pixel_size: float | None = None,
          classifier_from=None, unlabelled=None, **overrides) -> ArtifactModel:
    """Train an artifact model from image-level labels.

    Parameters
    ----------
    images : path, optional
        Folder of training images, with ``labels`` (``labels.csv``: columns image,label = clean|artifact).
    clean, artifact : path, optional
        Or a folder of clean and a folder of artifact images. ``clean`` alone (no images, labels or artifact
        folder) is the zero-label mode: a normality model of the clean fields flags and masks whatever does not
        look like them (see :class:`~artseg_core.weak.evidence.Normality`).
    masks : path, optional
        Folder with pixel masks for some images (same file stem): used to pick the Score-CAM threshold and to
        calibrate on validation, and (``use_masks_for_training``) as U-Net targets: through a loss term of their own,
        with their fields drawn for ``hand_mask_fraction`` of every batch (profile setting; 0 = mixed into the
        pseudo-masks as before).
    profile : {"fast", "paper", "tiny", "mil"} or Profile
        Network sizes and budgets (:mod:`artseg_core.profiles`); ``overrides`` change single settings
        (e.g. ``unet_steps=200``). The U-Net runs :func:`~artseg_core.profiles.unet_training_steps` steps (more
        on large training sets), or exactly ``unet_steps`` when that is given here.
    val_fraction : float
        Stratified, seeded validation split.
    cam_mode, edge_refine
        Override the profile's Score-CAM mode (exact|paper|fast) and edge refinement switch.
    work_dir : path, optional
        Checkpoints go here; training started again with the same work_dir resumes - with the same images and
        configuration only (else :class:`~artseg_core.training.checkpoint.CheckpointError` says what differs).
    restart : bool
        Discard the checkpoints in ``work_dir`` and train from scratch.
    classifier_from : path, optional
        A model file trained on the same images with the same classifier configuration: its classifier is used
        as is (step 1 is skipped; thresholds are still chosen on this validation split), e.g. to compare
        pseudo-mask routes without training the classifier again.
    pixel_size : float, optional
        Pixel size of the training images in um/pixel, recorded in the model (``pixel_size_um``); default: read
        from the images' metadata (ImageJ, OME or TIFF resolution) when they carry one.
    unlabelled : path, optional
        A folder of the plate's fields, labelled or not (searched recursively): the U-Net is first pretrained on
        them and the training fields by masked-region inpainting (``pretrain_steps`` steps), then fine-tuned; or
        a file written by ``artseg pretrain`` (the same pretraining, done once per plate and reused).

    Returns
    -------
    ArtifactModel
    """
    import torch

    from artseg_core.nets.accel import set_threads

    t0 = time.perf_counter()
    prof = _resolve_profile(profile, cam_mode, edge_refine, overrides)
    dev = resolve_device(device)
    set_threads()
    zero_label = clean is not None and images is None and labels is None and artifact is None
    if prof.second_opinion and (zero_label or prof.cam_source != "evidence"):
        raise ValueError("second_opinion needs the evidence route (cam_source=evidence, as in profile fast): its "
                         "object evidence is the second opinion")
    samples = load_labeled_set(images, labels, clean=clean, artifact=artifact, masks=masks, clean_only=zero_label)
    pretrained = None if zero_label else _pretrained_file(prof, unlabelled)
    if zero_label:
        if masks is not None:
            raise ValueError("zero-label training (clean images only) takes no masks")
        if unlabelled is not None:
            raise ValueError("zero-label training has no U-Net to pretrain: unlabelled images are not used")
        return _train_zero_label(prof, samples, plane, val_fraction, seed, dev, pixel_size, progress, t0)
    with _work_folder(work_dir) as (work, keep):
        check_work_dir(work, samples, {"profile": prof.to_dict(), "seed": seed, "val_fraction": val_fraction,
                                       "plane": plane, "use_masks_for_training": use_masks_for_training,
                                       "classifier_from": str(classifier_from) if classifier_from else None,
                                       **({"unlabelled": str(unlabelled)} if unlabelled is not None else {})},
                       restart=restart)
        f = _read_fields(samples, plane, val_fraction, seed, progress, masks_train=use_masks_for_training,
                         normalization=prof.normalization)
        t1 = time.perf_counter()
        torch.manual_seed(seed)  # the networks' initial weights are part of what a seed reproduces
        cls, unet = ArtifactModel.build_networks(prof)
        x_all, p_all, cfit, cls_thr, gate = _classifier_step(prof, cls, f, seed, dev, work, progress,
                                                             classifier_from=classifier_from)
        t2 = time.perf_counter()
        pseudo, cam_info, saliency, cam_thr, opinion = _pseudo_mask_step(prof, cls, x_all, f, dev, work, keep, progress,
                                                                 seed=seed)
        t3 = time.perf_counter()
        pre = _pretrain_step(prof, unet, unlabelled, pretrained, f, seed, dev, work, plane, progress)
        t3a = time.perf_counter()
        ufit = _unet_step(prof, unet, f, saliency, cam_thr, use_masks_for_training, seed, dev, work, progress,
                          pretrained=pre is not None)
        t4 = time.perf_counter()
        if opinion is None and prof.second_opinion:
            log.warning("no second opinion could be fitted (no candidate objects in clean or in artifact fields); "
                        "the model predicts without one")
            prof = prof.with_overrides(second_opinion=False)
        model = ArtifactModel(prof, cls, unet, thresholds={"classifier": cls_thr, "gate": gate}, device=dev,
                              second_opinion=opinion,
                              pixel_size=pixel_size if pixel_size is not None
                              else pixel_size_from_files([s.path for s in f.samples]))
        calib = _calibrate(model, f)
        # step 5: QC thresholds from the clean training images
        model.quality_thresholds = fit_quality_thresholds([f.qscores[i] for i in f.tr if f.y[i] == 0])
        seconds = {"classifier": round(t2 - t1, 1), "scorecam": round(t3 - t2, 1), "pretrain": round(t3a - t3, 1),
                   "unet": round(t4 - t3a, 1),
                   "total": round(time.perf_counter() - t0, 1)}
        model.summary = _summary(f, seed, dev, p_all, cfit, cam_info, ufit, calib, model.thresholds, seconds)
        model.summary["pretrain"] = pre
    log.info("trained: %s", model.summary["calibration"])
    return model


__all__ = ["train", "stratified_split", "best_classifier_threshold", "classifier_fit_text", "Sample"]
