"""Score-CAM benchmark: pytorch-grad-cam's ScoreCAM vs artseg_core.scorecam (exact and fast modes).

One run trains a 1-channel ResNet18 for a few steps to find dark disks ("artifacts") in smooth noise,
then, for every image size, times pytorch-grad-cam (grad-cam 1.5.7), our exact mode and our fast mode on
the same model, layer (``layer4``), inputs and target class, interleaving the methods and keeping the best
of the repeats (the machine is shared, so single timings are noisy). Prints progress to stderr and ONE
JSON line to stdout:

``exact_speedup``, ``fast_speedup``  summed reference time / summed own time over all sizes
``exact_maxdiff``                    max |ours - pytorch-grad-cam| over every pixel of every map
``fast_mask_iou``                    mean IoU of fast vs exact pseudo-masks binarised at the same threshold
``*_speedup_cpu``                    the same ratios in process CPU time (less sensitive to other jobs)
``sizes``                            the same per size, plus timings and IoU of the exact masks with the disks

Usage: ``python bench/scorecam.py [--quick] [--sizes 224,512] [--width 64] [--top-k 32] [--repeats 2]``
(``--quick``: width 16, top-k 8 - the same 1/16 of the channels - one repeat; well under a minute).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # gradcam_compat lives with the tests (it must not reach the engine)

from artseg_core.nets.resnet import resnet18  # noqa: E402
from artseg_core.weak.refine import DEFAULT_THRESHOLD_PLAIN as THRESHOLD  # noqa: E402 (maps are not edge-refined)
from artseg_core.weak.scorecam import bf16_available, score_cam  # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def disk_images(n: int, size: int, seed: int, p: float = 0.5, max_disks: int = 1):
    """Smooth noise backgrounds with (probability p) 1..max_disks dark disks; returns x, labels, masks.

    Disk radii are 10-20 % of the image side at every size, so that a model trained at one size sees the
    same relative scale at the others (global average pooling would otherwise dilute a small disk away).
    """
    radius = (0.10 * size, 0.20 * size)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    x = np.empty((n, 1, size, size), np.float32)
    y = np.zeros(n, np.int64)
    masks = np.zeros((n, size, size), bool)
    cell = 8
    for i in range(n):
        coarse = rng.normal(size=(size // cell + 2, size // cell + 2))
        bg = np.kron(coarse, np.ones((cell, cell)))[:size, :size]
        bg = F.avg_pool2d(torch.from_numpy(bg)[None, None], 2 * cell + 1, 1, cell,
                          count_include_pad=False)[0, 0].numpy()
        bg = bg * 0.8 + rng.normal(scale=0.2, size=(size, size))
        if rng.random() < p:
            for _ in range(int(rng.integers(1, max_disks + 1))):
                r = rng.uniform(*radius)
                cy, cx = rng.uniform(r + 2, size - r - 2, 2)
                m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
                bg = bg - 2.0 * m
                masks[i] |= m
            y[i] = 1
        x[i, 0] = bg
    return torch.from_numpy(x), torch.from_numpy(y), masks


def train_model(width: int, steps: int, size: int, seed: int = 0) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(seed)
    model = resnet18(in_channels=1, num_classes=2, width=width)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    t0 = time.perf_counter()
    for step in range(steps):
        x, y, _ = disk_images(16, size, seed=1000 + step)
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    # a few steps leave BatchNorm's running averages behind the weights: re-estimate them exactly
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
    with torch.no_grad():
        for k in range(4):
            model(disk_images(16, size, seed=500 + k)[0])
    model.eval()
    x, y, _ = disk_images(32, size, seed=99)
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    return model, {"width": width, "steps": steps, "train_size": size, "final_loss": round(loss.item(), 4),
                   "val_accuracy": round(acc, 3), "seconds": round(time.perf_counter() - t0, 1)}


def warm_up(model, x, layer, top_k: int) -> None:
    """Run every method's batch shapes once, so that no timing includes oneDNN's one-off kernel setup.

    pytorch-grad-cam scores 16 masked inputs per pass with the model as given; our exact mode 32 per pass
    on its channels-last scoring copy (built and cached here too); our fast mode is simply run once.
    """
    from artseg_core.weak.scorecam import _scoring_model

    one = x[:1]
    with torch.no_grad():
        model(one.repeat(16, 1, 1, 1))
    with torch.inference_mode():
        _scoring_model(model)(one.repeat(32, 1, 1, 1).contiguous(memory_format=torch.channels_last))
    score_cam(model, one, layer, target=1, mode="fast", top_k=top_k)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small model, one repeat (smoke run, < 1 min)")
    ap.add_argument("--sizes", default="224,512")
    ap.add_argument("--width", type=int, default=None, help="ResNet18 width (default 64; 16 with --quick)")
    ap.add_argument("--top-k", type=int, default=None, help="fast-mode channels (default width/2: 1/16 of layer4)")
    ap.add_argument("--images", type=int, default=1, help="images per size")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per method (default 2; 1 with --quick)")
    ap.add_argument("--train-steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for every method (default 1: on a shared machine, waiting threads of a "
                         "2-thread run spin while the other is descheduled, which swamps the comparison)")
    args = ap.parse_args(argv)

    width = args.width or (16 if args.quick else 64)
    top_k = args.top_k or max(1, width // 2)  # layer4 has 8 * width channels
    repeats = args.repeats or (1 if args.quick else 2)
    steps = args.train_steps or (12 if args.quick else 30)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if args.threads and args.threads > 0:
        torch.set_num_threads(args.threads)

    from gradcam_compat import import_pytorch_grad_cam

    import_pytorch_grad_cam()
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    t_start = time.perf_counter()
    model, train_info = train_model(width, steps, size=96)
    log(f"trained ResNet18 width {width}: {train_info}")
    layer = model.layer4

    def reference(x):
        with contextlib.redirect_stderr(io.StringIO()):  # its tqdm bars
            with ScoreCAM(model=model, target_layers=[layer]) as cam:
                return cam(input_tensor=x, targets=[ClassifierOutputTarget(1)] * x.shape[0])

    methods = {
        "reference": reference,
        "exact": lambda x: score_cam(model, x, layer, target=1, mode="exact"),
        "fast": lambda x: score_cam(model, x, layer, target=1, mode="fast", top_k=top_k),
    }
    per_size, totals, totals_cpu = [], {m: 0.0 for m in methods}, {m: 0.0 for m in methods}
    all_maxdiff, all_ious = 0.0, []
    for size in sizes:
        x, _, gt = disk_images(args.images, size, seed=size, p=1.0)
        with torch.no_grad():
            p_art = torch.softmax(model(x), 1)[:, 1].tolist()
        warm_up(model, x, layer, top_k)
        times = {m: [] for m in methods}
        cpu = {m: [] for m in methods}
        maps = {}
        for r in range(repeats):
            for name, fn in methods.items():
                c0, t0 = time.process_time(), time.perf_counter()
                maps[name] = fn(x)
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
            log(f"size {size} repeat {r + 1}/{repeats}: " + ", ".join(f"{m} {t[-1]:.2f}s" for m, t in times.items()))
        best = {m: min(t) for m, t in times.items()}
        best_cpu = {m: min(t) for m, t in cpu.items()}
        for m in methods:
            totals[m] += best[m]
            totals_cpu[m] += best_cpu[m]
        maxdiff = float(np.abs(maps["exact"] - maps["reference"]).max())
        ious = [iou(e >= THRESHOLD, f >= THRESHOLD) for e, f in zip(maps["exact"], maps["fast"])]
        all_maxdiff = max(all_maxdiff, maxdiff)
        all_ious += ious
        per_size.append({
            "size": size, "images": args.images, "p_artifact": [round(p, 3) for p in p_art],
            "seconds_best": {m: round(t, 3) for m, t in best.items()},
            "seconds_all": {m: [round(v, 3) for v in t] for m, t in times.items()},
            "cpu_seconds_best": {m: round(t, 3) for m, t in best_cpu.items()},
            "exact_speedup": round(best["reference"] / best["exact"], 2),
            "fast_speedup": round(best["reference"] / best["fast"], 2),
            "exact_maxdiff": maxdiff,
            "fast_mask_iou": round(float(np.mean(ious)), 4),
            "exact_vs_disks_iou": round(float(np.mean([iou(e >= THRESHOLD, g)
                                                       for e, g in zip(maps["exact"], gt)])), 4),
        })
    result = {
        "exact_speedup": round(totals["reference"] / totals["exact"], 2),
        "exact_maxdiff": all_maxdiff,
        "fast_speedup": round(totals["reference"] / totals["fast"], 2),
        "fast_mask_iou": round(float(np.mean(all_ious)), 4),
        "exact_speedup_cpu": round(totals_cpu["reference"] / totals_cpu["exact"], 2),
        "fast_speedup_cpu": round(totals_cpu["reference"] / totals_cpu["fast"], 2),
        "threshold": THRESHOLD,
        "top_k": top_k, "channels": int(8 * width), "bf16": bool(bf16_available()),
        "quick": bool(args.quick), "repeats": repeats, "threads": torch.get_num_threads(),
        "load_avg": [round(v, 2) for v in os.getloadavg()], "machine": platform.processor() or platform.machine(),
        "model": train_info, "sizes": per_size,
        "seconds_total": round(time.perf_counter() - t_start, 1),
        "note": "wall-clock best of interleaved repeats on a shared machine; timings are noisy",
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
