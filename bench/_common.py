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


def reexec_with_allocator(enabled: bool = True) -> str:
    """Re-run this script with jemalloc (or tcmalloc) in ``LD_PRELOAD`` when installed.

    Returns the preloaded library (or ``"system"``). Must be called before heavy imports.
    ``BENCH_NO_REEXEC=1`` disables it.
    """
    pre = os.environ.get("LD_PRELOAD", "")
    for lib in ALLOCATORS:
        if lib in pre:
            return lib
    if not enabled or os.environ.get("BENCH_NO_REEXEC") == "1":
        return "system"
    for lib in ALLOCATORS:
        if Path(lib).exists():
            env = dict(os.environ, LD_PRELOAD=(lib + (" " + pre if pre else "")), BENCH_NO_REEXEC="1")
            if "jemalloc" in lib:
                env.setdefault("MALLOC_CONF", "oversize_threshold:1,background_thread:false,"
                                              "metadata_thp:auto,dirty_decay_ms:-1,muzzy_decay_ms:-1")
            os.execve(sys.executable, [sys.executable] + sys.argv, env)
    return "system"


def timeit(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> dict:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed.

    Returns
    -------
    dict
        ``best``, ``median`` (seconds) and ``runs`` (all timed runs, rounded).
    """
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return {"best": min(runs), "median": statistics.median(runs), "runs": [round(r, 4) for r in runs]}


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
