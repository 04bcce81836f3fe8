"""Training loop of the U-Net on (pseudo-)masks, on random full-resolution crops.

Crops keep small artifacts at their real size whatever the image size (1080x1080, 2556x2156, ...). Half of the
crops of images that have foreground are centred on a foreground pixel, so small artifacts are seen often enough.
Loss: binary cross-entropy + soft Dice. Adam with a cosine learning-rate decay. Seeded; checkpointed every
``checkpoint_every`` steps so an interrupted training resumes.

Targets may be bool masks or uint8 maps with :data:`IGNORE` (2) for pixels left out of the loss (the uncertain band
of a pseudo-mask). Images marked as hand-masked (``hand``) are drawn for ``hand_fraction`` of the crops and scored
by a loss term of their own (weight ``hand_weight``), so a few exact masks are neither diluted by nor averaged into
the pseudo-masks. Images marked clean (``clean``) are exact background; with ``paste_fraction > 0`` that share of
their crops get synthetic artifacts drawn in (:mod:`artseg_core.training.paste`), whose masks are exact.
:func:`masked_share` tells a training that collapsed (one value everywhere) from one that learned its targets.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from artseg_core.training.checkpoint import load_checkpoint, restore_training, save_checkpoint
from artseg_core.training.augment import augment_segmentation_batch
from artseg_core.nets.accel import training_precision

log = logging.getLogger("artseg.train")


@dataclass
class UNetFitConfig:
    steps: int = 3000
    batch_size: int = 4
    tile: int = 512
    lr: float = 1e-3
    seed: int = 0
    foreground_crop_fraction: float = 0.5
    checkpoint_every: int = 50
    fast_math: bool = False   # channels-last + bf16 autocast where the hardware has bf16 (about 2x on CPU)
    hand_fraction: float = 0.25  # share of crops drawn from hand-masked images (when there are any)
    hand_weight: float = 1.0     # weight of their loss term
    paste_fraction: float = 0.0  # share of clean-field crops given synthetic artifacts with exact masks (paste.py)


#: Target value of pixels that do not enter the loss.
IGNORE = 2
#: A U-Net that reaches its threshold near the target foreground of fewer than this share of its own training
#: fields has collapsed (it learned nothing it can localise; its masks would be empty).
MIN_MASKED_SHARE = 0.25


def _crop(img: np.ndarray, top: int, left: int, tile: int) -> np.ndarray:
    h, w = img.shape
    out = img[max(top, 0):top + tile, max(left, 0):left + tile]
    ph, pw = tile - out.shape[0], tile - out.shape[1]
    if ph or pw:  # image smaller than a tile: reflect-pad (edge mode for tiny images)
        mode = "reflect" if min(out.shape) > max(ph, pw) else "edge"
        out = np.pad(out, ((0, ph), (0, pw)), mode=mode)
    return out


def _centred_at(c, shape: tuple[int, int], tile: int) -> tuple[int, int]:
    """Top-left corner of a ``tile`` crop centred on pixel ``c`` (row, column), kept inside the image."""
    h, w = shape
    return int(np.clip(c[0] - tile // 2, 0, max(h - tile, 0))), int(np.clip(c[1] - tile // 2, 0, max(w - tile, 0)))


def _sample_crops(images, masks, fg_coords, idx, tile, g: torch.Generator, fg_frac: float):
    xs, ys = [], []
    for i in idx.tolist():
        img, m = images[i], masks[i]
        h, w = img.shape
        r = torch.rand(3, generator=g).tolist()
        coords = fg_coords[i]
        if coords is not None and len(coords) and r[0] < fg_frac:
            top, left = _centred_at(coords[int(r[1] * len(coords)) % len(coords)], img.shape, tile)
        else:
            top = int(r[1] * max(h - tile + 1, 1))
            left = int(r[2] * max(w - tile + 1, 1))
        xs.append(_crop(img, top, left, tile))
        ys.append(_crop(m.astype(np.float32, copy=False), top, left, tile))
    x = torch.from_numpy(np.stack(xs)[:, None].astype(np.float32))
    y = torch.from_numpy(np.stack(ys)[:, None].astype(np.float32))
    return x, y


def _paste_into(x: torch.Tensor, y: torch.Tensor, clean: np.ndarray, fraction: float, g: torch.Generator) -> None:
    """In place: ``fraction`` of the crops of clean fields get synthetic artifacts and their masks as targets."""
    from artseg_core.training.paste import paste_into_batch

    for i, m in paste_into_batch(x, clean, fraction, g).items():
        y[i, 0] = torch.from_numpy(m.astype(np.float32))


def start_steps(model: torch.nn.Module, lr: float, steps: int, seed: int, stream: int, device, checkpoint,
                what: str):
    """Seeded start of a step-based training: Adam with a cosine decay of its learning rate from ``lr`` to 5 % of
    it over ``steps`` steps, and the batch generator (seed ``seed + stream``); resumed from ``checkpoint`` when
    there is one. Returns ``(generator, optimizer, scheduler, step, history, resumed_from)``."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + stream)
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / max(steps, 1))))
    ck = load_checkpoint(checkpoint)
    if ck is None:
        return g, opt, sched, 0, [], None
    restore_training(ck, model, opt, sched, g)
    log.info("%s: resuming from step %d (%s)", what, ck["step"], checkpoint)
    return g, opt, sched, ck["step"], ck["history"], ck["step"]


class StepRecord:
    """The record of a step-based training: mean loss every 10 steps (``history``, logged), an optional progress
    bar, and a checkpoint every ``every`` steps and at the last one."""

    def __init__(self, what: str, steps: int, step: int, history: list, checkpoint, every: int, progress: bool):
        self.what, self.steps, self.history, self.checkpoint, self.every = what, steps, history, checkpoint, every
        self.running, self.bar = 0.0, None
        if progress:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=steps, initial=step, desc=what, unit="step")

    def after(self, step: int, loss: float, model, opt, sched, g) -> None:
        """Record step ``step`` (1-based) and its loss; write the checkpoint when due."""
        self.running += loss
        if step % 10 == 0 or step == self.steps:
            k = 10 if step % 10 == 0 else step % 10
            self.history.append({"step": step, "loss": self.running / k, "lr": opt.param_groups[0]["lr"]})
            log.info("%s step %d: loss %.4f", self.what, step, self.running / k)
            self.running = 0.0
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.3f}")
        if self.checkpoint is not None and (step % self.every == 0 or step == self.steps):
            save_checkpoint(self.checkpoint, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                              "scheduler": sched.state_dict(), "generator": g.get_state(),
                                              "step": step, "history": self.history})

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy plus (1 - soft Dice) computed over the whole batch; pixels whose target is
    :data:`IGNORE` count in neither term (a batch without any such pixel gives the plain loss)."""
    valid = target != IGNORE
    if bool(valid.all()):
        bce = F.binary_cross_entropy_with_logits(logits, target)
        p = torch.sigmoid(logits)
        inter = (p * target).sum()
        dice = (2 * inter + 1.0) / (p.sum() + target.sum() + 1.0)
        return bce + (1 - dice)
    w = valid.to(logits.dtype)
    t = torch.where(valid, target, torch.zeros_like(target))
    bce = (F.binary_cross_entropy_with_logits(logits, t, reduction="none") * w).sum() / w.sum().clamp_min(1.0)
    p = torch.sigmoid(logits) * w
    inter = (p * t).sum()
    dice = (2 * inter + 1.0) / (p.sum() + t.sum() + 1.0)
    return bce + (1 - dice)


def _pick(n: int, batch: int, hand: np.ndarray | None, frac: float, g: torch.Generator) -> torch.Tensor:
    """Image indices of one batch: uniform, or ``round(frac * batch)`` (at least 1) from the hand-masked ones."""
    if hand is None or not hand.any() or frac <= 0:
        return torch.randint(0, n, (batch,), generator=g)
    hi, other = np.flatnonzero(hand), np.flatnonzero(~hand)
    k = batch if not len(other) else min(batch, max(1, int(round(frac * batch))))
    a = torch.as_tensor(hi)[torch.randint(0, len(hi), (k,), generator=g)]
    if k == batch:
        return a
    b = torch.as_tensor(other)[torch.randint(0, len(other), (batch - k,), generator=g)]
    return torch.cat([a, b])


def fit_unet(model: torch.nn.Module, images: list[np.ndarray], masks: list[np.ndarray], cfg: UNetFitConfig,
             device="cpu", checkpoint: Path | None = None, progress: bool = False, on_step=None,
             hand: list[bool] | np.ndarray | None = None, clean: list[bool] | np.ndarray | None = None) -> dict:
    """Train ``model`` in place on crops of normalised ``images`` with binary ``masks`` (same shapes).

    ``masks`` may hold :data:`IGNORE` for pixels left out of the loss. ``hand`` marks images whose masks are
    hand-drawn: they fill ``cfg.hand_fraction`` of every batch and have their own loss term (``cfg.hand_weight``).
    ``clean`` marks clean fields (all-background targets): with ``cfg.paste_fraction > 0``, that share of their crops
    get synthetic artifacts and the artifacts' exact masks as targets.

    ``on_step(step, loss)`` is called after every step (after its checkpoint is written), e.g. for a progress
    display; an exception it raises interrupts training, which the checkpoint then resumes.

    Returns a dict with the loss history (every 10 steps), ``steps_run`` and ``resumed_from``.
    """
    if len(images) != len(masks) or not images:
        raise ValueError("fit_unet needs the same, non-zero number of images and masks")
    for a, m in zip(images, masks):
        if a.shape != m.shape:
            raise ValueError(f"image and mask shapes differ: {a.shape} vs {m.shape}")
    g, opt, sched, step, history, resumed_from = start_steps(model, cfg.lr, cfg.steps, cfg.seed, 1, device,
                                                            checkpoint, "U-Net")
    fg_coords = []
    for m in masks:
        fg = m == 1 if m.dtype != bool else m
        nz = np.argwhere(fg[::4, ::4]) * 4 if fg.any() else None
        fg_coords.append(nz)
    hand_a = None if hand is None else np.asarray(hand, bool)
    if hand_a is not None and len(hand_a) != len(images):
        raise ValueError("hand must have one entry per image")
    if hand_a is not None and not hand_a.any():
        hand_a = None
    clean_a = None if clean is None or cfg.paste_fraction <= 0 else np.asarray(clean, bool)
    if clean_a is not None and len(clean_a) != len(images):
        raise ValueError("clean must have one entry per image")
    record = StepRecord("U-Net", cfg.steps, step, history, checkpoint, cfg.checkpoint_every, progress)
    prec = training_precision(model, device, cfg.fast_math)
    model.train()
    while step < cfg.steps:
        if hand_a is None:
            idx = torch.randint(0, len(images), (cfg.batch_size,), generator=g)
        else:
            idx = _pick(len(images), cfg.batch_size, hand_a, cfg.hand_fraction, g)
        x, y = _sample_crops(images, masks, fg_coords, idx, cfg.tile, g, cfg.foreground_crop_fraction)
        if clean_a is not None:
            _paste_into(x, y, clean_a[idx.numpy()], cfg.paste_fraction, g)
        x, y = augment_segmentation_batch(x, y, g)
        with prec.autocast():
            logits = model(prec.input(x.to(device)))
        y = y.to(device)
        if hand_a is None:
            loss = dice_bce_loss(logits.float(), y)
        else:  # the hand-masked crops' own term beside the pseudo-mask term
            is_hand = torch.as_tensor(hand_a[idx.numpy()], device=logits.device)
            loss = cfg.hand_weight * dice_bce_loss(logits.float()[is_hand], y[is_hand])
            if bool((~is_hand).any()):
                loss = loss + dice_bce_loss(logits.float()[~is_hand], y[~is_hand])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        record.after(step, float(loss.detach()), model, opt, sched, g)
        if on_step is not None:
            on_step(step, float(loss.detach()))
    record.close()
    prec.restore()
    model.eval()
    return {"history": history, "steps_run": step, "resumed_from": resumed_from}


@torch.no_grad()
def masked_share(model: torch.nn.Module, images: list[np.ndarray], targets: list[np.ndarray], tile: int,
                 threshold: float, device="cpu", max_images: int = 16) -> float:
    """Share of (up to ``max_images``) training fields with target foreground where the U-Net reaches ``threshold``
    anywhere in a training-size crop (``tile``) centred on their foreground: near 0 when the network masks nothing
    even where it was taught to (see :data:`MIN_MASKED_SHARE`)."""
    hits, n = 0, 0
    was_training = model.training
    model.eval()
    for img, t in zip(images, targets):
        fg = np.argwhere(np.asarray(t) == 1)
        if not len(fg):
            continue
        crop = _crop(img, *_centred_at(fg[len(fg) // 2], img.shape, tile), tile)
        x = torch.from_numpy(np.ascontiguousarray(crop, np.float32))[None, None]
        hits += bool(float(model.probability(x.to(device)).float().max()) >= threshold)
        n += 1
        if n == max_images:
            break
    model.train(was_training)
    return hits / n if n else 1.0
