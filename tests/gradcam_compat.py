"""Import pytorch-grad-cam (``grad-cam`` on PyPI) next to the CPU build of torch; tests and benchmarks only.

The torchvision wheel that pairs with torch 2.13.0 on PyPI is a CUDA build whose C++ operator library
does not load with the CPU torch used here. ``import torchvision`` then stops at module level, because
``torchvision._meta_registrations`` attaches fake kernels to ``torchvision::nms`` and
``torchvision::qnms`` whether or not the library loaded, and those operators were never declared.
pytorch-grad-cam imports torchvision, so it fails the same way.

The workaround: declare torchvision's operator *schemas* (signatures only, no kernels) with
``torch.library.Library("torchvision", "DEF")`` before torchvision is imported. torchvision then
imports and its models and transforms work; calling one of its compiled ops (nms, roi_align, ...)
would still fail, which Score-CAM never does. The schema strings below are written from the
operator declarations in torchvision's C++ sources (``torchvision/csrc/ops/*.cpp``); only the
operators that are not registered already are declared, so a working torchvision is left alone.

The engine (``artseg_core``) never imports torchvision; this module is for the comparison tests
and ``bench/scorecam.py`` only.
"""
from __future__ import annotations

import importlib
import warnings
from types import ModuleType

__all__ = ["TORCHVISION_SCHEMAS", "register_torchvision_schemas", "import_pytorch_grad_cam"]

# name -> schema, as declared by torchvision 0.28's TORCH_LIBRARY_FRAGMENT(torchvision, m) blocks.
TORCHVISION_SCHEMAS: dict[str, str] = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "roi_align": (
        "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
        "SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor"
    ),
    "_roi_align_backward": (
        "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, "
        "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width, "
        "int sampling_ratio, bool aligned) -> Tensor"
    ),
    "ps_roi_align": (
        "ps_roi_align(Tensor input, Tensor rois, float spatial_scale, int pooled_height, "
        "int pooled_width, int sampling_ratio) -> (Tensor, Tensor)"
    ),
    "_ps_roi_align_backward": (
        "_ps_roi_align_backward(Tensor grad, Tensor rois, Tensor channel_mapping, float spatial_scale, "
        "int pooled_height, int pooled_width, int sampling_ratio, int batch_size, int channels, "
        "int height, int width) -> Tensor"
    ),
    "roi_pool": (
        "roi_pool(Tensor input, Tensor rois, float spatial_scale, int pooled_height, "
        "int pooled_width) -> (Tensor, Tensor)"
    ),
    "_roi_pool_backward": (
        "_roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, "
        "int pooled_height, int pooled_width, int batch_size, int channels, int height, "
        "int width) -> Tensor"
    ),
    "ps_roi_pool": (
        "ps_roi_pool(Tensor input, Tensor rois, float spatial_scale, int pooled_height, "
        "int pooled_width) -> (Tensor, Tensor)"
    ),
    "_ps_roi_pool_backward": (
        "_ps_roi_pool_backward(Tensor grad, Tensor rois, Tensor channel_mapping, float spatial_scale, "
        "int pooled_height, int pooled_width, int batch_size, int channels, int height, "
        "int width) -> Tensor"
    ),
    "deform_conv2d": (
        "deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, "
        "int stride_h, int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w, "
        "int groups, int offset_groups, bool use_mask) -> Tensor"
    ),
    "_deform_conv2d_backward": (
        "_deform_conv2d_backward(Tensor grad, Tensor input, Tensor weight, Tensor offset, Tensor mask, "
        "Tensor bias, int stride_h, int stride_w, int pad_h, int pad_w, int dilation_h, "
        "int dilation_w, int groups, int offset_groups, bool use_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor)"
    ),
}

# Keeps the Library object alive: its declarations vanish when it is garbage-collected.
_LIBRARY = None


def _declared(torch, name: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
    except RuntimeError:
        return False
    return True


def register_torchvision_schemas() -> list[str]:
    """Declare the torchvision operator schemas that are missing; call before importing torchvision.

    Returns
    -------
    list of str
        Names of the operators declared by this call (empty when torchvision's own library
        already provides them, or when this ran before).
    """
    global _LIBRARY
    import torch

    missing = [name for name in TORCHVISION_SCHEMAS if not _declared(torch, name)]
    if not missing:
        return []
    if _LIBRARY is None:
        _LIBRARY = torch.library.Library("torchvision", "DEF")
    for name in missing:
        _LIBRARY.define(TORCHVISION_SCHEMAS[name])
    return missing


def import_pytorch_grad_cam() -> ModuleType:
    """Import ``pytorch_grad_cam`` after the schema workaround.

    Returns
    -------
    module
        The ``pytorch_grad_cam`` package (``ScoreCAM`` and ``utils.model_targets`` loaded).

    Raises
    ------
    ImportError
        When grad-cam is not installed or still cannot be imported; the message says why.
    """
    try:
        register_torchvision_schemas()
        with warnings.catch_warnings():  # torchvision's own torch.jit deprecation noise at import time
            warnings.simplefilter("ignore", DeprecationWarning)
            pkg = importlib.import_module("pytorch_grad_cam")
            importlib.import_module("pytorch_grad_cam.utils.model_targets")
    except Exception as exc:  # any failure here means "peer not usable", reported with its cause
        raise ImportError(f"pytorch-grad-cam (pip 'grad-cam==1.5.7') cannot be imported: "
                          f"{type(exc).__name__}: {exc}") from exc
    return pkg
