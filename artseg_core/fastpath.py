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

__all__ = ["cpu_flags", "bf16_supported", "autocast_context", "set_threads", "available_cpus"]

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


def available_cpus() -> int:
    """CPUs this process may run on (affinity mask / cgroup quota aware where possible)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:  # cgroup v2 CPU quota
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op thread count.

    Parameters
    ----------
    n : int or None
        Threads; None = ``ARTSEG_THREADS`` from the environment, else the number of
        available CPUs (:func:`available_cpus`).

    Returns
    -------
    int
        The thread count now in effect.
    """
    if n is None:
        env = os.environ.get("ARTSEG_THREADS", "").strip()
        n = int(env) if env.isdigit() and int(env) > 0 else available_cpus()
    if int(n) < 1:
        raise ValueError(f"thread count must be >= 1, got {n}")
    torch.set_num_threads(int(n))
    return torch.get_num_threads()
