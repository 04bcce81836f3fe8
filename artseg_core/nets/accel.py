"""CPU/GPU capability helpers for fast inference: bf16 support, autocast, thread count.

bf16 only pays off on hardware with native bf16 arithmetic: on x86 CPUs the AMX-BF16 or
AVX512-BF16 instructions (oneDNN uses them for convolutions and matmuls), on CUDA GPUs
compute capability >= 8.0. Elsewhere bf16 is emulated and slower than fp32, so
:func:`bf16_supported` is the switch the engine uses to enable it by default.
"""
from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

import torch
from torch import nn

from artseg_core.nets.cpus import available_cpus

__all__ = ["cpu_flags", "bf16_supported", "autocast_context", "set_threads", "available_cpus",
           "TrainingPrecision", "training_precision",
           "FusedConvReLU2d", "fuse_conv_relu", "fold_batchnorm", "prepare_for_inference"]

_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset:
    """CPU feature flags from ``/proc/cpuinfo`` (empty set where unavailable, e.g. macOS/Windows)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def bf16_supported(device: str | torch.device = "cpu") -> bool:
    """Whether bf16 arithmetic is native (fast) on ``device``.

    Parameters
    ----------
    device : str or torch.device
        ``"cpu"`` or a CUDA device.

    Returns
    -------
    bool
        CUDA: ``torch.cuda.is_bf16_supported()``. CPU: oneDNN available and the CPU has
        AMX-BF16 or AVX512-BF16 (``/proc/cpuinfo`` flags, or torch's own CPU capability
        report naming AMX / AVX512-BF16 where ``/proc/cpuinfo`` is absent).
        ``ARTSEG_BF16=0`` / ``=1`` in the environment forces the answer.
    """
    env = os.environ.get("ARTSEG_BF16")
    if env is not None and env.strip() in ("0", "1"):
        return env.strip() == "1"
    dev = torch.device(device)
    if dev.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if dev.type != "cpu":
        return False
    if not torch.backends.mkldnn.is_available():
        return False
    flags = cpu_flags()
    if flags:
        return any(f in flags for f in _BF16_FLAGS)
    try:
        cap = str(torch.backends.cpu.get_cpu_capability()).upper()
    except Exception:  # pragma: no cover - very old torch
        return False
    return "AMX" in cap or "BF16" in cap


def autocast_context(device: str | torch.device = "cpu", enabled: bool | None = None):
    """A bf16 ``torch.autocast`` context for ``device``, or a no-op context.

    Parameters
    ----------
    device : str or torch.device
    enabled : bool or None
        None = use bf16 where :func:`bf16_supported`; False = never; True = always.

    Returns
    -------
    context manager
    """
    dev = torch.device(device)
    use = bf16_supported(dev) if enabled is None else bool(enabled)
    if not use:
        return contextlib.nullcontext()
    return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)


class TrainingPrecision:
    """How a training loop runs its forward pass: plain fp32 (the reference), or channels-last with bf16 autocast.

    Use :func:`training_precision` to build one; ``input(x)`` puts a batch in the model's memory format,
    ``autocast()`` wraps the forward pass, ``restore()`` puts the model back in the standard layout after training.
    Losses should be computed on ``logits.float()``; the optimiser keeps fp32 master weights either way.
    """

    def __init__(self, model: nn.Module, channels_last: bool, bf16: bool, device: torch.device):
        self.model, self.channels_last, self.bf16, self.device = model, channels_last, bf16, device
        if channels_last:
            model.to(memory_format=torch.channels_last)

    def input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def autocast(self):
        return autocast_context(self.device, enabled=self.bf16)

    def restore(self) -> None:
        if self.channels_last:
            self.model.to(memory_format=torch.contiguous_format)


def training_precision(model: nn.Module, device="cpu", fast_math: bool = False) -> TrainingPrecision:
    """Fast training maths when asked for and where bf16 is native (:func:`bf16_supported`): channels-last with
    bf16 autocast; otherwise fp32 NCHW, the reference path.

    Channels-last alone is not used for training: without native bf16 it gains little, and on AVX2-only CPUs the
    CPU build of torch 2.13 aborts in the backward pass of a channels-last ResNet ("double free or corruption").
    """
    dev = torch.device(device)
    fast = bool(fast_math) and bf16_supported(dev)
    return TrainingPrecision(model, fast, fast, dev)


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op thread count.

    Parameters
    ----------
    n : int or None
        Threads; None = ``ARTSEG_THREADS`` (or else ``OMP_NUM_THREADS``) from the environment, else the
        number of available CPUs (:func:`available_cpus`).

    Returns
    -------
    int
        The thread count now in effect.
    """
    if n is None:
        env = os.environ.get("ARTSEG_THREADS", "").strip() or os.environ.get("OMP_NUM_THREADS", "").strip()
        n = int(env) if env.isdigit() and int(env) > 0 else available_cpus()
    if int(n) < 1:
        raise ValueError(f"thread count must be >= 1, got {n}")
    torch.set_num_threads(int(n))
    return torch.get_num_threads()


def _pointwise_conv_op():
    try:
        return torch.ops.mkldnn._convolution_pointwise.default
    except (AttributeError, RuntimeError):  # torch built without oneDNN, or op renamed
        return None


class FusedConvReLU2d(nn.Conv2d):
    """``Conv2d`` followed by ReLU as one oneDNN primitive (ReLU as a post-op) for inference.

    Same parameters and state_dict keys as the ``Conv2d`` it replaces. Uses
    ``torch.ops.mkldnn._convolution_pointwise`` (the op torch's own inductor emits for
    conv+ReLU on CPU) for CPU tensors when no gradient is needed; otherwise, and where the
    op is missing, runs ``relu(conv2d(x))``. Under CPU autocast it computes in the autocast
    dtype, as ``Conv2d`` would.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        op = _pointwise_conv_op()
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        if op is None or needs_grad or x.device.type != "cpu" or self.padding_mode != "zeros" \
                or isinstance(self.padding, str):
            return torch.relu(super().forward(x))
        w, b = self.weight, self.bias
        if torch.is_autocast_enabled("cpu"):
            dt = torch.get_autocast_dtype("cpu")
            x, w = x.to(dt), w.to(dt)
            b = None if b is None else b.to(dt)
        elif x.dtype != w.dtype:
            raise TypeError(f"input dtype {x.dtype} does not match weight dtype {w.dtype}")
        return op(x, w, b, list(self.padding), list(self.stride), list(self.dilation), self.groups, "relu", [], "")


def fuse_conv_relu(model: nn.Module) -> nn.Module:
    """Replace every ``Conv2d`` directly followed by ``ReLU`` inside an ``nn.Sequential``.

    The conv becomes a :class:`FusedConvReLU2d` sharing the same parameters and the ReLU an
    ``nn.Identity``, so the state_dict keys are unchanged. Modifies ``model`` in place and
    returns it. Meant for inference copies (training still works, through the unfused path).
    """
    for seq in list(model.modules()):
        if not isinstance(seq, nn.Sequential):
            continue
        mods = list(seq)
        for i in range(len(mods) - 1):
            conv, act = mods[i], mods[i + 1]
            if type(conv) is nn.Conv2d and isinstance(act, nn.ReLU):
                fused = FusedConvReLU2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                                        conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                                        conv.padding_mode, device="meta")
                fused.weight = conv.weight
                fused.bias = conv.bias
                seq[i] = fused
                seq[i + 1] = nn.Identity()
    return model


def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Give ``conv`` the scale and shift of the eval-mode ``bn`` after it (computed in float64)."""
    with torch.no_grad():
        mean, var = bn.running_mean.double(), bn.running_var.double()
        scale = 1.0 / torch.sqrt(var + bn.eps)
        if bn.affine:
            scale = scale * bn.weight.double()
        beta = bn.bias.double() if bn.affine else torch.zeros_like(mean)
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(mean)
        new_bias = (beta + (bias - mean) * scale).to(conv.weight.dtype)
        conv.weight.copy_((conv.weight.double() * scale.reshape(-1, 1, 1, 1)).to(conv.weight.dtype))
        if conv.bias is None:
            conv.bias = nn.Parameter(new_bias, requires_grad=conv.weight.requires_grad)
        else:
            conv.bias.copy_(new_bias)


def _foldable_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv, bn) module names where a BatchNorm2d directly and only follows a Conv2d, found by tracing ``model``.

    A pair qualifies when each module is called once and the convolution's output feeds nothing but the
    BatchNorm (a skip that also reads the convolution's output keeps its pair unfolded). Models torch.fx cannot
    trace give no pairs.
    """
    import torch.fx

    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # not traceable: fold nothing rather than guess
        return []
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        bn = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(bn, nn.BatchNorm2d) or bn.running_mean is None or calls[node.target] != 1:
            continue
        prev = node.args[0] if node.args else None
        if not isinstance(prev, torch.fx.Node) or prev.op != "call_module" or len(prev.users) != 1:
            continue
        if type(modules.get(prev.target)) in (nn.Conv2d, FusedConvReLU2d) and calls[prev.target] == 1:
            pairs.append((prev.target, node.target))
    return pairs


def fold_batchnorm(model: nn.Module) -> int:
    """Fold eval-mode BatchNorm2d layers into the convolution before them, in place.

    The one BatchNorm folding of the project (inference copies for prediction and for Score-CAM). Pairs are
    found by tracing the model with torch.fx (:func:`_foldable_pairs`); each folded BN becomes ``nn.Identity``
    and the convolution gets its scale and shift (computed in float64; logits equal to about 1e-6). Only for
    inference copies: the state_dict changes.

    Returns
    -------
    int
        Number of BatchNorm layers folded.

    Raises
    ------
    ValueError
        If the model is in training mode (batch statistics cannot be folded).
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode (call .eval() first)")
    pairs = _foldable_pairs(model)
    for cname, bname in pairs:
        _fold_into(model.get_submodule(cname), model.get_submodule(bname))
        parent, _, leaf = bname.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, nn.Identity())
    return len(pairs)


def prepare_for_inference(model: nn.Module, device: str | torch.device = "cpu", bf16: bool | None = None,
                          fuse: bool = True) -> nn.Module:
    """An inference-ready copy of ``model``: eval mode, BatchNorm folded, ``channels_last``, bf16, conv+ReLU fused.

    Parameters
    ----------
    model : nn.Module
        Not modified.
    device : str or torch.device
    bf16 : bool or None
        Convert the weights to bfloat16 (inputs must then be cast to bf16 too); None =
        :func:`bf16_supported`.
    fuse : bool
        Apply :func:`fold_batchnorm` and :func:`fuse_conv_relu`.

    Returns
    -------
    nn.Module
        A deep copy with ``requires_grad`` off; ``.artseg_dtype`` names the input dtype it expects.
    """
    import copy

    dev = torch.device(device)
    use_bf16 = bf16_supported(dev) if bf16 is None else bool(bf16)
    out = copy.deepcopy(model).eval().to(dev)
    for p in out.parameters():
        p.requires_grad_(False)
    if fuse:
        fold_batchnorm(out)  # in fp32, before any bf16 rounding
    if use_bf16:
        out = out.to(torch.bfloat16)
    out = out.to(memory_format=torch.channels_last)
    if fuse:
        fuse_conv_relu(out)
    out.artseg_dtype = torch.bfloat16 if use_bf16 else torch.float32
    return out
