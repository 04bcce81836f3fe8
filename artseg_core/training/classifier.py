"""Training loop of the clean/artifact classifier.

Adam (lr 0.002), ReduceLROnPlateau (x0.1 after ``plateau`` epochs without improvement of the validation loss),
early stopping, class-balanced sampling, seeded, and a checkpoint after every epoch so an interrupted training
resumes where it stopped (Ali et al., Sci Rep 2022, give the optimiser, learning rate and schedule).

Optionally (``ema_decay > 0``) an exponential moving average of the weights (Polyak & Juditsky, SIAM J Control
Optim 1992; as the "mean teacher" of Tarvainen & Valpola, NeurIPS 2017) is what is validated and kept; with
``keep="last"`` the run has a fixed budget (no early stopping) and keeps the final weights. With
``schedule="cosine"`` every epoch runs and the learning rate falls by a half cosine to 1 % of ``lr`` (Loshchilov &
Hutter, SGDR, ICLR 2017, without restarts) instead of the plateau rule.
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
from artseg_core.training.augment import augment_classifier_batch
from artseg_core.nets.accel import training_precision

log = logging.getLogger("artseg.train")


@dataclass
class ClassifierFitConfig:
    epochs: int = 60
    batch_size: int = 16
    lr: float = 0.002
    plateau: int = 10
    early_stop: int = 20
    seed: int = 0
    min_steps_per_epoch: int = 8   # small sets still get enough updates per "epoch"
    fast_math: bool = False        # channels-last + bf16 autocast where the hardware has bf16 (about 2x on CPU)
    paste_fraction: float = 0.0    # share of clean images drawn that get synthetic artifacts (paste.py), label 1
    ema_decay: float = 0.0         # > 0: validate and keep an exponential moving average of the weights (per step)
    keep: str = "best"             # best: the epoch of lowest monitored loss (early stopping) | last: all epochs, final
    schedule: str = "plateau"      # plateau: x0.1 after `plateau` bad epochs, early stopping | cosine: every epoch,
    #                                learning rate annealed to 1 % by a half cosine (no early stop; `keep` applies)


def _balanced_indices(y: np.ndarray, n: int, g: torch.Generator) -> torch.Tensor:
    counts = np.bincount(y, minlength=2).astype(np.float64)
    w = torch.tensor(1.0 / np.maximum(counts[y], 1), dtype=torch.float64)
    return torch.multinomial(w, n, replacement=True, generator=g)


@torch.no_grad()
def predict_proba(model: torch.nn.Module, x: torch.Tensor, device="cpu", batch_size: int = 32) -> np.ndarray:
    """Probability of class 1 (artifact) for a batch tensor (N,1,S,S)."""
    model.eval()
    out = []
    for i in range(0, x.shape[0], batch_size):
        logits = model(x[i:i + batch_size].to(device))
        out.append(torch.softmax(logits.float(), 1)[:, 1].cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def _paste_batch(x: torch.Tensor, y: torch.Tensor, fraction: float, g: torch.Generator):
    """A copy of the batch in which ``fraction`` of the clean images carry synthetic artifacts and label 1."""
    from artseg_core.training.paste import paste_into_batch

    x, y = x.clone(), y.clone()
    for i in paste_into_batch(x, y.numpy() == 0, fraction, g):
        y[i] = 1
    return x, y


class _EMA:
    """Exponential moving average of a network's parameters and buffers (integer buffers copied)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        import copy

        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for avg, cur in zip(self.model.state_dict().values(), model.state_dict().values()):
            if avg.dtype.is_floating_point:
                avg.mul_(self.decay).add_(cur.detach().to(avg.dtype), alpha=1 - self.decay)
            else:
                avg.copy_(cur)


def fit_classifier(model: torch.nn.Module, x_train: torch.Tensor, y_train: np.ndarray,
                   x_val: torch.Tensor | None, y_val: np.ndarray | None, cfg: ClassifierFitConfig,
                   device="cpu", checkpoint: Path | None = None, progress: bool = False) -> dict:
    """Train ``model`` in place; kept are the weights of the best epoch (lowest monitored loss; ``keep="best"``)
    or the final ones (``keep="last"``), of the weight average when ``ema_decay > 0``.

    Parameters
    ----------
    x_train, x_val : tensor (N, 1, S, S)
        Normalised, resized images. ``x_val`` may be None (then the training loss is monitored).
    y_train, y_val : int arrays of 0 (clean) / 1 (artifact)
    checkpoint : path, optional
        Written after every epoch; when it exists at start, training resumes from it.

    Returns
    -------
    dict
        ``history`` (per-epoch losses and learning rates), ``best_epoch``, ``epochs_run``, ``resumed_from``,
        ``kept`` (which weights were kept) and ``weight_average_decay``.
    """
    if cfg.keep not in ("best", "last"):
        raise ValueError(f"keep must be 'best' or 'last', got {cfg.keep!r}")
    if cfg.schedule not in ("plateau", "cosine"):
        raise ValueError(f"schedule must be 'plateau' or 'cosine', got {cfg.schedule!r}")
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), got {cfg.ema_decay}")
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    model.to(device)
    ema = _EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    judged = ema.model if ema is not None else model  # the network validated and kept
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    cosine = cfg.schedule == "cosine"
    cosine_epochs = max(cfg.epochs, 1)  # the schedule's length; a resumed checkpoint must have the same
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cosine_epochs, eta_min=0.01 * cfg.lr)
             if cosine else torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.1,
                                                                       patience=cfg.plateau))
    y_train_t = torch.as_tensor(np.asarray(y_train), dtype=torch.long)
    have_val = x_val is not None and len(x_val) > 0
    y_val_t = torch.as_tensor(np.asarray(y_val), dtype=torch.long) if have_val else None
    state = {"epoch": 0, "best_loss": math.inf, "best_epoch": -1, "bad_epochs": 0, "history": []}
    best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    resumed_from = None
    ck = load_checkpoint(checkpoint)
    if ck is not None:
        restore_training(ck, model, opt, sched, g)
        if ema is not None:
            if "ema" not in ck:
                raise ValueError(f"{checkpoint}: written without a weight average; remove it to train afresh")
            ema.model.load_state_dict(ck["ema"])
        if cosine and sched.T_max != cosine_epochs:
            raise ValueError(f"{checkpoint}: its cosine schedule runs {sched.T_max} epochs, this training "
                             f"{cfg.epochs}; remove it to train afresh")
        best_weights = ck["best_weights"]
        state = ck["state"]
        resumed_from = state["epoch"]
        log.info("classifier: resuming from epoch %d (%s)", resumed_from, checkpoint)

    n = len(y_train_t)
    steps = max(cfg.min_steps_per_epoch, math.ceil(n / cfg.batch_size))
    prec = training_precision(model, device, cfg.fast_math)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.epochs, initial=state["epoch"], desc="classifier", unit="epoch")
    while state["epoch"] < cfg.epochs and (cosine or cfg.keep == "last" or state["bad_epochs"] < cfg.early_stop):
        model.train()
        idx = _balanced_indices(y_train_t.numpy(), steps * cfg.batch_size, g)
        tot = 0.0
        for s in range(steps):
            b = idx[s * cfg.batch_size:(s + 1) * cfg.batch_size]
            xb, yb = x_train[b], y_train_t[b]
            if cfg.paste_fraction > 0:
                xb, yb = _paste_batch(xb, yb, cfg.paste_fraction, g)
            xb = prec.input(augment_classifier_batch(xb, g).to(device))
            with prec.autocast():
                logits = model(xb)
            loss = F.cross_entropy(logits.float(), yb.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ema is not None:
                ema.update(model)
            tot += float(loss.detach())
        train_loss = tot / steps
        if have_val:
            judged.eval()
            with torch.no_grad():
                logits = torch.cat([judged(prec.input(x_val[i:i + 64].to(device))).float().cpu()
                                    for i in range(0, len(x_val), 64)])
            val_loss = float(F.cross_entropy(logits, y_val_t))
            val_acc = float((logits.argmax(1) == y_val_t).float().mean())
        else:
            val_loss, val_acc = train_loss, float("nan")
        if cosine:
            sched.step()
        else:
            sched.step(val_loss)
        state["epoch"] += 1
        state["history"].append({"epoch": state["epoch"], "train_loss": train_loss, "val_loss": val_loss,
                                 "val_acc": val_acc, "lr": opt.param_groups[0]["lr"]})
        if val_loss < state["best_loss"] - 1e-6:
            state.update(best_loss=val_loss, best_epoch=state["epoch"], bad_epochs=0)
            best_weights = {k: v.detach().cpu().clone() for k, v in judged.state_dict().items()}
        else:
            state["bad_epochs"] += 1
        log.info("classifier epoch %d: train_loss %.4f val_loss %.4f val_acc %.3f lr %.1e", state["epoch"],
                 train_loss, val_loss, val_acc, opt.param_groups[0]["lr"])
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{train_loss:.3f}", val=f"{val_loss:.3f}")
        if checkpoint is not None:
            save_checkpoint(checkpoint, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                         "scheduler": sched.state_dict(),
                                         "generator": g.get_state(), "best_weights": best_weights, "state": state,
                                         **({"ema": ema.model.state_dict()} if ema is not None else {})})
    if bar is not None:
        bar.close()
    model.load_state_dict(best_weights if cfg.keep == "best" else judged.state_dict())
    prec.restore()
    model.eval()
    return {"history": state["history"], "best_epoch": state["best_epoch"], "epochs_run": state["epoch"],
            "resumed_from": resumed_from,
            "kept": (("final weight average" if ema is not None else "final weights") if cfg.keep == "last"
                     else f"epoch {state['best_epoch']} (lowest monitored loss)"),
            "weight_average_decay": cfg.ema_decay}
