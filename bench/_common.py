"""Small helpers shared by the benchmark scripts: timing, allocator, environment, JSON output."""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

ALLOCATORS = ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")


def _glibc_supports_hugetlb() -> bool:
    """glibc >= 2.35 has the ``glibc.malloc.hugetlb`` tunable; THP must not be 'never'."""
    try:
        major, minor = (int(v) for v in platform.libc_ver()[1].split(".")[:2])
        thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except (ValueError, OSError):
        return False
    return platform.libc_ver()[0] == "glibc" and (major, minor) >= (2, 35) and "[never]" not in thp


def reexec_with_allocator(enabled: bool = True) -> str:
    """Re-run this script with a better allocator setting for large tensors.

    Large activations (100s of MB) are fresh ``mmap`` chunks under glibc's default malloc, so
    every allocation page-faults 4 KiB pages in: that made memory-bound ops (pooling,
    upsampling, concatenation) several times slower here. In order of preference:
    jemalloc or tcmalloc in ``LD_PRELOAD`` when installed, else glibc's transparent huge pages
    (``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``, glibc >= 2.35). Must be called before heavy
    imports. ``BENCH_NO_REEXEC=1`` disables it.

    Returns
    -------
    str
        What is in effect: the preloaded library, ``"glibc+thp"`` or ``"system"``.
    """
    pre = os.environ.get("LD_PRELOAD", "")
    for lib in ALLOCATORS:
        if lib in pre:
            return lib
    if "glibc.malloc.hugetlb=1" in os.environ.get("GLIBC_TUNABLES", ""):
        return "glibc+thp"
    if not enabled or os.environ.get("BENCH_NO_REEXEC") == "1":
        return "system"
    env = dict(os.environ, BENCH_NO_REEXEC="1")
    for lib in ALLOCATORS:
        if Path(lib).exists():
            env["LD_PRELOAD"] = lib + (" " + pre if pre else "")
            if "jemalloc" in lib:
                env.setdefault("MALLOC_CONF", "oversize_threshold:1,background_thread:false,"
                                              "metadata_thp:auto,dirty_decay_ms:-1,muzzy_decay_ms:-1")
            break
    else:
        if not _glibc_supports_hugetlb():
            return "system"
        tun = os.environ.get("GLIBC_TUNABLES", "")
        env["GLIBC_TUNABLES"] = (tun + ":" if tun else "") + "glibc.malloc.hugetlb=1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable] + sys.argv, env)
    return "unreachable"


def timeit(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> dict:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed.

    Returns
    -------
    dict
        ``best``, ``median`` (wall seconds), ``runs`` (all timed runs, rounded) and ``cpu_best``
        (smallest process CPU time of a run, all threads: under contention from other processes
        it counts only the time this process really ran, though spinning threads add to it).
    """
    for _ in range(warmup):
        fn()
    runs, cpu = [], []
    for _ in range(max(1, repeats)):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"best": min(runs), "median": statistics.median(runs), "runs": [round(r, 4) for r in runs],
            "cpu_best": min(cpu)}


def load_average() -> float | None:
    """1-minute load average (None where unavailable)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def machine() -> dict:
    """A few facts about the machine for the JSON record."""
    import torch

    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cpus": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "load_avg_1min": load_average()}


def emit(record: dict) -> None:
    """Print ``record`` as one JSON line (the script's final output)."""
    print(json.dumps(record, sort_keys=False), flush=True)


def log(*args) -> None:
    """Progress to stderr (stdout carries only the JSON line)."""
    print(*args, file=sys.stderr, flush=True)
