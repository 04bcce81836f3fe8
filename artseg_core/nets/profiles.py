"""Training/prediction profiles: named bundles of network sizes and training budgets.

``paper``  ResNet50 classifier and the paper's U-Net (64 filters, 5 levels x 3 convs) at full resolution
           (Ali et al., Sci Rep 2022). Accurate but slow on a CPU; meant for a GPU (``--device cuda``).
``fast``   ResNet18 at quarter width and a 16-filter, 4-level U-Net on 2x down-sampled input: the CPU profile.
           The classifier's head pools the top 2 % of its map of artifact logits (multiple-instance), not their
           average. Its pseudo-masks come from the clean fields (:mod:`artseg_core.weak.evidence`): candidate
           objects and pixels judged against what clean fields contain, with an ignored band below the threshold.
``scorecam`` ``fast``'s networks with the paper's average-pooling head and pseudo-masks: Score-CAM saliency times an
           edge map.
``tiny``   the smallest thing that learns the phantoms; for tests and smoke runs.
``mil``    ``fast`` with the multiple-instance route of issue 14: the classifier's logit map (pooled top 2 %, as in
           ``fast``) is the saliency (its own decision boundary as the threshold), and the U-Net ignores the
           uncertain band of the pseudo-masks. Same network sizes and budgets as ``fast``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace


@dataclass(frozen=True)
class Profile:
    name: str
    # classifier
    arch: str = "resnet18"
    cls_width: int = 64          # channels of the first ResNet stage (64 = standard)
    cls_layer4_stride: int = 2   # 1 = last block at 1/16 resolution: twice as fine Score-CAM maps
    cls_size: int = 256          # images are resized to cls_size x cls_size for the classifier
    cls_epochs: int = 60
    cls_batch: int = 16
    cls_lr: float = 0.002        # Adam, as in the paper
    cls_plateau: int = 10        # ReduceLROnPlateau(x0.1) patience in epochs
    cls_early_stop: int = 20     # stop after this many epochs without improvement
    cls_pool: str = "avg"        # image score: global average (paper) | topk | lse (MIL pooling of the logit map)
    cls_pool_param: float = 0.02  # topk: fraction of layer4 positions; lse: sharpness r
    cls_paste: float = 0.0       # share of clean training images drawn with synthetic artifacts, as artifact images
    cls_ema: float = 0.0         # > 0: per-step decay of a moving average of the weights, validated and kept
    cls_keep: str = "best"       # best: epoch of lowest validation loss (early stopping) | last: every epoch, final
    cls_schedule: str = "plateau"  # plateau: lr x0.1 after cls_plateau bad epochs, early stopping | cosine: all
    #   cls_epochs, lr annealed by a half cosine (training/classifier.py). Not the default: with 60 epochs (about
    #   the plateau route's cost) it fits its own training fields better (accuracy 0.77-0.85 -> 0.79-0.91, seeds
    #   0-2 of both bench plates, 1 thread), but test ROC AUC did not follow (phantom 0.90 -> 0.89, real
    #   backgrounds 0.80 -> 0.80); pixel IoU 0.389 -> 0.382 and 0.253 -> 0.238, clean fields left empty
    #   0.85 -> 0.92 and 0.86 -> 0.81, image F1 0.82 -> 0.83 and 0.72 -> 0.69
    # Score-CAM pseudo-masks
    cam_mode: str = "fast"       # exact | paper | fast
    cam_top_k: int = 32          # channels kept in fast mode
    edge_refine: bool = True
    cam_threshold: float | None = None   # pseudo-mask threshold without validation masks (None: refine's default)
    edge_dilation: int = 5
    cam_source: str = "scorecam"  # pseudo-masks from: scorecam | logit (MIL head's map) | evidence (pixel evidence)
    pseudo_ignore: float = 0.0   # >0: saliency in [ignore * threshold, threshold) is left out of the U-Net loss
    evidence_min_size: int = 64   # evidence threshold: no object this large (px) on most held-out clean fields
    evidence_clean_empty: float = 0.5  # ... on this share of them (pseudo-masks: recall matters, the U-Net and
    #                                      the classifier's flag keep clean fields clean)
    evidence_normal_ignore: float = 0.0  # >0: evidence-map pseudo-mask pixels whose clean-field normality score is
    #   below this are left out of the U-Net loss (they look like the clean fields' pixels). Off by default: at 0.25,
    #   seeds 0-2 of both bench plates (same classifiers, 1 thread, one computer) gave pixel IoU 0.329 -> 0.345
    #   (phantom) and 0.262 -> 0.272 (real backgrounds), clean fields left empty 0.83 -> 0.87 and 0.63 -> 0.63, but
    #   defocused patches on real backgrounds 0.22 -> 0.04 (a blurred patch looks normal pixel by pixel); the gains
    #   are within the seeds' spread, the loss is on a kind users care about
    zero_label_clean_empty: float = 0.95  # zero-label mode: the mask's threshold leaves this share of held-out
    #                                       clean fields without an object of evidence_min_size px
    # U-Net
    unet_width: int = 64
    unet_levels: int = 5
    unet_scale: int = 1          # input down-sampling factor inside the U-Net
    unet_tile: int = 512         # training crop side (full-resolution pixels)
    unet_steps: int = 3000
    unet_crops_per_image: int = 0  # more steps for large training sets: each image gives about this many crops
    unet_batch: int = 4
    unet_lr: float = 1e-3
    unet_threshold: float = 0.5  # U-Net probability threshold when no hand masks calibrate it (they choose it)
    hand_mask_fraction: float = 0.25  # share of U-Net crops drawn from hand-masked fields (own loss term)
    hand_mask_weight: float = 1.0     # weight of the hand-mask loss term against the pseudo-mask term
    unet_paste: float = 0.0      # share of clean-field crops given synthetic artifacts with exact masks (0 = none)
    pretrain_steps: int = 1500   # masked-region inpainting steps on unlabelled fields (``unlabelled`` / pretrain)
    # both trainings and prediction
    normalization: str = "percentile"  # intensity scaling of every image the networks see: percentile | quartile
    #                                   (imgproc.normalize); model files written before this setting: percentile
    train_fast_math: bool = False  # channels-last + bf16 autocast where bf16 is native (fp32 is the reference)
    # prediction
    second_opinion: bool = False  # predict: a field the classifier leaves unflagged is still flagged (and segmented)
    #   when its object evidence scores above every held-out clean field's (weak/evidence.SecondOpinion; evidence
    #   route only; predict(second_opinion=) overrides it per call). Off by default: it runs the filter bank (about
    #   0.5 s per 512 x 512 field, 1 thread) on every field the classifier leaves unflagged
    predict_tile: int = 1024
    predict_overlap: int = 128

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Profile":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def with_overrides(self, **kw) -> "Profile":
        unknown = set(kw) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(f"unknown profile setting(s): {', '.join(sorted(unknown))}")
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


PROFILES: dict[str, Profile] = {
    "paper": Profile(name="paper", arch="resnet50", cls_width=64, cls_size=512, cam_mode="exact",
                     unet_width=64, unet_levels=5, unet_scale=1, unet_tile=512, unet_steps=6000,
                     unet_crops_per_image=150, unet_batch=4,
                     predict_tile=512),  # 1024 tiles: 2.5 GB peak on a 1920x1920 field; 512: 1.0 GB, 22 % slower
    "fast": Profile(name="fast", arch="resnet18", cls_width=16, cls_layer4_stride=1, cam_threshold=0.2, cls_size=256,
                    cls_epochs=80, cls_batch=16, cam_mode="fast", cam_top_k=32, unet_width=16, unet_levels=4,
                    unet_scale=2, unet_tile=256, unet_steps=600, unet_crops_per_image=90, unet_batch=8, unet_lr=2e-3,
                    predict_tile=1024),
    "tiny": Profile(name="tiny", arch="resnet18", cls_width=8, cls_layer4_stride=1, cam_threshold=0.2, cls_size=128,
                    cls_epochs=40, cls_batch=16, cam_mode="fast", cam_top_k=16, unet_width=8, unet_levels=3,
                    unet_scale=2, unet_tile=128, unet_steps=400, unet_batch=8, unet_lr=3e-3, predict_tile=512,
                    pretrain_steps=100),
}
# today's default: ``fast``'s networks with pseudo-masks from the clean fields; ``scorecam`` keeps the paper's
# average-pooling head and Score-CAM pseudo-masks on the same network sizes (the default up to ArtSeg 0.2)
PROFILES["scorecam"] = PROFILES["fast"].with_overrides(name="scorecam")
# Its U-Net learns from pseudo-masks larger and blurrier than the artifacts; without hand masks its probabilities
# are cut at 0.7, not 0.5: over seeds 0-2 of both bench plates (bench/accuracy.py, 1 thread) pixel IoU rose on all
# six (phantom 0.305 -> 0.322, real backgrounds 0.208 -> 0.225, where the detector has 0.214) and no clean field
# gained a mask; the local IoU of clumps, debris and defocused patches fell (their masks shrink with the spill)
# The classifier pools the top 2 % of its artifact-logit map (multiple-instance; Durand et al., CVPR 2017): with the
# average, a small artifact is diluted by the clean rest of the field (accuracy on its own training fields, real
# backgrounds: 0.62-0.70 with the average, 0.62-0.83 with top 2 %). Seeds 0-2 of both bench plates (1 thread):
# real backgrounds pixel IoU 0.225 -> 0.284 (every kind higher), image F1 0.67 -> 0.75, clean fields left empty
# 0.65 -> 0.67; phantom plate 0.322 -> 0.326, F1 0.80 -> 0.79, clean fields left empty 0.88 -> 0.83
PROFILES["fast"] = PROFILES["fast"].with_overrides(cam_source="evidence", edge_refine=False, pseudo_ignore=0.8,
                                                   unet_threshold=0.7, cls_pool="topk", cls_pool_param=0.02)
# Images are scaled by their quartiles (Tukey's fences), not by their 1st and 99.8th percentiles, which an artifact
# moves (imgproc.normalize). Against the percentile scaling, whole route trained again (bench/accuracy.py, 1 thread):
# pixel IoU 0.329 -> 0.369 on phantom plates (seeds 0-2) and 0.252 -> 0.257 on real backgrounds (seeds 0-3, two up,
# two down); clean fields left empty 0.83 -> 0.87 and 0.63 -> 0.75; image F1 0.77 -> 0.82 and 0.71 -> 0.70.
# Under this scaling the U-Net's probabilities are cut at 0.5 again, not 0.7 (the 0.7 above was measured under the
# percentile scaling): on the same trained models of seven bench plates (seeds 0-2 phantom, 0-3 real backgrounds),
# pixel IoU 0.352 -> 0.359 and 0.251 -> 0.256, six plates of seven higher, clean fields and image F1 unchanged;
# defocused patches on real backgrounds 0.06 -> 0.12, fibres 0.09 -> 0.12
PROFILES["fast"] = PROFILES["fast"].with_overrides(normalization="quartile", unet_threshold=0.5)
PROFILES["mil"] = PROFILES["fast"].with_overrides(name="mil", cam_source="logit",
                                                  edge_refine=False, pseudo_ignore=0.5, unet_threshold=0.5)


def unet_training_steps(profile: Profile, n_train: int) -> int:
    """U-Net training steps for ``n_train`` training images.

    ``unet_steps``, or more when the training set is large enough that each image would otherwise give fewer than
    ``unet_crops_per_image`` crops (``unet_batch`` crops per step). A fixed budget under-trains the U-Net on large
    plates: on 800 phantom fields (640 for training) 600 steps gave a strongly supervised ``fast`` U-Net a test
    IoU of 0.28 and 2400 steps 0.58 (``bench/accuracy.py --train-fields 800``). The weakly supervised U-Net is as
    short of steps: on 200 fields (160 for training) the default route's test IoU was 0.20 (phantom) and 0.19
    (real backgrounds) with 600 steps, 0.32 and 0.23 with 1800 (``--unet-steps 1800``); ``fast`` therefore asks
    for 90 crops per image.
    """
    if n_train < 0:
        raise ValueError(f"n_train must be >= 0, got {n_train}")
    per_image = -(-profile.unet_crops_per_image * n_train // max(profile.unet_batch, 1))
    return int(max(profile.unet_steps, per_image))


def get_profile(name_or_profile, **overrides) -> Profile:
    """Return the named profile (``paper``, ``fast``, ``scorecam``, ``tiny``, ``mil``) with optional overrides."""
    if isinstance(name_or_profile, Profile):
        p = name_or_profile
    else:
        try:
            p = PROFILES[str(name_or_profile)]
        except KeyError:
            raise ValueError(f"unknown profile {name_or_profile!r}; choose one of {', '.join(PROFILES)}") from None
    return p.with_overrides(**overrides) if overrides else p
