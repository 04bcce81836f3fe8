"""Score-CAM saliency maps for a CNN classifier, in three variants and memory bounded.

Score-CAM (Wang et al., "Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural
Networks", CVPR Workshops 2020) weights each activation map ``A_k`` of a convolutional layer by the
classifier's score for the input masked with that map (up-sampled to the input size and min-max
normalised to [0, 1]). ArtSeg (Ali et al., "ArtSeg - Artifact segmentation and removal in brightfield
cell microscopy images without manual pixel-level annotations", Sci Rep 12:11404, 2022,
doi:10.1038/s41598-022-14703-y) turns these maps into pseudo-masks for the U-Net.

Modes
-----
``"exact"``
    The same numbers as pytorch-grad-cam's ``ScoreCAM`` (``grad-cam`` 1.5.7) with a
    ``ClassifierOutputTarget``: channel masks up-sampled bilinearly with aligned corners, per-channel
    ``(u - min) / (max - min + 1e-8)``, channel score = target *logit* of the masked input, channel
    weights = softmax of the scores over channels, ``relu(sum_k w_k A_k)``, min-max scaled with a
    ``1e-7`` guard, resized bilinearly (half-pixel centres, as OpenCV's ``INTER_LINEAR``) and min-max
    scaled again. It is faster because every masked input is scored once on a BatchNorm-folded,
    channels-last copy of the model in ``torch.inference_mode``, and all channels whose activation map
    is identically zero share one forward pass of the all-zero input (their masks are all zero).
``"paper"``
    Wang et al.'s weighting, as in their reference code (github.com/haofanwang/Score-CAM): channel
    weight = class *probability* (softmax over the classes) of the masked input; masks up-sampled with
    half-pixel centres and min-max normalised; channels with a constant activation map are skipped
    (weight 0); ``relu`` of the up-sampled weighted sum, min-max normalised.
``"fast"``
    Only ``top_k`` channels are scored, with bf16 autocast where the hardware has native bf16. Half of
    them are the channels with the largest activation variance; a ridge-regression surrogate of the score
    as a function of the channel's normalised (pooled) activation map, fitted to those, picks the other
    half (the unscored channels it ranks highest, which would dominate the softmax) and, refitted, fills
    in the scores of all channels left unscored. Otherwise as ``"exact"``. Much faster; pseudo-masks
    close to the exact ones (IoU >= 0.9 in ``bench/scorecam.py`` and the tests).

In every mode the masked inputs are built and scored ``chunk_size`` at a time, so memory does not grow
with the number of channels.
"""
from __future__ import annotations

import copy
import weakref
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from artseg_core.nets.accel import fold_batchnorm

__all__ = ["MODES", "DEFAULT_TOP_K", "score_cam", "cam_layer", "bf16_available"]

MODES = ("exact", "paper", "fast")
#: Channels scored in ``"fast"`` mode when ``top_k`` is None (1/16 of ResNet18's 512 at width 64).
DEFAULT_TOP_K = 32

_MASK_EPS = 1e-8   # guard in the per-channel mask normalisation (pytorch-grad-cam's value)
# On CPUs a forward pass over about half a megapixel of masked inputs is fastest (measured for ResNet18:
# 8 inputs of 224^2 or 1-2 of 512^2 per pass beat 32 by 10-20 %; larger batches fall out of the caches).
_CPU_CHUNK_PIXELS = 1 << 19
_SCALE_EPS = 1e-7  # guard in the final min-max scaling (pytorch-grad-cam's value)


def cam_layer(model: nn.Module) -> nn.Module:
    """The default Score-CAM target layer of ``model``.

    Parameters
    ----------
    model : torch.nn.Module
        A classifier; ResNets (ours or torchvision's) expose ``layer4``.

    Returns
    -------
    torch.nn.Module
        ``model.layer4`` when present, else the last ``nn.Conv2d`` in ``model.modules()``.

    Raises
    ------
    ValueError
        When the model has neither.
    """
    layer = getattr(model, "layer4", None)
    if isinstance(layer, nn.Module):
        return layer
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no 'layer4' and no Conv2d layer to use as the Score-CAM layer")
    return convs[-1]


def bf16_available(device: str | torch.device = "cpu") -> bool:
    """Whether bf16 autocast is native (fast) on ``device``; see :func:`artseg_core.nets.accel.bf16_supported`."""
    from artseg_core.nets.accel import bf16_supported

    return bf16_supported(device)


# ---------------------------------------------------------------------------------------------------------------
# the scoring copy of the model: BatchNorm folded into the convolutions, channels-last weights

_SCORING_CACHE: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _fingerprint(model: nn.Module) -> tuple:
    """Identity of the model's current weights: storage, in-place version and a cheap checksum per tensor."""
    with torch.no_grad():
        return tuple((n, t.data_ptr(), t._version, tuple(t.shape), float(t.detach().sum(dtype=torch.float64)))
                     for n, t in model.state_dict(keep_vars=True).items() if t.is_floating_point())


def _scoring_model(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` for repeated inference (cached while the weights are unchanged).

    Convolution + BatchNorm pairs are folded (:func:`artseg_core.nets.accel.fold_batchnorm`, computed in
    float64; logits equal to about 1e-6); the copy is in channels-last memory format, which oneDNN runs faster
    on CPUs. The caller's model is never modified.
    """
    fp = _fingerprint(model)
    hit = _SCORING_CACHE.get(model)
    if hit is not None and hit[0] == fp:
        return hit[1]
    net = copy.deepcopy(model).eval()
    fold_batchnorm(net)
    net = net.to(memory_format=torch.channels_last).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    _SCORING_CACHE[model] = (fp, net)
    return net


# ---------------------------------------------------------------------------------------------------------------
# helpers


def _as_input(x) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor or numpy array of shape (N, C, H, W), got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"x must have shape (N, C, H, W), got {tuple(x.shape)}")
    if 0 in x.shape:
        raise ValueError(f"x must not be empty, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a float tensor (already normalised), got {x.dtype}")
    x = x.detach().to(torch.float32)
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or infinite values")
    return x


def _targets(target, n: int, num_classes: int) -> list[int]:
    if isinstance(target, (int, np.integer)):
        tg = [int(target)] * n
    else:
        tg = [int(t) for t in target]
        if len(tg) != n:
            raise ValueError(f"target has {len(tg)} entries for {n} images")
    bad = [t for t in tg if not 0 <= t < num_classes]
    if bad:
        raise ValueError(f"target class {bad[0]} out of range for a model with {num_classes} outputs")
    return tg


def _layer_activations(model: nn.Module, x: torch.Tensor, layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """One ordinary forward pass of ``model`` on ``x``: (activations of ``layer``, logits)."""
    store: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        if not isinstance(output, torch.Tensor):
            raise ValueError(f"target layer {type(layer).__name__} returns {type(output).__name__}, not a tensor")
        store.append(output.detach())

    handle = layer.register_forward_hook(hook)
    try:
        with torch.inference_mode():
            logits = model(x)
    finally:
        handle.remove()
    if not store:
        raise ValueError(f"the target layer {type(layer).__name__} is not used in {type(model).__name__}.forward")
    acts = store[-1]
    if acts.ndim != 4 or acts.shape[0] != x.shape[0]:
        raise ValueError(f"target layer output must have shape (N, K, h, w), got {tuple(acts.shape)}")
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise ValueError(f"model output must be logits of shape (N, classes), got "
                         f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}")
    return acts.float().clone(), logits.float().clone()


def _channel_masks(acts: torch.Tensor, size: tuple[int, int], paper: bool = False) -> torch.Tensor:
    """Activation maps (k, h, w) -> masks (k, H, W): bilinear up-sampling, per-channel min-max.

    pytorch-grad-cam's way (``paper=False``): aligned corners and ``(u - min) / (max - min + 1e-8)``.
    Wang et al.'s reference code (``paper=True``): half-pixel centres and ``(u - min) / (max - min)``
    (only called for channels that are not constant).
    """
    up = F.interpolate(acts[:, None], size=size, mode="bilinear", align_corners=not paper)[:, 0]
    flat = up.reshape(up.shape[0], -1)
    lo = flat.min(dim=1).values[:, None, None]
    hi = flat.max(dim=1).values[:, None, None]
    if paper:
        return (up - lo) / (hi - lo).clamp_min(torch.finfo(up.dtype).tiny)
    return (up - lo) / (hi - lo + _MASK_EPS)


def _score_masked(net: nn.Module, image: torch.Tensor, acts: torch.Tensor, channels: Sequence[int],
                  target: int, chunk_size: int, probability: bool, bf16: bool, zero_input: bool = False,
                  on_batch=None) -> torch.Tensor:
    """Scores of ``image`` (C, H, W) masked by each listed channel of ``acts`` (K, h, w).

    Masked inputs are built ``chunk_size`` at a time. With ``zero_input`` one all-zero input is scored
    too and its score is appended last. Returns float32 scores (target logit, or probability).
    """
    size = tuple(image.shape[-2:])
    jobs: list[int] = list(channels) + ([-1] if zero_input else [])
    out = []
    dev_type = image.device.type
    for start in range(0, len(jobs), chunk_size):
        part = jobs[start:start + chunk_size]
        real = [c for c in part if c >= 0]
        pieces = []
        if real:
            masks = _channel_masks(acts[real], size, paper=probability)
            pieces.append(image[None] * masks[:, None])
        if len(real) < len(part):
            pieces.append(torch.zeros((1,) + tuple(image.shape), dtype=image.dtype, device=image.device))
        batch = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
        batch = batch.contiguous(memory_format=torch.channels_last)
        if on_batch is not None:
            on_batch(batch)
        if bf16:
            with torch.autocast(device_type=dev_type, dtype=torch.bfloat16):
                logits = net(batch)
        else:
            logits = net(batch)
        logits = logits.float()
        score = torch.softmax(logits, dim=1)[:, target] if probability else logits[:, target]
        out.append(score)
        del batch, pieces
    return torch.cat(out) if out else torch.zeros(0)


def _minmax_scale(cam: torch.Tensor) -> torch.Tensor:
    """Per-image ``(c - min) / (max(c - min) + 1e-7)`` of (N, H, W), in float32."""
    flat = cam.reshape(cam.shape[0], -1)
    shifted = flat - flat.min(dim=1, keepdim=True).values
    scaled = shifted / (shifted.max(dim=1, keepdim=True).values + _SCALE_EPS)
    return scaled.reshape(cam.shape)


def _finish(cam_low: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """relu -> min-max -> bilinear resize (half-pixel centres) -> min-max, as pytorch-grad-cam does."""
    cam = _minmax_scale(torch.relu(cam_low.float()))
    cam = F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    cam = _minmax_scale(torch.relu(cam))
    return cam.cpu().numpy().astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------------------------------
# public entry point


def score_cam(model: nn.Module, x, target_layer: nn.Module | None = None, target: int | Sequence[int] = 1,
              mode: str = "exact", top_k: int | None = None, chunk_size: int = 32,
              bf16: bool | str = "auto", _on_batch=None) -> np.ndarray:
    """Score-CAM saliency maps of a batch of images.

    Parameters
    ----------
    model : torch.nn.Module
        Classifier returning logits (N, classes). Used in eval mode; its train/eval state is restored.
    x : torch.Tensor or numpy.ndarray
        Float input (N, C, H, W), already normalised as the model expects; on the model's device.
    target_layer : torch.nn.Module, optional
        Convolutional layer whose activations are weighted; default :func:`cam_layer` (``model.layer4``).
    target : int or sequence of int
        Class explained (1 = "artifact"), one for all images or one per image.
    mode : {"exact", "paper", "fast"}
        See the module docstring.
    top_k : int, optional
        Channels scored in ``"fast"`` mode (default :data:`DEFAULT_TOP_K`); ignored otherwise.
    chunk_size : int
        The most masked inputs scored per forward pass; bounds the memory used. On a CPU fewer are used
        for large images (about half a megapixel per pass, which runs fastest).
    bf16 : {"auto", True, False}
        bf16 autocast for the masked forward passes. ``"auto"``: on in ``"fast"`` mode where the hardware
        has native bf16 (:func:`bf16_available`), off otherwise. ``True`` is refused in ``"exact"`` mode,
        whose point is float32 equality with pytorch-grad-cam.
    _on_batch : callable, optional
        Called with every masked batch before it is scored (used by tests to check the memory bound).

    Returns
    -------
    numpy.ndarray
        float32 (N, H, W) maps in [0, 1].

    Raises
    ------
    ValueError
        Bad mode, shape, target, ``top_k`` or ``chunk_size``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    chunk_size = int(chunk_size)
    if bf16 not in ("auto", True, False):
        raise ValueError(f"bf16 must be 'auto', True or False, got {bf16!r}")
    if mode == "exact" and bf16 is True:
        raise ValueError("bf16=True is not allowed in 'exact' mode (float32 equality with pytorch-grad-cam)")
    if mode == "fast":
        top_k = DEFAULT_TOP_K if top_k is None else int(top_k)
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
    layer = cam_layer(model) if target_layer is None else target_layer

    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    x = _as_input(x).to(device)
    n, size = x.shape[0], (int(x.shape[-2]), int(x.shape[-1]))
    if device.type == "cpu":
        chunk_size = max(1, min(chunk_size, _CPU_CHUNK_PIXELS // (size[0] * size[1])))
    use_bf16 = (mode == "fast" and bf16_available(device)) if bf16 == "auto" else bool(bf16)

    modes_before = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        acts, logits = _layer_activations(model, x, layer)
        targets = _targets(target, n, logits.shape[1])
        net = _scoring_model(model)
        with torch.inference_mode():
            cams = []
            for i in range(n):
                cams.append(_image_cam(net, x[i], acts[i], targets[i], mode, top_k, chunk_size, use_bf16,
                                       _on_batch))
            cam_low = torch.stack(cams)
    finally:
        for m, flag in modes_before:
            m.training = flag

    if mode == "paper":
        cam = F.interpolate(cam_low[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        return _minmax_scale(torch.relu(cam)).cpu().numpy().astype(np.float32, copy=False)
    return _finish(cam_low, size)


def _image_cam(net: nn.Module, image: torch.Tensor, acts: torch.Tensor, target: int, mode: str,
               top_k: int | None, chunk_size: int, bf16: bool, on_batch) -> torch.Tensor:
    """Low-resolution weighted sum ``sum_k w_k A_k`` (h, w) for one image (before relu and resizing)."""
    k = acts.shape[0]
    flat = acts.reshape(k, -1)
    lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
    constant = lo == hi
    acts64 = acts.double()

    if mode == "paper":
        keep = torch.nonzero(~constant).flatten().tolist()
        weights = torch.zeros(k, dtype=torch.float64, device=acts.device)
        if keep:
            weights[keep] = _score_masked(net, image, acts, keep, target, chunk_size, True, bf16,
                                          on_batch=on_batch).double()
        return torch.einsum("k,khw->hw", weights, acts64).float()

    # exact and fast: softmax over channel logits. A channel whose map is identically zero has an
    # all-zero mask, so every such channel scores the all-zero input, computed once.
    zero = constant & (hi == 0)
    if mode == "fast":
        scores = _fast_scores(net, image, acts, target, top_k, chunk_size, bf16, constant, zero, on_batch)
    else:
        todo = torch.nonzero(~zero).flatten()
        todo_list = todo.tolist()
        need_zero = bool(zero.any())
        part = _score_masked(net, image, acts, todo_list, target, chunk_size, False, bf16,
                             zero_input=need_zero, on_batch=on_batch)
        scores = torch.empty(k, dtype=torch.float32, device=acts.device)
        if need_zero:
            scores[zero] = part[-1]
        scores[todo] = part[:len(todo_list)]
    weights = torch.softmax(scores.double(), dim=0)
    return torch.einsum("k,khw->hw", weights, acts64).float()


_SURROGATE_GRID = 8     # normalised maps are average-pooled to at most 8 x 8 surrogate features
_SURROGATE_RIDGE = 0.1  # ridge penalty of the surrogate fit (features are in [0, 1])


def _surrogate(features: torch.Tensor, scored: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Ridge fit ``score ~ c + beta . features`` on the scored channels, predicted for all channels.

    Predictions are clipped to the range of the scores seen, so that an extrapolation cannot dominate
    the softmax.
    """
    xs = features[scored]
    mu_x, mu_y = xs.mean(dim=0), values.mean()
    xc = xs - mu_x
    gram = xc.T @ xc + _SURROGATE_RIDGE * torch.eye(xs.shape[1], dtype=xs.dtype, device=xs.device)
    beta = torch.linalg.solve(gram, xc.T @ (values - mu_y))
    pred = (features - mu_x) @ beta + mu_y
    return pred.clamp(float(values.min()), float(values.max()))


def _fast_scores(net, image, acts, target, top_k, chunk_size, bf16, constant, zero, on_batch) -> torch.Tensor:
    """Approximate channel scores from ``top_k`` forward passes.

    Half of the budget goes to the channels with the largest activation variance (they carry most of
    the map's structure). A linear surrogate of the score as a function of the channel's normalised,
    pooled activation map (the mask is its up-sampled version) is fitted to those, the other half of
    the budget goes to the unscored channels the surrogate ranks highest (they would dominate the
    softmax), and the surrogate, refitted on all scored channels, fills in the rest. All-zero channels
    add nothing to the weighted sum and are left out of the softmax.
    """
    k = acts.shape[0]
    flat = acts.double().reshape(k, -1)
    lo = flat.min(dim=1, keepdim=True).values
    rng = flat.max(dim=1, keepdim=True).values - lo
    norm = torch.where(rng > 0, (flat - lo) / rng.clamp_min(1e-30), torch.zeros_like(flat))
    h, w = acts.shape[-2:]
    if h > _SURROGATE_GRID or w > _SURROGATE_GRID:
        grid = (min(h, _SURROGATE_GRID), min(w, _SURROGATE_GRID))
        norm = F.adaptive_avg_pool2d(norm.reshape(k, 1, h, w), grid).reshape(k, -1)
    var = flat.var(dim=1)
    var[constant] = -1.0
    live = torch.nonzero(~zero).flatten()
    budget = min(top_k, len(live))
    scores = torch.full((k,), float("-inf"), dtype=torch.float64, device=acts.device)
    if budget == 0:
        return scores.clamp_min(0.0)  # nothing lives: an all-zero map whatever the weights
    first = live[torch.argsort(var[live], descending=True, stable=True)[:max(1, (budget + 1) // 2)]]
    scored = torch.zeros(k, dtype=torch.bool, device=acts.device)
    scores[first] = _score_masked(net, image, acts, first.tolist(), target, chunk_size, False, bf16,
                                  on_batch=on_batch).double()
    scored[first] = True
    rest = budget - len(first)
    if rest > 0:
        pred = _surrogate(norm, scored, scores[scored])
        pred[scored | zero] = float("-inf")
        second = torch.argsort(pred, descending=True, stable=True)[:rest]
        scores[second] = _score_masked(net, image, acts, second.tolist(), target, chunk_size, False, bf16,
                                       on_batch=on_batch).double()
        scored[second] = True
    todo = ~scored & ~zero
    if todo.any():
        scores[todo] = _surrogate(norm, scored, scores[scored])[todo]
    return scores
