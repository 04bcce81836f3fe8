"""How many CPUs this process may use; kept free of torch so that a parent process can ask cheaply."""
from __future__ import annotations

import os
from pathlib import Path


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


__all__ = ["available_cpus"]
