"""The classifier's own artifact-evidence map as saliency (an alternative to Score-CAM).

A ResNet whose head pools a map of per-position logits (``pool="topk"`` / ``"lse"``, :mod:`artseg_core.nets.resnet`)
already says where it found artifact evidence: ``d(h, w) = logit_artifact - logit_clean`` at every ``layer4``
position. Its sigmoid, resized bilinearly to the image, is a saliency map whose 0.5 level is the network's own
decision boundary (``d = 0``), so no threshold has to be guessed for it. This is the class activation map of Zhou
et al., "Learning deep features for discriminative localization", CVPR 2016, read at the pooled positions of a
multiple-instance head (Durand et al., "WILDCAT", CVPR 2017). One forward pass per image, against Score-CAM's one per
channel.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["LOGIT_THRESHOLD", "logit_saliency"]

#: Pseudo-mask threshold for :func:`logit_saliency`: sigmoid(d) >= 0.5, i.e. the network's evidence is positive.
LOGIT_THRESHOLD = 0.5


@torch.no_grad()
def logit_saliency(model: torch.nn.Module, x: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """sigmoid(artifact-minus-clean logit map) of ``x`` (1, C, S, S), resized bilinearly to ``size``: float32."""
    was_training = model.training
    model.eval()
    d = model.evidence_map(model.features(x))[:, None].float()
    model.train(was_training)
    up = F.interpolate(d, size=tuple(size), mode="bilinear", align_corners=False)[0, 0]
    return torch.sigmoid(up).cpu().numpy().astype(np.float32)
