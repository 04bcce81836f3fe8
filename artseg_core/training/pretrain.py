"""Self-supervised pretraining of the U-Net on the plate's unlabelled fields: masked-region inpainting.

Users label a few hundred fields but own thousands. Before the U-Net learns artifacts from (pseudo-)masks, it can
learn what the plate's fields look like from all of them, labelled or not: random rectangles of each crop are
hidden (filled with the crop's mean plus noise) and the network restores them. The loss is the L1 error on the
hidden pixels plus ``visible_weight`` times the L1 error on the visible ones (a denoising term: the whole input also
gets a little Gaussian noise). This is the context-encoder pretext task (Pathak et al., "Context Encoders: Feature
Learning by Inpainting", CVPR 2016) with many small holes instead of one central one, as in masked image modelling.

The same :class:`~artseg_core.nets.unet.ArtSegUNet` is trained (its 1-channel output read as the restored image);
fine-tuning (:func:`load_pretrained`) keeps every layer but the 1x1 head, which starts afresh. Fields are read in
chunks (a bounded number of pixels in memory, whatever the plate size); an unreadable file is skipped with a
warning naming it. Seeded; checkpointed like the other trainings.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from artseg_core.nets.accel import training_precision
from artseg_core.nets.unet import init_conv
from artseg_core.training.unet import StepRecord, _crop, start_steps

log = logging.getLogger("artseg.train")

#: ``kind`` entry of a pretrained-weights file.
PRETRAIN_KIND = "artseg-unet-pretrain"


@dataclass
class PretrainConfig:
    steps: int = 1500
    batch_size: int = 8
    tile: int = 256              # crop side in full-resolution pixels
    lr: float = 2e-3
    seed: int = 0
    hole_fraction: float = 0.25  # share of each crop hidden
    visible_weight: float = 0.1  # weight of the visible pixels' (denoising) term
    noise: float = 0.05          # std of the Gaussian noise added to the whole input (normalised units)
    chunk_pixels: int = 32 * 1024 * 1024  # fields held in memory at once, in pixels
    crops_per_field: int = 16    # crops drawn from a chunk's fields before the next chunk is read
    checkpoint_every: int = 100
    fast_math: bool = False      # channels-last + bf16 autocast where bf16 is native
    normalization: str = "percentile"  # imgproc.normalize method (the profile's): fine-tuning must use the same


def hide_regions(x: torch.Tensor, fraction: float, g: torch.Generator, noise: float = 0.0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Hide random rectangles covering about ``fraction`` of each crop of ``x`` (N, 1, H, W).

    Returns ``(inputs, hidden)``: the crops with hidden pixels replaced by the crop's mean plus noise of the crop's
    standard deviation (and every pixel given Gaussian noise of std ``noise``), and the bool mask of hidden pixels.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    n, _, h, w = x.shape
    hidden = torch.zeros(x.shape, dtype=torch.bool)
    lo, hi = max(2, min(h, w) // 16), max(3, min(h, w) // 4)
    for i in range(n):
        while float(hidden[i].float().mean()) < fraction:
            s = torch.randint(lo, hi + 1, (2,), generator=g).tolist()
            top = int(torch.randint(0, max(h - s[0], 0) + 1, (1,), generator=g))
            left = int(torch.randint(0, max(w - s[1], 0) + 1, (1,), generator=g))
            hidden[i, 0, top:top + s[0], left:left + s[1]] = True
    mean = x.mean(dim=(2, 3), keepdim=True)
    std = x.std(dim=(2, 3), keepdim=True)
    fill = mean + std * torch.randn(x.shape, generator=g)
    out = torch.where(hidden, fill, x)
    if noise > 0:
        out = out + noise * torch.randn(x.shape, generator=g)
    return out, hidden


def inpainting_loss(pred: torch.Tensor, target: torch.Tensor, hidden: torch.Tensor,
                    visible_weight: float) -> torch.Tensor:
    """Mean L1 error on the hidden pixels + ``visible_weight`` x mean L1 error on the visible ones."""
    err = (pred - target).abs()
    h = hidden.to(err.dtype)
    loss = (err * h).sum() / h.sum().clamp_min(1.0)
    if visible_weight > 0:
        v = 1.0 - h
        loss = loss + visible_weight * (err * v).sum() / v.sum().clamp_min(1.0)
    return loss


class _Chunks:
    """Normalised fields read a chunk at a time (seeded order; unreadable files skipped and recorded)."""

    def __init__(self, paths: list[Path], cfg: PretrainConfig, g: torch.Generator, plane: int | None = None):
        self.paths, self.cfg, self.g, self.plane = list(paths), cfg, g, plane
        self.skipped: list[str] = []
        self.bad: set[int] = set()
        self.order: list[int] = []

    @property
    def readable(self) -> int:
        """Files not (yet) found unreadable."""
        return len(self.paths) - len(self.bad)

    def next_chunk(self) -> list[np.ndarray]:
        from artseg_core.imgproc.normalize import normalize
        from artseg_core.io.images import ImageReadError, read_image

        fields, pixels = [], 0
        tries = 0
        while pixels < self.cfg.chunk_pixels and tries < 2 * len(self.paths):
            if not self.order:
                self.order = torch.randperm(len(self.paths), generator=self.g).tolist()
            i = self.order.pop()
            tries += 1
            if i in self.bad:
                continue
            try:
                a = normalize(read_image(self.paths[i], plane=self.plane), method=self.cfg.normalization)
            except ImageReadError as e:
                log.warning("pretraining: skipping %s", e)
                self.skipped.append(str(e))
                self.bad.add(i)
                continue
            fields.append(a)
            pixels += a.size
            if len(fields) >= self.readable:
                break
        if not fields:
            raise ValueError("pretraining: none of the unlabelled images could be read")
        return fields


def _crops(fields: list[np.ndarray], n: int, tile: int, g: torch.Generator) -> torch.Tensor:
    out = []
    for _ in range(n):
        a = fields[int(torch.randint(0, len(fields), (1,), generator=g))]
        h, w = a.shape
        top = int(torch.randint(0, max(h - tile, 0) + 1, (1,), generator=g))
        left = int(torch.randint(0, max(w - tile, 0) + 1, (1,), generator=g))
        out.append(_crop(a, top, left, tile))
    x = torch.from_numpy(np.stack(out)[:, None].astype(np.float32))
    if bool(torch.rand(1, generator=g) < 0.5):  # flips and 90-degree turns: the fields have no orientation
        x = x.flip(-1)
    return torch.rot90(x, int(torch.randint(0, 4, (1,), generator=g)), dims=(-2, -1))


def pretrain_unet(model: torch.nn.Module, paths: list[Path], cfg: PretrainConfig, device="cpu",
                  checkpoint: Path | None = None, progress: bool = False, plane: int | None = None) -> dict:
    """Train ``model`` (an :class:`~artseg_core.nets.unet.ArtSegUNet`) in place to restore hidden regions of
    crops of the images in ``paths``.

    Returns a dict with ``history`` (loss every 10 steps), ``steps_run``, ``resumed_from``, ``n_fields``,
    ``skipped`` (messages of unreadable files), ``final_loss`` (mean of the last 10% of steps) and ``seconds``.
    """
    if not paths:
        raise ValueError("pretraining needs at least one unlabelled image")
    if getattr(model, "out_channels", 1) != 1:
        raise ValueError("pretraining restores a 1-channel image: the U-Net must have one output channel")
    t0 = time.perf_counter()
    g, opt, sched, step, history, resumed_from = start_steps(model, cfg.lr, cfg.steps, cfg.seed, 7, device,
                                                            checkpoint, "pretraining")
    chunks = _Chunks(paths, cfg, g, plane)
    fields = chunks.next_chunk()
    per_chunk = max(1, -(-cfg.crops_per_field * len(fields) // cfg.batch_size))
    record = StepRecord("pretraining", cfg.steps, step, history, checkpoint, cfg.checkpoint_every, progress)
    prec = training_precision(model, device, cfg.fast_math)
    model.train()
    since_chunk = 0
    while step < cfg.steps:
        if since_chunk >= per_chunk and chunks.readable > len(fields):  # else every readable field is in memory
            fields = chunks.next_chunk()
            since_chunk = 0
        target = _crops(fields, cfg.batch_size, cfg.tile, g)
        x, hidden = hide_regions(target, cfg.hole_fraction, g, cfg.noise)
        with prec.autocast():
            pred = model(prec.input(x.to(device)))
        loss = inpainting_loss(pred.float(), target.to(device), hidden.to(device), cfg.visible_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        since_chunk += 1
        record.after(step, float(loss.detach()), model, opt, sched, g)
    record.close()
    prec.restore()
    model.eval()
    tail = [h["loss"] for h in history[-max(1, len(history) // 10):]]
    return {"history": history, "steps_run": step, "resumed_from": resumed_from,
            "n_fields": chunks.readable, "skipped": chunks.skipped,
            "final_loss": float(np.mean(tail)) if tail else None, "seconds": round(time.perf_counter() - t0, 1)}


def pretrain_config(profile, seed: int = 0) -> PretrainConfig:
    """The pretraining settings of a profile: its U-Net crop, batch, learning rate and ``pretrain_steps``."""
    return PretrainConfig(steps=int(profile.pretrain_steps), batch_size=int(profile.unet_batch),
                          tile=int(profile.unet_tile), lr=float(profile.unet_lr), seed=int(seed),
                          fast_math=bool(profile.train_fast_math), normalization=str(profile.normalization))


def save_pretrained(path: Path, model: torch.nn.Module, cfg: PretrainConfig, info: dict) -> Path:
    """Write the pretrained U-Net (weights, network configuration, pretraining settings and record)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keep = {k: v for k, v in info.items() if k != "history"}
    torch.save({"kind": PRETRAIN_KIND, "unet_config": model.config(), "state": model.state_dict(),
                "config": asdict(cfg), "info": keep}, path)
    return path


def read_pretrained(path: Path) -> dict:
    """The content of a file written by :func:`save_pretrained`; ValueError naming the file otherwise."""
    path = Path(path)
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a file that is not its own
        raise ValueError(f"{path}: not a pretrained U-Net file ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict) or d.get("kind") != PRETRAIN_KIND:
        raise ValueError(f"{path}: not a pretrained U-Net file (written by 'artseg pretrain')")
    return d


def check_pretrained(model: torch.nn.Module, pretrained: dict, source: str = "pretrained weights",
                     normalization: str | None = None) -> None:
    """ValueError naming ``source`` unless ``pretrained`` was made for a U-Net configured as ``model`` (and, when
    ``normalization`` is given, on images scaled that way; files without the setting used ``percentile``)."""
    cfg = model.config()
    if pretrained["unet_config"] != cfg:
        raise ValueError(f"{source}: pretrained for a U-Net {pretrained['unet_config']}, this profile's is {cfg}; "
                         "pretrain again with the same profile")
    used = (pretrained.get("config") or {}).get("normalization", "percentile")
    if normalization is not None and used != normalization:
        raise ValueError(f"{source}: pretrained on images under the {used!r} normalisation, this profile uses "
                         f"{normalization!r}; pretrain again with the same profile")


def load_pretrained(model: torch.nn.Module, pretrained: dict, source: str = "pretrained weights") -> None:
    """Copy pretrained weights into ``model`` for fine-tuning: every layer but the 1x1 head (which restored the
    image and now starts afresh). The network configurations must match (:func:`check_pretrained`)."""
    check_pretrained(model, pretrained, source)
    state = {k: v for k, v in pretrained["state"].items() if not k.startswith("head.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("head.") for k in missing):
        raise ValueError(f"{source}: weights do not fit the U-Net (missing {missing}, unexpected {unexpected})")
    reset_head(model)


def reset_head(model: torch.nn.Module) -> None:
    """Start the U-Net's 1x1 head afresh (as the network initialises it): after pretraining it restored images;
    fine-tuning teaches it artifact logits."""
    init_conv(model.head)
