"""Benchmark: forward pass of the ArtSeg U-Net on one 1080x1080 image (CPU).

Times the paper configuration (15+3+15 conv3x3, 64 filters) in fp32 and bf16 and the
``fast`` profile's U-Net, and a large bf16 matmul in the same run as the attainable
ceiling. FLOPs are counted analytically (2 x conv MACs, ``artseg_core.nets.unet.conv_macs``).
The 1080x1080 image is reflect-padded to 1088x1088 (a multiple of 2**5 = 32), as
tiled prediction does; FLOPs are those of the padded size.

bf16 variants: ``autocast`` (fp32 weights, ``torch.autocast``, channels_last: what
``ArtifactModel`` does) and ``fused`` (``fastpath.prepare_for_inference``: bf16 weights,
channels_last, conv+ReLU fused into one oneDNN primitive). ``paper_bf16_s`` is the faster.

Prints progress on stderr and ONE JSON line on stdout. ``--quick`` stays under ~50 s on an
idle 2-core machine. Timings are best-of-n (medians reported too): on a shared machine they
are noisy, the fraction of peak pairs a best forward with a best matmul from the same run.

Usage: ``python bench/unet.py [--quick] [--threads N] [--size 1080]``
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._common import emit, log, machine, reexec_with_allocator, timeit, load_average  # noqa: E402


def _fast_profile_config() -> dict:
    try:
        from artseg_core.nets.profiles import PROFILES

        p = PROFILES["fast"]
        return {"width": p.unet_width, "levels": p.unet_levels, "scale": p.unet_scale, "source": "profiles.fast"}
    except Exception:  # profiles module not there yet
        return {"width": 16, "levels": 4, "scale": 2, "source": "bench default"}


def _matmul(n: int, dtype, repeats: int) -> dict:
    import torch

    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, n, generator=g).to(dtype)
    t = timeit(lambda: torch.matmul(a, b), repeats=repeats, warmup=1)
    t["gflops"] = 2 * n ** 3 / t["best"] / 1e9
    t["gflops_per_cpu_s"] = 2 * n ** 3 / t["cpu_best"] / 1e9
    return t


def _conv_time_fraction(fn) -> float | None:
    """Share of one forward's CPU time spent inside oneDNN convolutions (torch profiler)."""
    from torch.profiler import ProfilerActivity, profile

    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        rows = prof.key_averages()
        total = sum(r.self_cpu_time_total for r in rows)
        conv = sum(r.self_cpu_time_total for r in rows if "convolution" in r.key)
        top = sorted(((r.self_cpu_time_total, r.key) for r in rows), reverse=True)[:6]
        return {"conv_frac": conv / total if total else None,
                "top_ops": {k: round(v / total, 3) for v, k in top}}
    except Exception as exc:  # profiler unavailable
        return {"error": str(exc)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats; < 50 s on an idle machine")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: available CPUs)")
    ap.add_argument("--size", type=int, default=1080, help="image side in pixels (default 1080)")
    ap.add_argument("--matmul-n", type=int, default=4096, help="side of the square bf16 matmul ceiling")
    ap.add_argument("--no-fp32", action="store_true", help="skip the (slow) fp32 paper forward")
    ap.add_argument("--no-allocator", action="store_true", help="do not re-exec with jemalloc/tcmalloc")
    args = ap.parse_args(argv)
    allocator = reexec_with_allocator(not args.no_allocator)

    import torch
    import torch.nn.functional as F

    from artseg_core.nets import accel as fastpath
    from artseg_core.nets.unet import ArtSegUNet, conv_macs, paper_unet

    warnings.filterwarnings("ignore")
    threads = fastpath.set_threads(args.threads)
    load0 = load_average()
    q = args.quick
    rep = dict(fp32=1 if q else 3, bf16=2 if q else 5, auto=1 if q else 3, fast=2 if q else 7, mm=2 if q else 5)
    bf16_ok = fastpath.bf16_supported("cpu")

    torch.manual_seed(0)
    side = args.size
    paper = paper_unet().eval()
    div = paper.divisor
    padded = -(-side // div) * div
    img = torch.rand(1, 1, side, side)
    pad = padded - side
    x = F.pad(img, (0, pad, 0, pad), mode="reflect") if pad else img
    x_cl = x.contiguous(memory_format=torch.channels_last)
    flops = 2 * conv_macs(paper, padded, padded)
    rec: dict = {"bench": "unet", "quick": q,
                 "input": f"{side}x{side} reflect-padded to {padded}x{padded} (multiple of {div})",
                 "paper_config": paper.config(), "paper_gflop": round(flops / 1e9, 2),
                 "allocator": allocator, "bf16_native": bf16_ok, "threads": threads}

    log(f"[unet bench] threads={threads} allocator={allocator} bf16_native={bf16_ok} load={load0}")
    mm1 = _matmul(args.matmul_n, torch.bfloat16, rep["mm"])
    log(f"  matmul bf16 {args.matmul_n}: {mm1['gflops']:.1f} GFLOP/s ({mm1['gflops_per_cpu_s']:.1f} per CPU-s)")

    with torch.inference_mode():
        # bf16, fused conv+ReLU, bf16 weights
        fused = fastpath.prepare_for_inference(paper, bf16=True, fuse=True)
        xb = x_cl.to(torch.bfloat16)
        t_fused = timeit(lambda: fused(xb), repeats=rep["bf16"], warmup=1)
        log(f"  paper bf16 fused: best {t_fused['best']:.2f} s runs {t_fused['runs']} cpu {t_fused['cpu_best']:.2f} s")

        # bf16 autocast (fp32 weights), channels_last
        auto_model = paper.to(memory_format=torch.channels_last)

        def run_auto():
            with fastpath.autocast_context("cpu", enabled=True):
                return auto_model(x_cl)

        t_auto = timeit(run_auto, repeats=rep["auto"], warmup=0 if q else 1)
        log(f"  paper bf16 autocast: best {t_auto['best']:.2f} s runs {t_auto['runs']} cpu {t_auto['cpu_best']:.2f} s")

        # agreement of the two bf16 paths with fp32 on a small crop (sanity, not timed)
        crop = x_cl[..., :128, :128]
        ref = auto_model(crop)
        err = float((fused(crop.to(torch.bfloat16)).float() - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
        rec["bf16_fused_max_rel_err_vs_fp32"] = round(err, 4)

        prof = None if q else _conv_time_fraction(lambda: fused(xb))

        if not args.no_fp32:
            t_fp32 = timeit(lambda: auto_model(x_cl), repeats=rep["fp32"], warmup=0 if q else 1)
            log(f"  paper fp32: best {t_fp32['best']:.2f} s runs {t_fp32['runs']}")
        else:
            t_fp32 = None

        fcfg = _fast_profile_config()
        fast = ArtSegUNet(width=fcfg["width"], levels=fcfg["levels"], scale=fcfg["scale"]).eval()
        fdiv = fast.divisor
        fpad = -(-side // fdiv) * fdiv - side
        xf = F.pad(img, (0, fpad, 0, fpad), mode="reflect") if fpad else img
        xf = xf.contiguous(memory_format=torch.channels_last)
        fflops = 2 * conv_macs(fast, side + fpad, side + fpad)
        fast_bf16 = fastpath.prepare_for_inference(fast, bf16=True, fuse=True)
        xfb = xf.to(torch.bfloat16)
        t_fast = timeit(lambda: fast_bf16(xfb), repeats=rep["fast"], warmup=1)
        fast32 = fastpath.prepare_for_inference(fast, bf16=False, fuse=True)
        t_fast32 = timeit(lambda: fast32(xf), repeats=rep["fast"], warmup=1)
        log(f"  fast profile {fcfg}: bf16 best {t_fast['best']:.3f} s, fp32 best {t_fast32['best']:.3f} s")

    mm2 = _matmul(args.matmul_n, torch.bfloat16, rep["mm"])
    mm32 = _matmul(args.matmul_n, torch.float32, max(2, rep["mm"] - 1))
    log(f"  matmul bf16 again: {mm2['gflops']:.1f} GFLOP/s; fp32: {mm32['gflops']:.1f} GFLOP/s")

    mm_peak = max(mm1["gflops"], mm2["gflops"])
    best_bf16 = min((t_fused["best"], "fused (bf16 weights, channels_last, conv+ReLU fused)"),
                    (t_auto["best"], "autocast (fp32 weights, channels_last)"))
    paper_bf16_gflops = flops / best_bf16[0] / 1e9
    rec.update({
        "paper_fp32_s": None if t_fp32 is None else round(t_fp32["best"], 3),
        "paper_fp32_median_s": None if t_fp32 is None else round(t_fp32["median"], 3),
        "paper_fp32_gflops": None if t_fp32 is None else round(flops / t_fp32["best"] / 1e9, 1),
        "paper_bf16_s": round(best_bf16[0], 3),
        "paper_bf16_variant": best_bf16[1],
        "paper_bf16_fused_s": round(t_fused["best"], 3),
        "paper_bf16_fused_median_s": round(t_fused["median"], 3),
        "paper_bf16_autocast_s": round(t_auto["best"], 3),
        "paper_bf16_autocast_median_s": round(t_auto["median"], 3),
        "paper_bf16_gflops": round(paper_bf16_gflops, 1),
        "matmul_bf16_gflops": round(mm_peak, 1),
        "matmul_bf16_gflops_runs": [round(mm1["gflops"], 1), round(mm2["gflops"], 1)],
        "matmul_fp32_gflops": round(mm32["gflops"], 1),
        "matmul_n": args.matmul_n,
        "paper_bf16_frac_of_peak": round(paper_bf16_gflops / mm_peak, 3),
        "paper_bf16_frac_of_peak_cpu_time": round(
            (flops / min(t_fused["cpu_best"], t_auto["cpu_best"]) / 1e9)
            / max(mm1["gflops_per_cpu_s"], mm2["gflops_per_cpu_s"]), 3),
        "paper_bf16_cpu_s": round(min(t_fused["cpu_best"], t_auto["cpu_best"]), 3),
        "paper_fp32_cpu_s": None if t_fp32 is None else round(t_fp32["cpu_best"], 3),
        "paper_fp32_frac_of_fp32_peak": None if t_fp32 is None
        else round(flops / t_fp32["best"] / 1e9 / mm32["gflops"], 3),
        "speedup_bf16_vs_fp32": None if t_fp32 is None else round(t_fp32["best"] / best_bf16[0], 2),
        "fast_profile": {k: fcfg[k] for k in ("width", "levels", "scale", "source")},
        "fast_gflop": round(fflops / 1e9, 3),
        "fast_s": round(t_fast["best"] if bf16_ok else t_fast32["best"], 4),
        "fast_bf16_s": round(t_fast["best"], 4),
        "fast_fp32_s": round(t_fast32["best"], 4),
        "fast_speedup_vs_paper_bf16": round(best_bf16[0] / t_fast["best"], 1),
    })
    if prof is not None:
        rec["paper_bf16_fused_profile"] = prof
    rec["machine"] = machine()
    rec["load_avg_1min_start_end"] = [load0, load_average()]
    rec["timing"] = ("best of n after warm-up (medians given); fraction of peak = best forward / best matmul "
                     "(wall time); *_cpu_time: the same ratio from process CPU seconds (less sensitive to "
                     "time-slicing by other processes)")
    rec["caveat"] = ("shared 2-core machine: other processes compete for the cores and memory bandwidth, "
                     "absolute times and the fraction of peak are noisy (see load_avg)")
    emit(rec)
    return rec


if __name__ == "__main__":
    main()
