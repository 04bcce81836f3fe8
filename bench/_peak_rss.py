"""Peak resident memory (RSS) helpers, and a stage profile of the post-network prediction steps.

Helpers for other benchmarks:

* :func:`peak_rss_mb` - this process's peak RSS so far (``getrusage``, monotonic);
* :func:`run_with_peak_rss` - run a command and return its exit code, wall time and peak RSS,
  measured for that child alone (``os.wait4``), so earlier work in the caller does not count.

Run as a script, it profiles the engine steps around the network on one synthetic image:
raw uint16 image -> ``normalize`` -> ``tiling.predict_tiled`` (a cheap 3x3 mean + sigmoid
stands in for the U-Net, so the numbers are the engine's own memory, not the network's
activations) -> ``postprocess`` -> ``inpaint`` -> ``outputs``, printing the peak RSS after each
step on stderr and ONE JSON line on stdout. Peak RSS is monotonic, so each value is "the most
the process has held up to here". Times on a shared machine are noisy (see ``load_avg``).

Usage: ``python bench/_peak_rss.py [--size 10000] [--quick]``  (``--quick``: 2000 x 2000)
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (10^6 bytes; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


def run_with_peak_rss(argv: list[str], timeout: float | None = None, **popen_kwargs) -> dict:
    """Run a command; return ``returncode``, ``wall_s`` and the child's own ``peak_rss_mb``.

    The peak is that of the direct child process (its own children are not included).
    On Linux it is at least the caller's own peak RSS at the time of the spawn (the kernel carries the
    maximum RSS over ``exec``), so with a large caller it is an upper bound; a child can report its own
    peak exactly from ``VmHWM`` in ``/proc/self/status`` (``bench/predict.py`` does).
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, **popen_kwargs)
    deadline = None if timeout is None else t0 + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if deadline is not None and time.perf_counter() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"returncode": proc.returncode, "wall_s": round(time.perf_counter() - t0, 2),
            "peak_rss_mb": round(usage.ru_maxrss * 1024 / 1e6, 1)}


def _profile(size: int) -> dict:
    import numpy as np
    from scipy import ndimage as ndi

    from artseg_core.imgproc import inpaint
    from artseg_core.imgproc.normalize import normalize
    from artseg_core.io import outputs
    from artseg_core.imgproc import postprocess
    from artseg_core.imgproc import tiling
    from bench._common import load_average, log, machine

    steps: dict[str, dict] = {}

    def mark(name: str, t0: float) -> None:
        steps[name] = {"s": round(time.perf_counter() - t0, 2), "peak_rss_mb": round(peak_rss_mb(), 1)}
        log(f"{name:12s} {steps[name]['s']:7.2f} s   peak RSS {steps[name]['peak_rss_mb']:8.1f} MB")

    base = peak_rss_mb()
    t = time.perf_counter()
    rng = np.random.default_rng(0)
    image = np.empty((size, size), np.uint16)
    low = rng.random((size // 100 + 1,) * 2) > 0.9  # 100 x 100 px dark squares stand in for artifacts
    cols = np.arange(size) // 100
    for a in range(0, size, 1000):  # background + noise, block by block
        b = min(a + 1000, size)
        dark = low[np.arange(a, b) // 100][:, cols]
        image[a:b] = (1000 + 30 * rng.standard_normal((b - a, size)) - 400 * dark).clip(0, 65535)
    del low, cols
    mark("image", t)

    t = time.perf_counter()
    norm = normalize(image)
    mark("normalize", t)

    def fn(batch):  # translation-equivariant stand-in for the U-Net: dark = artifact
        m = ndi.uniform_filter(batch, size=(1, 1, 3, 3), mode="nearest")
        return 1.0 / (1.0 + np.exp(20 * (m - 0.3)))

    t = time.perf_counter()
    prob = tiling.predict_tiled(fn, norm, tile=512, overlap=64, divisor=32, batch_size=4)
    del norm
    mark("tiled", t)

    t = time.perf_counter()
    mask = postprocess.clean_mask(prob, 0.5, min_size=50)
    labels = postprocess.label_objects(mask)
    objects = postprocess.object_table(labels, prob=prob, pixel_size=0.5)
    mark("postprocess", t)

    t = time.perf_counter()
    cleaned = inpaint.fill_artifacts(image, mask, method="background")
    mark("inpaint", t)

    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        outputs.write_roi_zip(labels, os.path.join(d, "r.zip"))
        outputs.write_mask_tiff(os.path.join(d, "m.tif"), mask)
        outputs.write_prob_tiff(os.path.join(d, "p.tif"), prob)
        outputs.write_cleaned(os.path.join(d, "c.tif"), cleaned)
        mark("outputs", t)
        t = time.perf_counter()
        rgb = outputs.overlay_rgb(image, mask)
        mark("overlay_rgb", t)
        del rgb
    return {"bench": "peak_rss", "size": size, "n_objects": len(objects),
            "area_fraction": round(float(mask.mean()), 4), "start_rss_mb": round(base, 1), "steps": steps,
            "peak_rss_mb": round(peak_rss_mb(), 1), "load_avg": load_average(), "machine": machine(),
            "note": "network replaced by a 3x3 mean + sigmoid; peak RSS includes the input image and all results "
                    "(image, prob, mask, labels, cleaned) held together, as ArtifactModel.predict does"}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=10000)
    ap.add_argument("--quick", action="store_true", help="2000 x 2000")
    args = ap.parse_args(argv)
    from bench._common import emit

    emit(_profile(2000 if args.quick else args.size))


if __name__ == "__main__":
    main()
