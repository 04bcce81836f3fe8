"""Benchmark: ``ArtifactModel.predict`` speed (gated vs ungated, fast vs paper profile) and peak memory
of predicting one 10000 x 10000 uint16 image.

Measured in one run:

1. **gated vs ungated** - a small model is trained first on its own phantom plate (48 images,
   512 x 512, half with artifacts; profile ``fast`` with reduced budgets and a 128 px classifier input,
   see ``TRAIN``), so that its classifier really gates (``--model FILE`` uses a model file instead).
   Then images/s of ``predict(image, gate=True)`` and ``gate=False`` over a second phantom plate with
   20 % artifact images (20 images, 512 x 512, the training size: the classifier sees whole images
   resized, so other sizes would change what it sees). Images are read before timing; the time is
   ``predict`` only (normalisation, classifier, QC scores, U-Net, mask clean-up, labels, object
   table; no ``fill``). How many images the U-Net ran on is reported with the rates. When the model
   stores a second opinion (the evidence route), ``predict(gate=True, second_opinion=True)`` is timed in
   the same passes, and ``second_opinion_slowdown`` is gated images/s without it over with it.
2. **fast vs paper** - images/s of ``predict(gate=False)`` with the ``fast`` and the ``paper``
   profile's networks on the first images of the same plate. Both are built untrained
   (``ArtifactModel(profile, *ArtifactModel.build_networks(profile))``): weights do not change the
   networks' cost, and training the paper networks on a CPU would take hours. ``gate=False`` because
   an untrained classifier gates at random; U-Net threshold 2 (no pixel passes) because an untrained
   U-Net's noise would make thousands of objects and the comparison would time their clean-up.
3. **big image** - peak RSS of a child process (started with ``run_with_peak_rss``; the number is
   the child's own ``VmHWM``, see ``_child_bigimage``) that loads the model file, reads a
   10000 x 10000 uint16 TIFF and runs ``predict_files.process_file`` on it with ``gate=False`` (the
   U-Net always runs; its threshold set so that about 5 % of the pixels are artifact, see
   ``_bigimage``), writing the mask TIFF. Included: Python, torch and the model, reading the
   image, the whole prediction and writing the mask. Not included: making the image (the parent tiles
   one 1000 x 1000 phantom field with three artifacts 10 x 10 times and writes the TIFF beforehand).
   The model is the trained ``fast`` model (untrained ``fast`` in ``--quick``). The system allocator
   is used (no jemalloc re-exec: some allocator settings keep freed memory and raise the peak).

Prints progress on stderr and ONE JSON line on stdout. Timings on a shared, loaded machine are
noisy (``load_avg`` is recorded); ratios from the same run are more meaningful than absolute rates.
``--quick`` (a smoke run; about 1.5-3 min on the shared 2-core machine under load 5-10, estimated
< 60 s idle): profile ``tiny`` with tiny budgets trained on 16 images, a 10-image 256 x 256 plate,
one paper image, a 2000 x 2000 big image with untrained ``fast`` networks; its speed ratios are not
meaningful (the tiny U-Net costs little next to the classifier and QC, and the times are short). The full run took about
13 min under load 5-6.

Usage: ``python bench/predict.py [--quick] [--size 10000] [--no-bigimage] [--paper-images N]
[--repeats N] [--model FILE]``
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from bench._common import emit, load_average, log, machine  # noqa: E402
from bench._peak_rss import run_with_peak_rss  # noqa: E402

#: Training plate and budgets: full run / --quick.
TRAIN = {
    "full": {"profile": "fast", "plate": dict(rows=4, cols=6, fields=2, prevalence=0.5, seed=7, shape=(512, 512)),
             "overrides": dict(cls_size=128, cls_epochs=20, unet_steps=60)},
    "quick": {"profile": "tiny", "plate": dict(rows=2, cols=4, fields=2, prevalence=0.5, seed=7, shape=(256, 256)),
              "overrides": dict(cls_size=64, cls_epochs=8, unet_steps=10)},
}
#: Prediction plate (20 % artifact images): full run / --quick.
PLATE = {"full": dict(rows=2, cols=5, fields=2, prevalence=0.2, seed=11, shape=(512, 512)),
         "quick": dict(rows=1, cols=5, fields=2, prevalence=0.2, seed=11, shape=(256, 256))}
GOAL_MB = 2000.0


def _profile_summary(p) -> dict:
    keys = ("arch", "cls_width", "cls_size", "unet_width", "unet_levels", "unet_scale", "predict_tile",
            "predict_overlap")
    return {"name": p.name, **{k: getattr(p, k) for k in keys}}


def _train(work: Path, mode: str) -> tuple[object, dict]:
    import artseg_core
    from artseg_core.data import phantoms

    cfg = TRAIN[mode]
    phantoms.make_plate(work / "train_plate", **cfg["plate"])
    t0 = time.perf_counter()
    model = artseg_core.train(work / "train_plate" / "images", work / "train_plate" / "labels.csv",
                              profile=cfg["profile"], seed=0, progress=False, work_dir=work / "train_ckpt",
                              device="cpu", **cfg["overrides"])
    info = {"profile": cfg["profile"], "overrides": cfg["overrides"],
            "plate": {k: v for k, v in cfg["plate"].items()}, "seconds": round(time.perf_counter() - t0, 1),
            "thresholds": {k: round(float(v), 4) for k, v in model.thresholds.items()},
            "val_metrics": model.summary.get("classifier", {}).get("val_metrics", {})}
    return model, info


def _read_plate(work: Path, mode: str) -> tuple[list, list[bool], dict]:
    import csv

    from artseg_core.data import phantoms
    from artseg_core.io.images import read_image

    cfg = PLATE[mode]
    labels_csv = phantoms.make_plate(work / "plate", **cfg)
    images, truth = [], []
    with open(labels_csv, newline="") as fh:
        for r in csv.DictReader(fh):
            images.append(read_image(work / "plate" / "images" / r["image"]))
            truth.append(r["label"] == "artifact")
    return images, truth, {**cfg, "n_images": len(images), "n_artifact": int(sum(truth))}


def _rates(configs: list[tuple], images: list, repeats: int) -> list[dict]:
    """images/s of ``model.predict(image, gate=gate, second_opinion=so)`` over ``images`` for each
    ``(model, gate, so)`` (``so`` None: the model's own setting).

    Every image is predicted with each configuration in turn (the order alternating), ``repeats``
    times, after one warm-up call each; so a change of the machine's load hits all of them alike. The
    rate is ``n_images / sum over images of the fastest of the repeats`` (robust to load spikes); the
    median-based rate is reported too.
    """
    for model, g, so in configs:
        model.predict(images[0], gate=g, second_opinion=so)  # warm-up (allocator, oneDNN primitives)
    times = np.zeros((len(configs), max(1, repeats), len(images)))
    cpu = np.zeros_like(times)
    segmented = np.zeros((len(configs), len(images)), bool)
    for r in range(times.shape[1]):
        for i, im in enumerate(images):
            order = range(len(configs)) if (r + i) % 2 == 0 else reversed(range(len(configs)))
            for k in order:
                model, g, so = configs[k]
                c0, t0 = time.process_time(), time.perf_counter()
                segmented[k, i] = model.predict(im, gate=g, second_opinion=so).segmented
                times[k, r, i] = time.perf_counter() - t0
                cpu[k, r, i] = time.process_time() - c0
    n = len(images)
    return [{"images_per_s": round(n / times[k].min(axis=0).sum(), 3),
             "images_per_s_median": round(n / np.median(times[k], axis=0).sum(), 3),
             "pass_s": [round(float(v), 3) for v in times[k].sum(axis=1)],
             "cpu_s_per_image": round(float(cpu[k].min(axis=0).mean()), 3),
             "n_images": n, "n_segmented": int(segmented[k].sum())} for k in range(len(configs))]


def _bigimage(work: Path, model, size: int) -> dict:
    """Peak RSS of a child that reads a size x size uint16 TIFF and runs process_file on it."""

    from artseg_core.data import phantoms
    from artseg_core.io.files import write_tiff

    t0 = time.perf_counter()
    f = phantoms.make_field((1000, 1000), seed=3, artifacts=["debris", "fibre", "bubble"])
    reps = -(-size // 1000)
    img = np.tile(f.image, (reps, reps))[:size, :size]
    # U-Net threshold for the big image: the 95th percentile of the probability map of the 1000 x 1000
    # field it is tiled from, so that the mask clean-up, labelling and object table work on a realistic
    # mask (about 5 % artifact pixels) whatever the (briefly trained or untrained) U-Net outputs
    thr = float(np.quantile(model.predict(f.image, gate=False).prob, 0.95))
    path = write_tiff(work / "big.tif", img)
    dtype = str(img.dtype)
    del img, f
    model_path = model.save(work / "big_model.artseg")
    gen_s = time.perf_counter() - t0
    out_json = work / "big_child.json"
    parent_hwm = _proc_status_mb("VmHWM")
    log(f"big image {size} x {size} written ({gen_s:.1f} s); predicting in a child process ...")
    with open(out_json, "w") as fh:
        r = run_with_peak_rss([sys.executable, os.path.abspath(__file__), "--child-bigimage", str(path),
                               "--child-model", str(model_path), "--out", str(work / "big_out"),
                               "--child-threshold", repr(thr)], stdout=fh)
    child = json.loads(out_json.read_text() or "{}") if r["returncode"] == 0 else {}
    os.unlink(path)
    return {"size": [size, size], "dtype": dtype, "unet_threshold": round(thr, 6),
            "peak_rss_mb": child.get("child_vmhwm_mb") or r["peak_rss_mb"],
            "wait4_peak_rss_mb": r["peak_rss_mb"], "parent_vmhwm_at_spawn_mb": parent_hwm, "wall_s": r["wall_s"],
            "returncode": r["returncode"], **child,
            "measure": "peak_rss_mb = the child's VmHWM (its own address space, read at the end of its work); "
                       "wait4_peak_rss_mb (run_with_peak_rss) is max(that, the parent's peak RSS at spawn), "
                       "because Linux carries the max RSS over exec",
            "included": "python + torch + model file load, reading the TIFF, predict (gate=False: classifier, "
                        "QC, tiled U-Net, mask clean-up, labels, object table) and writing the mask TIFF"}


def _proc_status_mb(key: str) -> float | None:
    """``VmRSS``/``VmHWM`` of this process from /proc/self/status in MB (None where unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return round(int(line.split()[1]) * 1024 / 1e6, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _child_bigimage(image: str, model_path: str, out: str, threshold: float | None) -> None:
    """Runs in the child: load, read + predict + write mask; print a JSON line of in-process numbers.

    ``VmHWM`` (peak RSS of this process's own address space, new at exec) is the child's peak alone;
    ``getrusage``/``wait4`` also count the parent's peak RSS, which Linux carries over ``exec``.
    """
    import artseg_core
    from artseg_core.predict.files import PredictOptions, process_file

    model = artseg_core.load_model(model_path, device="cpu")
    base = _proc_status_mb("VmRSS")
    t0 = time.perf_counter()
    row = process_file(model, image, out, PredictOptions(gate=False, mask=True, threshold=threshold))
    print(json.dumps({"child_vmhwm_mb": _proc_status_mb("VmHWM"), "child_rss_before_predict_mb": base,
                      "predict_s": round(time.perf_counter() - t0, 1), "profile": model.profile.name,
                      "status": row["status"], "error": row["error"], "n_objects": row["n_objects"],
                      "area_fraction": row["area_fraction"]}), flush=True)


def run(quick: bool = False, size: int | None = None, bigimage: bool = True, paper_images: int | None = None,
        repeats: int | None = None, model_path: str | None = None) -> dict:
    from artseg_core.predict.model import ArtifactModel
    from artseg_core.nets.profiles import get_profile

    mode = "quick" if quick else "full"
    size = size or (2000 if quick else 10000)
    repeats = repeats or (2 if quick else 3)
    n_paper = paper_images or (1 if quick else 3)
    t_start = time.perf_counter()
    rec: dict = {"bench": "predict", "quick": quick}
    with tempfile.TemporaryDirectory(prefix="artseg-bench-predict-") as d:
        work = Path(d)
        if model_path:
            import artseg_core

            model = artseg_core.load_model(model_path, device="cpu")
            train_info = {"model_file": str(model_path), "profile": model.profile.name,
                          "thresholds": {k: round(float(v), 4) for k, v in model.thresholds.items()}}
        else:
            log(f"training a {TRAIN[mode]['profile']} model with reduced budgets ...")
            model, train_info = _train(work, mode)
            log(f"  {train_info['seconds']} s, thresholds {train_info['thresholds']}")
        images, truth, plate_info = _read_plate(work, mode)

        log("gated vs ungated ...")
        configs = [(model, True, None), (model, False, None)]
        if model.second_opinion is not None:  # the evidence route's opt-in second opinion, in the same run
            configs.append((model, True, True))
        gated, ungated, *second = _rates(configs, images, repeats)
        second = second[0] if second else None
        gated["n_artifact_images_segmented"] = sum(
            model.predict(im, gate=True).segmented for im, t in zip(images, truth) if t)
        log(f"  gated {gated['images_per_s']} img/s ({gated['n_segmented']}/{gated['n_images']} segmented, "
            f"{gated['n_artifact_images_segmented']}/{plate_info['n_artifact']} of the artifact images), "
            f"ungated {ungated['images_per_s']} img/s"
            + (f", gated with the second opinion {second['images_per_s']} img/s ({second['n_segmented']} segmented)"
               if second else ""))

        log(f"fast vs paper (untrained networks, gate=False, {n_paper} image(s)) ...")
        names = ("fast", "paper")
        profs = [get_profile(name) for name in names]
        # threshold 2: no pixel passes, so both do the post-processing of an artifact-free result (an
        # untrained U-Net's noise would otherwise make thousands of objects and time the clean-up)
        models = [ArtifactModel(p, *ArtifactModel.build_networks(p), thresholds={"unet": 2.0}, device="cpu")
                  for p in profs]
        rates = _rates([(m, False, None) for m in models], images[:n_paper], 3)
        nets = {name: {"profile": _profile_summary(p), **r} for name, p, r in zip(names, profs, rates)}
        for name in names:
            log(f"  {name}: {nets[name]['images_per_s']} img/s")
        del models

        big = None
        if bigimage:
            if quick or model.profile.name != "fast":  # untrained fast networks (weights do not change the cost)
                prof = get_profile("fast")
                big_model = ArtifactModel(prof, *ArtifactModel.build_networks(prof), device="cpu")
            else:
                big_model = model
            big = _bigimage(work, big_model, size)
            log(f"  big image peak RSS {big['peak_rss_mb']} MB in {big['wall_s']} s (rc {big['returncode']})")

    rec.update({
        "gated_speedup": round(gated["images_per_s"] / ungated["images_per_s"], 3),
        "fast_vs_paper_speedup": round(nets["fast"]["images_per_s"] / nets["paper"]["images_per_s"], 2),
        "gated_speedup_cpu": round(ungated["cpu_s_per_image"] / gated["cpu_s_per_image"], 3),
        # gated without / with the second opinion (predict(second_opinion=True)); None when the model has none
        "second_opinion_slowdown": round(gated["images_per_s"] / second["images_per_s"], 3) if second else None,
        "fast_vs_paper_speedup_cpu": round(nets["paper"]["cpu_s_per_image"] / nets["fast"]["cpu_s_per_image"], 2),
        "bigimage_peak_rss_mb": big["peak_rss_mb"] if big else None,
        "bigimage_goal_mb": GOAL_MB,
        "bigimage_within_goal": (big["peak_rss_mb"] <= GOAL_MB and big["returncode"] == 0) if big else None,
        "details": {
            "trained_model": {**train_info, "profile_settings": _profile_summary(model.profile)},
            "plate": plate_info,
            "gated": gated, "ungated": ungated, "gated_second_opinion": second,
            "fast_vs_paper": {"n_images": n_paper, "image_size": list(plate_info["shape"]), "repeats": 3,
                              "note": "untrained networks (weights do not change the cost), gate=False, "
                                      "U-Net threshold 2 (empty masks: same post-processing for both)",
                              **nets},
            "bigimage": big,
        },
        "total_s": round(time.perf_counter() - t_start, 1),
        "machine": machine(), "load_avg": load_average(),
        "note": "shared, loaded machine: timings are noisy (see load_avg); images/s = n / sum over images of "
                "the fastest of the repeats; *_cpu: the same ratio from process CPU time per image; "
                "predict time only (images read beforehand), fp32, CPU",
    })
    return rec


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small everything (a smoke run)")
    ap.add_argument("--size", type=int, default=None, help="big image side (default 10000; --quick 2000)")
    ap.add_argument("--no-bigimage", action="store_true", help="skip the big-image peak RSS measurement")
    ap.add_argument("--paper-images", type=int, default=None, help="images timed with the paper profile")
    ap.add_argument("--repeats", type=int, default=None, help="timed passes over the plate (best is kept)")
    ap.add_argument("--model", default=None, help="use this model file (artseg train) instead of training one")
    ap.add_argument("--child-bigimage", help=argparse.SUPPRESS)
    ap.add_argument("--child-model", help=argparse.SUPPRESS)
    ap.add_argument("--child-threshold", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child_bigimage:
        _child_bigimage(args.child_bigimage, args.child_model, args.out, args.child_threshold)
        return
    emit(run(quick=args.quick, size=args.size, bigimage=not args.no_bigimage, paper_images=args.paper_images,
             repeats=args.repeats, model_path=args.model))


if __name__ == "__main__":
    main()
