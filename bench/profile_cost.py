"""Training cost of a profile on this machine, measured per step and projected to a whole training run.

    python bench/profile_cost.py [--profile paper] [--fields 200] [--steps 3]

A whole ``paper`` training on a CPU takes days, so it cannot be timed end to end here. This script times the
pieces ``artseg_core.train`` repeats, on the networks the profile builds (untrained, fp32, all cores):

* one classifier step: a batch of ``cls_batch`` images at ``cls_size``, forward, backward, Adam;
* one masked forward of the classifier at ``cls_size`` (Score-CAM scores one masked copy of the image per
  channel of ``layer4`` in ``exact`` and ``paper`` mode, ``cam_top_k`` of them in ``fast`` mode);
* one U-Net step: a batch of ``unet_batch`` crops of ``unet_tile`` pixels, forward, backward, Adam;

and multiplies them by the counts ``train`` runs for ``--fields`` training fields (80 % train, 20 % validation,
half of them artifact fields): ``cls_epochs x ceil(0.8 fields / cls_batch)`` classifier steps, one Score-CAM per
artifact field, ``unet_training_steps(profile, n_train)`` U-Net steps. Reading, augmentation, validation passes
and calibration are left out; the masked forwards are timed in fp32, while ``fast`` mode scores them in bf16 where
the CPU has it (its Score-CAM part comes out high). Run it for ``fast`` to compare with a measured ``artseg demo``.

Prints progress on stderr and ONE JSON line: the per-step seconds and ``projected_train_s`` (with its parts).
"""
from __future__ import annotations

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._common import emit, load_average, log, machine, reexec_with_allocator, timeit  # noqa: E402


def _train_step(net, loss_fn, x, y, lr: float):
    """One training step of ``net`` on the batch ``(x, y)``: forward, loss, backward, Adam (as ``train`` runs)."""
    import torch

    opt = torch.optim.Adam(net.parameters(), lr=lr)

    def step():
        net.train()
        loss = loss_fn(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="paper")
    ap.add_argument("--fields", type=int, default=200, help="training fields the projection is for")
    ap.add_argument("--steps", type=int, default=3, help="timed repeats of each step (median is used)")
    ap.add_argument("--allocator", action="store_true",
                    help="re-run under jemalloc/tcmalloc or glibc huge pages (bench/_common.py); default: the system "
                         "allocator, which is what `artseg train` runs with")
    a = ap.parse_args(argv)
    allocator = reexec_with_allocator(a.allocator)

    import torch
    import torch.nn.functional as F

    from artseg_core.nets.accel import available_cpus, set_threads
    from artseg_core.predict.model import ArtifactModel
    from artseg_core.nets.profiles import get_profile, unet_training_steps
    from artseg_core.training.classifier import ClassifierFitConfig
    from artseg_core.training.unet import dice_bce_loss
    from artseg_core.training.pipeline import stratified_split

    set_threads(available_cpus())
    load0 = load_average()
    p = get_profile(a.profile)
    torch.manual_seed(0)
    cls, unet = ArtifactModel.build_networks(p)

    x = torch.rand(p.cls_batch, 1, p.cls_size, p.cls_size)
    y = torch.arange(p.cls_batch) % 2
    log(f"{p.name}: classifier step ({p.arch}, width {p.cls_width}, {p.cls_batch} x {p.cls_size}^2) ...")
    cls_s = timeit(_train_step(cls, F.cross_entropy, x, y, p.cls_lr), repeats=a.steps)["median"]
    log(f"  {cls_s:.3f} s")

    scored = cls.num_features if p.cam_mode in ("exact", "paper") else min(p.cam_top_k, cls.num_features)
    xm = torch.rand(2, 1, p.cls_size, p.cls_size)

    @torch.no_grad()
    def masked_forward():
        cls.eval()
        cls(xm)

    log(f"masked forward (2 x {p.cls_size}^2) ...")
    fwd_s = timeit(masked_forward, repeats=a.steps)["median"] / 2
    cam_s = fwd_s * scored
    log(f"  {fwd_s:.4f} s per masked input; Score-CAM ({p.cam_mode}, {scored} channels) ~ {cam_s:.1f} s per image")

    xu = torch.rand(p.unet_batch, 1, p.unet_tile, p.unet_tile)
    yu = (torch.rand(p.unet_batch, 1, p.unet_tile, p.unet_tile) > 0.9).float()
    log(f"U-Net step ({p.unet_width} filters, {p.unet_levels} levels, {p.unet_batch} x {p.unet_tile}^2) ...")
    unet_s = timeit(_train_step(unet, dice_bce_loss, xu, yu, p.unet_lr), repeats=a.steps)["median"]
    log(f"  {unet_s:.3f} s")

    labels = torch.arange(a.fields).numpy() % 2  # half artifact fields; train()'s default 20 % validation split
    n_train = len(stratified_split(labels, 0.2, 0)[0])
    cls_steps = p.cls_epochs * max(ClassifierFitConfig().min_steps_per_epoch, math.ceil(n_train / p.cls_batch))
    n_cam = a.fields // 2
    unet_steps = unet_training_steps(p, n_train)
    parts = {"classifier_s": round(cls_steps * cls_s, 1), "scorecam_s": round(n_cam * cam_s, 1),
             "unet_s": round(unet_steps * unet_s, 1)}
    total = sum(parts.values())
    log(f"projected training on {a.fields} fields: {total / 60:.1f} min ({parts})")
    line = {"bench": "profile_cost", "profile": p.name, "fields": a.fields,
            "cls_step_s": round(cls_s, 4), "cls_steps": cls_steps, "masked_forward_s": round(fwd_s, 5),
            "scorecam_channels": scored, "scorecam_per_image_s": round(cam_s, 2), "unet_step_s": round(unet_s, 4),
            "unet_steps": unet_steps, **{f"projected_{k}": v for k, v in parts.items()},
            "projected_train_s": round(total, 1), "projected_train_h": round(total / 3600, 2),
            "allocator": allocator, "load_avg_before": load0, "load_avg_after": load_average(), **machine()}
    emit(line)
    return line


if __name__ == "__main__":
    main()
