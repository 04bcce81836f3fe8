"""``ArtifactModel``: the trained classifier + U-Net with their calibrated thresholds, and its ``predict``.

This is the one prediction entry point every face calls (CLI, CellProfiler module, Fiji, plate runner).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import math
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from artseg_core._version import __version__
from artseg_core.imgproc.normalize import apply_normalization, normalize, normalize_range
from artseg_core.imgproc.postprocess import clean_mask, label_objects, min_size_pixels, object_table
from artseg_core.imgproc.quality import quality_flags, quality_scores
from artseg_core.io.modelfile import (
    ModelFileError,
    arrays_to_state_dict,
    load_model_file,
    save_model_file,
    state_dict_to_arrays,
)
from artseg_core.nets.profiles import Profile

#: Default thresholds used before calibration (and documented in the README).
DEFAULT_THRESHOLDS = {"classifier": 0.5, "gate": 0.1, "unet": 0.5, "min_size": 16}
#: prefix of the second opinion's arrays in the model file (:class:`~artseg_core.weak.evidence.SecondOpinion`)
SECOND_OPINION_PREFIX = "second_opinion"
#: why a second opinion cannot be asked of a model that has none
NO_SECOND_OPINION = ("this model has no second opinion: only the evidence route (profile fast) stores one, since "
                     "that option exists; train the model again, or predict without the second opinion")
#: an image whose pixel size differs from the model's by more than this fraction gets a warning
PIXEL_SIZE_TOLERANCE = 0.2

log = logging.getLogger(__name__)


def pixel_size_from_files(paths, limit: int = 8) -> float | None:
    """The pixel size (um/pixel) recorded in image files' metadata (ImageJ, OME or TIFF resolution), or None.

    Reads the metadata of up to ``limit`` files; returns their median when at least one has a pixel size.
    """
    from artseg_core.io.images import read_image_with_meta

    found = []
    for p in list(paths)[:limit]:
        try:
            _, meta = read_image_with_meta(p, allow_constant=True)
        except Exception:  # unreadable files are reported by training itself
            continue
        if meta.get("pixel_size_um"):
            found.append(float(meta["pixel_size_um"]))
    return float(np.median(found)) if found else None


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a GPU is usable, else ``cpu``; ``cpu``/``cuda`` are checked."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but no CUDA GPU is available; use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"unknown device {device!r}; use cpu, cuda or auto")
    return device


@dataclass
class Result:
    """What :meth:`ArtifactModel.predict` returns for one image.

    One answer per image: ``flagged`` is True for every image whose ``mask`` is non-empty, so filtering on
    ``flagged`` (CSV column ``flagged``, CellProfiler ``MaskArtifacts_Flagged``) never keeps an image that carries
    an artifact mask, and an image reported clean always has an empty mask. A flagged image may still have an
    empty mask (the classifier found an artifact, the U-Net no region above the minimum size).
    """

    p_artifact: float
    flagged: bool                       # True whenever the mask is non-empty (one answer per image)
    segmented: bool                     # False when the classifier judged the image clean and the U-Net was skipped
    prob: np.ndarray | None             # float32 HxW, or None when gated out
    mask: np.ndarray                    # bool HxW
    labels: np.ndarray                  # int32 HxW, connected components of mask
    objects: list[dict] = field(default_factory=list)
    quality: dict[str, Any] = field(default_factory=dict)
    cleaned: np.ndarray | None = None

    @property
    def area_fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0

    @property
    def n_objects(self) -> int:
        return len(self.objects)

    def row(self) -> dict[str, Any]:
        """One flat CSV row (no arrays): classifier, segmentation summary and QC scores/flags."""
        r = {"p_artifact": round(float(self.p_artifact), 6), "flagged": bool(self.flagged),
             "segmented": bool(self.segmented), "area_fraction": round(self.area_fraction, 6),
             "n_objects": self.n_objects}
        for k in ("focus", "illumination", "saturation"):
            r[k] = round(float(self.quality[k]), 6) if k in self.quality else None
        for k in ("defocus", "bad_illumination", "saturated"):
            r[k] = bool(self.quality.get(k, False))
        return r


class ArtifactModel:
    """A trained ArtSeg model: classifier (ResNet), segmenter (U-Net), thresholds and QC thresholds.

    Parameters
    ----------
    profile : Profile
        Network sizes and prediction tiling.
    classifier, unet : torch.nn.Module
    thresholds : dict
        ``classifier`` (flag when p_artifact >= it), ``gate`` (skip the U-Net when p_artifact < it),
        ``unet`` (pixel probability threshold), ``min_size`` (pixels).
    quality_thresholds : dict
        From :func:`artseg_core.quality.fit_quality_thresholds` on clean training images.
    summary : dict
        Training summary (counts, validation metrics, timings).
    pixel_size : float, optional
        Pixel size (um/pixel) of the training images, recorded in the model file (``pixel_size_um``); None when
        unknown (models trained without ``--pixel-size`` or metadata, and files written before ArtSeg 0.2.1).
    """

    def __init__(self, profile: Profile, classifier, unet, thresholds: dict | None = None,
                 quality_thresholds: dict | None = None, summary: dict | None = None, device: str = "cpu",
                 precision: str = "fp32", pixel_size: float | None = None, normality=None, second_opinion=None):
        self.profile = profile
        if normality is None and (classifier is None or unet is None):
            raise ValueError("a model needs a classifier and a U-Net, or a normality model (zero-label mode)")
        self.classifier = classifier.eval() if classifier is not None else None
        self.unet = unet.eval() if unet is not None else None
        #: zero-label mode (``artseg train --clean DIR`` alone): a :class:`~artseg_core.weak.evidence.Normality`
        #: model of the clean fields replaces both networks; the mask is where its anomaly score exceeds
        #: ``thresholds["unet"]``, and an image is flagged when its mask is non-empty.
        self.normality = normality
        #: :class:`~artseg_core.weak.evidence.SecondOpinion` of the evidence route (None for other routes and for
        #: model files written before this option existed); used by :meth:`predict` with ``second_opinion``
        self.second_opinion = second_opinion
        self.thresholds = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
        self.quality_thresholds = dict(quality_thresholds or {})
        self.summary = dict(summary or {})
        self.precision = precision
        self.pixel_size = None if pixel_size is None else _check_pixel_size(pixel_size, "the model's pixel size")
        self._warned_sizes: set = set()
        self.device = "cpu"
        self.to(device)

    # ----------------------------------------------------------------- construction
    @staticmethod
    def build_networks(profile: Profile):
        """Fresh, untrained classifier and U-Net for a profile."""
        from artseg_core.nets.resnet import build_resnet

        cls = build_resnet(profile.arch, in_channels=1, num_classes=2, width=profile.cls_width,
                           layer4_stride=profile.cls_layer4_stride, pool=profile.cls_pool,
                           pool_param=profile.cls_pool_param)
        return cls, ArtifactModel.build_unet(profile)

    @staticmethod
    def build_unet(profile: Profile):
        """Fresh, untrained U-Net for a profile."""
        from artseg_core.nets.unet import ArtSegUNet

        return ArtSegUNet(in_channels=1, out_channels=1, width=profile.unet_width, levels=profile.unet_levels,
                          scale=profile.unet_scale)

    def to(self, device: str = "auto") -> "ArtifactModel":
        self.device = resolve_device(device)
        for net in (self.classifier, self.unet):
            if net is not None:
                net.to(self.device)
        return self

    @property
    def zero_label(self) -> bool:
        """True for a model trained on clean fields only (no classifier, no U-Net)."""
        return self.normality is not None

    def _require_networks(self, what: str) -> None:
        if self.zero_label:
            raise ValueError(f"{what} needs a classifier and a U-Net; this is a zero-label model (trained on clean "
                             "fields only), which has neither")

    # ----------------------------------------------------------------- inference pieces
    def _autocast(self):
        if self.precision == "bf16":
            from artseg_core.nets.accel import autocast_context

            return autocast_context(self.device, True)
        return contextlib.nullcontext()

    def normalize(self, image: np.ndarray) -> np.ndarray:
        """A raw image scaled as this model's networks saw their training images (``profile.normalization``)."""
        return normalize(image, method=self.profile.normalization)

    def classify(self, norm_image: np.ndarray) -> float:
        """Probability that a normalised image contains an artifact."""
        import torch

        from artseg_core.nets.resnet import resize_for_classifier

        if self.zero_label:
            return self._anomaly_p(self.normality.score(norm_image))
        x = resize_for_classifier(norm_image, self.profile.cls_size).to(self.device)
        with torch.inference_mode(), self._autocast():
            logits = self.classifier(x)
        return float(torch.softmax(logits.float(), 1)[0, 1])

    def segment(self, norm_image: np.ndarray, tile: int | None = None, overlap: int | None = None) -> np.ndarray:
        """Pixel probability map of a normalised image of any size (tiled, overlap-blended); the anomaly score
        map of a zero-label model."""
        if self.zero_label:
            return self.normality.score(norm_image)
        return self._segment(norm_image, tile=tile, overlap=overlap)

    def _segment(self, image: np.ndarray, tile: int | None = None, overlap: int | None = None,
                 transform=None) -> np.ndarray:
        """:meth:`segment`; ``transform`` (elementwise, e.g. the normalisation) is applied tile by tile."""
        import torch

        from artseg_core.imgproc.tiling import predict_tiled

        def fn(batch: np.ndarray) -> np.ndarray:
            xb = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
            with torch.inference_mode(), self._autocast():
                p = self.unet.probability(xb)
            return p.float().cpu().numpy()

        return predict_tiled(fn, image, tile=tile or self.profile.predict_tile,
                             overlap=self.profile.predict_overlap if overlap is None else overlap,
                             divisor=self.unet.divisor, transform=transform)

    def predict(self, image: np.ndarray, gate: bool = True, threshold: float | None = None,
                min_size: int | None = None, pixel_size: float | None = None, min_size_um: float | None = None,
                fill: str | None = None, fill_holes: bool = True, seed: int = 0, rescale: bool = False,
                second_opinion: bool | None = None) -> Result:
        """Find and mask artifacts in one 2-D image.

        Parameters
        ----------
        image : ndarray (H, W)
            Raw image of any numeric dtype and size; it is normalised here as the profile says (:meth:`normalize`).
        gate : bool
            True (default): the classifier decides. An image whose ``p_artifact`` is below the calibrated
            classifier threshold is clean: the U-Net is skipped and the mask is empty. Only flagged images are
            segmented. False: every image is segmented, and an image is flagged when the classifier flags it
            or its mask is non-empty. Either way a non-empty mask implies ``flagged``.

            Up to ArtSeg 0.2.0 the U-Net ran above the lower calibrated ``gate`` threshold, so unflagged images
            could carry a mask; that threshold is still stored in the model file but no longer used here.
        threshold : float, optional
            U-Net probability threshold; None = calibrated value.
        min_size : int, optional
            Minimum artifact area in pixels; None = calibrated value (unless ``min_size_um`` is given).
        pixel_size, min_size_um : float, optional
            Pixel size in um and a minimum artifact area in um^2 (converted to pixels).
        fill : {None, "median", "background"}
            Also return an image with artifact pixels filled (:func:`artseg_core.inpaint.fill_artifacts`).
        rescale : bool
            When the model and the image both have a pixel size and they differ, resample the image to the
            model's pixel size for the networks and map the probability map back to the image's pixels (the
            mask, objects, areas and QC scores are then those of the image as given). Without it, an image
            whose pixel size differs by more than 20 % from the model's is segmented as is, with a warning.
        second_opinion : bool, optional
            With ``gate``: an image the classifier leaves unflagged is flagged anyway, and segmented, when its
            object evidence scores above every held-out clean field's (:class:`~artseg_core.weak.evidence.
            SecondOpinion`; it catches artifact fields the classifier misses, at about 0.5 s per 512 x 512 field on
            one core). None = the profile's ``second_opinion`` setting. Needs a model of the evidence route whose file
            stores one (written since this option exists).
        """
        from artseg_core.imgproc.inpaint import fill_artifacts

        image = np.asarray(image)
        if image.ndim != 2:
            raise ValueError(f"predict expects a 2-D image, got shape {image.shape}")
        factor = self._scale_factor(pixel_size, rescale)
        if factor is not None:
            return self._predict_rescaled(image, factor, gate=gate, threshold=threshold, min_size=min_size,
                                          pixel_size=pixel_size, min_size_um=min_size_um, fill=fill,
                                          fill_holes=fill_holes, seed=seed, second_opinion=second_opinion)
        # Memory: the normalised float32 image (4 bytes/px) lives only while the classifier runs; the U-Net
        # normalises tile by tile with the same offset/scale (identical values to io.normalize).
        lo, scale = normalize_range(image, method=self.profile.normalization)
        norm = apply_normalization(image, lo, scale)
        ask_second = gate and self._use_second_opinion(second_opinion)
        if self.zero_label:
            return self._predict_zero_label(image, norm, threshold, min_size, pixel_size, min_size_um, fill,
                                            fill_holes, seed)
        p = self.classify(norm)
        flagged = p >= self.thresholds["classifier"]
        if ask_second and not flagged:
            flagged = self.second_opinion.flags(norm)
        del norm
        quality = quality_scores(image)
        quality.update(quality_flags(quality, self.quality_thresholds))
        run_unet = (not gate) or flagged
        thr = self.thresholds["unet"] if threshold is None else float(threshold)
        ms = self._min_size_px(min_size, min_size_um, pixel_size)
        if run_unet:
            prob = self._segment(image, transform=lambda tile: apply_normalization(tile, lo, scale))
            mask = clean_mask(prob, threshold=thr, min_size=ms, fill_holes=fill_holes)
        else:
            prob = None
            mask = np.zeros(image.shape, bool)
        flagged = bool(flagged) or bool(mask.any())  # one answer per image: a mask is never left unflagged
        labels = label_objects(mask)
        objects = object_table(labels, prob=prob, pixel_size=pixel_size)
        cleaned = fill_artifacts(image, mask, method=fill, seed=seed) if fill else None
        return Result(p_artifact=p, flagged=bool(flagged), segmented=bool(run_unet), prob=prob, mask=mask,
                      labels=labels, objects=objects, quality=quality, cleaned=cleaned)

    def _use_second_opinion(self, requested: bool | None) -> bool:
        """Whether :meth:`predict` asks the second opinion: ``requested``, or the profile's setting when None."""
        use = self.profile.second_opinion if requested is None else bool(requested)
        if use and self.second_opinion is None:
            raise ValueError(NO_SECOND_OPINION)
        return use

    def _min_size_px(self, min_size: int | None, min_size_um: float | None, pixel_size: float | None) -> int:
        """Minimum object area in pixels: from um^2 when ``min_size_um`` is given, else ``min_size`` or the
        calibrated value."""
        if min_size_um is not None:
            return min_size_pixels(min_size_um2=min_size_um, pixel_size=pixel_size)
        return int(self.thresholds["min_size"] if min_size is None else min_size)

    def _anomaly_p(self, score: np.ndarray, threshold: float | None = None, min_size: int | None = None) -> float:
        """Zero-label image score in [0, 1]: 0.5 x (peak anomaly of an object of min_size px) / threshold, so that
        0.5 (the classifier threshold of such a model) is where the mask stops being empty."""
        from artseg_core.weak.evidence import object_peak

        thr = self.thresholds["unet"] if threshold is None else float(threshold)
        ms = int(self.thresholds["min_size"] if min_size is None else min_size)
        return float(np.clip(0.5 * object_peak(score, ms) / max(thr, 1e-6), 0.0, 1.0))

    def _predict_zero_label(self, image, norm, threshold, min_size, pixel_size, min_size_um, fill, fill_holes,
                            seed) -> Result:
        from artseg_core.imgproc.inpaint import fill_artifacts

        thr = self.thresholds["unet"] if threshold is None else float(threshold)
        ms = self._min_size_px(min_size, min_size_um, pixel_size)
        prob = self.normality.score(norm)
        mask = clean_mask(prob, threshold=thr, min_size=ms, fill_holes=fill_holes)
        quality = quality_scores(image)
        quality.update(quality_flags(quality, self.quality_thresholds))
        labels = label_objects(mask)
        objects = object_table(labels, prob=np.clip(prob / max(2 * thr, 1e-6), 0, 1), pixel_size=pixel_size)
        cleaned = fill_artifacts(image, mask, method=fill, seed=seed) if fill else None
        return Result(p_artifact=self._anomaly_p(prob, thr, ms), flagged=bool(mask.any()), segmented=True,
                      prob=prob, mask=mask, labels=labels, objects=objects, quality=quality, cleaned=cleaned)

    def _scale_factor(self, pixel_size: float | None, rescale: bool) -> float | None:
        """image px / model px when the networks should see a resampled image; warns about a mismatch."""
        if pixel_size is None or self.pixel_size is None:
            return None
        px = _check_pixel_size(pixel_size, "pixel_size")
        ratio = px / self.pixel_size
        if abs(ratio - 1.0) <= 1e-9:
            return None
        if rescale:
            return ratio
        if abs(ratio - 1.0) > PIXEL_SIZE_TOLERANCE and px not in self._warned_sizes:
            self._warned_sizes.add(px)
            log.warning("image pixel size %.4g um differs from the model's %.4g um (trained at that size) by "
                        "%.0f %%: artifacts look %.2fx their trained size; use --rescale (predict(..., "
                        "rescale=True)) to resample to the model's pixel size", px, self.pixel_size,
                        100 * abs(ratio - 1.0), ratio)
        return None

    def _predict_rescaled(self, image: np.ndarray, factor: float, **kw) -> Result:
        """:meth:`predict` with the networks run on ``image`` resampled by ``factor`` (image px / model px)."""
        from scipy import ndimage as ndi

        from artseg_core.imgproc.inpaint import fill_artifacts

        shape = image.shape
        small = tuple(max(8, int(round(n * factor))) for n in shape)
        zoomed = ndi.zoom(image.astype(np.float32, copy=False), [a / b for a, b in zip(small, shape)], order=1,
                          grid_mode=True, mode="nearest")
        gate, fill, seed = kw.pop("gate"), kw.pop("fill"), kw.pop("seed")
        pixel_size, min_size_um = kw.pop("pixel_size"), kw.pop("min_size_um")
        r = self.predict(zoomed, gate=gate, threshold=kw["threshold"], min_size=0, fill=None, fill_holes=False,
                         second_opinion=kw.pop("second_opinion"))
        thr = self.thresholds["unet"] if kw["threshold"] is None else float(kw["threshold"])
        ms = self._min_size_px(kw["min_size"], min_size_um, pixel_size)
        quality = quality_scores(image)
        quality.update(quality_flags(quality, self.quality_thresholds))
        if r.prob is not None:
            prob = ndi.zoom(r.prob, [a / b for a, b in zip(shape, r.prob.shape)], order=1, grid_mode=True,
                            mode="nearest").astype(np.float32)
            mask = clean_mask(prob, threshold=thr, min_size=ms, fill_holes=kw["fill_holes"])
        else:
            prob, mask = None, np.zeros(shape, bool)
        # with the gate, the U-Net ran only on flagged images (by the classifier or the second opinion)
        flagged = r.p_artifact >= self.thresholds["classifier"] or (gate and r.segmented) or bool(mask.any())
        labels = label_objects(mask)
        objects = object_table(labels, prob=prob, pixel_size=pixel_size)
        cleaned = fill_artifacts(image, mask, method=fill, seed=seed) if fill else None
        return Result(p_artifact=r.p_artifact, flagged=flagged, segmented=r.segmented, prob=prob, mask=mask,
                      labels=labels, objects=objects, quality=quality, cleaned=cleaned)

    # ----------------------------------------------------------------- persistence
    def manifest(self) -> dict:
        import torch

        return {
            "artseg_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "profile": self.profile.to_dict(),
            "kind": "zero_label" if self.zero_label else "weak",
            "thresholds": self.thresholds,
            "quality_thresholds": self.quality_thresholds,
            "pixel_size_um": self.pixel_size,
            # the stored second opinion's threshold (object-evidence logit); None when the model has none
            "second_opinion_threshold": (round(float(self.second_opinion.threshold), 4)
                                         if self.second_opinion is not None else None),
            "summary": self.summary,
            "versions": {"artseg": __version__, "torch": torch.__version__, "numpy": np.__version__,
                         "python": platform.python_version()},
        }

    def save(self, path) -> Path:
        """Write the one model file (see :mod:`artseg_core.modelfile`)."""
        if self.zero_label:
            arrays = self.normality.to_arrays("normality")
        else:
            arrays = {**state_dict_to_arrays("classifier", self.classifier.state_dict()),
                      **state_dict_to_arrays("unet", self.unet.state_dict())}
            if self.second_opinion is not None:
                arrays.update(self.second_opinion.to_arrays(SECOND_OPINION_PREFIX))
        return save_model_file(path, self.manifest(), arrays)

    def __repr__(self) -> str:
        if self.zero_label:
            return f"ArtifactModel(zero-label, thresholds={self.thresholds}, device={self.device!r})"
        return (f"ArtifactModel(profile={self.profile.name!r}, arch={self.profile.arch!r}, "
                f"thresholds={self.thresholds}, device={self.device!r})")


def load_model(path, device: str = "auto", precision: str = "fp32") -> ArtifactModel:
    """Load a model file written by :meth:`ArtifactModel.save`.

    Raises
    ------
    ModelFileError
        Missing, truncated, corrupt, foreign or newer-format file, or weights that do not fit the configuration.
    """
    manifest, arrays = load_model_file(path)
    normality = opinion = None
    try:
        profile = Profile.from_dict(manifest["profile"])
        if manifest.get("kind") == "zero_label":
            from artseg_core.weak.evidence import Normality

            cls = unet = None
            normality = Normality.from_arrays("normality", arrays)
        else:
            cls, unet = ArtifactModel.build_networks(profile)
            cls.load_state_dict(arrays_to_state_dict("classifier", arrays))
            unet.load_state_dict(arrays_to_state_dict("unet", arrays))
            if has_second_opinion(arrays):
                from artseg_core.weak.evidence import SecondOpinion

                opinion = SecondOpinion.from_arrays(SECOND_OPINION_PREFIX, arrays)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ModelFileError(path, f"weights do not match the stored configuration ({str(e).splitlines()[0]})") \
            from None
    px = manifest.get("pixel_size_um")
    if px is not None and not (isinstance(px, (int, float)) and math.isfinite(px) and px > 0):
        raise ModelFileError(path, f"pixel_size_um must be a positive number of um/pixel, got {px!r}")
    return ArtifactModel(profile, cls, unet, thresholds=manifest.get("thresholds"),
                         quality_thresholds=manifest.get("quality_thresholds"), summary=manifest.get("summary"),
                         device=device, precision=precision, pixel_size=px, normality=normality,
                         second_opinion=opinion)


def has_second_opinion(arrays: dict) -> bool:
    """Whether a model file's arrays hold a :class:`~artseg_core.weak.evidence.SecondOpinion`."""
    return any(k.startswith(SECOND_OPINION_PREFIX + ".") for k in arrays)


def _check_pixel_size(value, what: str) -> float:
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{what} must be a positive number of um/pixel, got {value!r}")
    return v
