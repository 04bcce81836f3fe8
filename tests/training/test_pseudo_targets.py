"""U-Net targets: the ignore band of pseudo-masks and the hand masks' own, oversampled loss term."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from artseg_core.training.pipeline import pseudo_target
from artseg_core.training.unet import IGNORE, UNetFitConfig, _pick, dice_bce_loss, fit_unet


def test_pseudo_target_has_confident_foreground_background_and_an_ignored_band():
    sal = np.array([[0.0, 0.1, 0.25], [0.3, 0.5, 0.9]], np.float32)
    plain = pseudo_target(sal, 0.5, 0.0)
    assert plain.dtype == bool and plain.tolist() == [[False, False, False], [False, True, True]]
    t = pseudo_target(sal, 0.5, 0.5)  # band [0.25, 0.5)
    assert t.dtype == np.uint8
    assert t.tolist() == [[0, 0, IGNORE], [IGNORE, 1, 1]]


def test_ignored_pixels_count_in_neither_loss_term():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 8, 8, requires_grad=True)
    target = (torch.rand(2, 1, 8, 8) > 0.7).float()
    band = torch.zeros_like(target, dtype=torch.bool)
    band[:, :, 2:5, 3:6] = True
    t = torch.where(band, torch.full_like(target, IGNORE), target)
    loss = dice_bce_loss(logits, t)
    loss.backward()
    assert float(logits.grad[band].abs().max()) == 0.0          # no gradient from the band
    assert float(logits.grad[~band].abs().max()) > 0.0
    with torch.no_grad():  # whatever the network says in the band, the loss is the same
        other = logits.clone()
        other[band] = 50.0
        assert float(dice_bce_loss(other, t)) == pytest.approx(float(loss), rel=1e-6)
        # and it differs from treating the band as background (the plain bool pseudo-mask)
        assert float(dice_bce_loss(logits, torch.where(band, 0.0, target))) != pytest.approx(float(loss), rel=1e-3)
    # without ignored pixels the loss is the plain BCE + Dice
    plain = dice_bce_loss(logits.detach(), target)
    p = torch.sigmoid(logits.detach())
    ref = torch.nn.functional.binary_cross_entropy_with_logits(logits.detach(), target) + 1 - (
        (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1))
    assert float(plain) == pytest.approx(float(ref), rel=1e-6)


def test_hand_masked_images_fill_their_share_of_every_batch():
    g = torch.Generator().manual_seed(0)
    hand = np.zeros(40, bool)
    hand[[3, 17]] = True
    for _ in range(20):
        idx = _pick(40, 8, hand, 0.25, g).numpy()
        assert len(idx) == 8 and hand[idx].sum() == 2       # 25 % of 8, although they are 5 % of the images
    idx = _pick(40, 8, hand, 0.01, g).numpy()
    assert hand[idx].sum() == 1                               # at least one
    idx = _pick(2, 8, np.array([True, True]), 0.25, g).numpy()
    assert len(idx) == 8 and set(idx) <= {0, 1}               # only hand-masked images: all of the batch


def test_hand_masks_enter_through_their_own_loss_term():
    """The hand-masked crops form a term of their own: with weight 0 their targets do not matter, with weight 1 they
    do, and weight 3 adds exactly twice that term again (one step, lr 0, so the network is the same every time)."""
    from artseg_core.nets.unet import ArtSegUNet

    rng = np.random.default_rng(0)
    imgs = [rng.normal(0, 0.3, (32, 32)).astype(np.float32) for _ in range(6)]
    pseudo = [np.zeros((32, 32), bool) for _ in range(6)]
    hand_a = [np.zeros((32, 32), bool) for _ in range(6)]
    hand_b = [m.copy() for m in hand_a]
    for m in hand_b[:2]:
        m[8:20, 8:20] = True
    hand = [True, True, False, False, False, False]

    def first_loss(hand_masks, weight, flags=hand):
        torch.manual_seed(0)
        net = ArtSegUNet(in_channels=1, out_channels=1, width=4, levels=2)
        seen = []
        masks = [hand_masks[i] if hand[i] else pseudo[i] for i in range(6)]
        fit_unet(net, imgs, masks, UNetFitConfig(steps=1, batch_size=4, tile=32, lr=0.0, seed=0, hand_fraction=0.5,
                                                 hand_weight=weight), hand=flags,
                 on_step=lambda step, loss: seen.append(loss))
        return seen[0]

    assert first_loss(hand_a, 0.0) == pytest.approx(first_loss(hand_b, 0.0), rel=1e-6)   # only the pseudo term
    w1_a, w1_b, w3_b = first_loss(hand_a, 1.0), first_loss(hand_b, 1.0), first_loss(hand_b, 3.0)
    assert abs(w1_a - w1_b) > 1e-3                                                      # the hand term counts
    hand_term = w1_b - first_loss(hand_b, 0.0)
    assert hand_term > 0 and w3_b == pytest.approx(first_loss(hand_b, 0.0) + 3 * hand_term, rel=1e-5)


@pytest.mark.parametrize("n_masked", [3, 12])
def test_a_few_hand_masked_fields_all_train_and_many_are_also_held_out(tmp_path, n_masked):
    """Fewer than MIN_MASKS_FOR_VALIDATION hand masks: every masked field is in the training split (one masked
    validation field used to choose every threshold alone and was never trained on); with more, or when the masks
    only calibrate (use_masks_for_training=False), the usual stratified split holds some out."""
    import csv
    import shutil

    from artseg_core.data.phantoms import make_plate
    from artseg_core.io.labels import load_labeled_set
    from artseg_core.training.pipeline import MIN_MASKS_FOR_VALIDATION, _read_fields

    plate = tmp_path / "plate"
    make_plate(plate, rows=4, cols=5, fields=2, prevalence=0.5, seed=1, shape=(48, 48))
    with open(plate / "labels.csv") as fh:
        art = sorted(r["image"] for r in csv.DictReader(fh) if r["label"] == "artifact")
    masks = tmp_path / "hand"
    masks.mkdir()
    for name in art[:n_masked]:
        stem = name.rsplit(".", 1)[0]
        shutil.copy(plate / "masks" / f"{stem}.tif", masks / f"{stem}.tif")
    samples = load_labeled_set(plate / "images", plate / "labels.csv", masks=masks)
    plain = _read_fields(samples, None, 0.3, 0, False, normalization="percentile")
    assert len(plain.true_masks) == n_masked and any(int(i) in plain.true_masks for i in plain.va)
    f = _read_fields(samples, None, 0.3, 0, False, normalization="percentile", masks_train=True)
    masked_val = [int(i) for i in f.va if int(i) in f.true_masks]
    assert sorted(np.concatenate([f.tr, f.va]).tolist()) == list(range(len(samples)))
    if n_masked < MIN_MASKS_FOR_VALIDATION:
        assert masked_val == [] and len(f.va) < len(plain.va)
    else:
        assert f.tr.tolist() == plain.tr.tolist() and f.va.tolist() == plain.va.tolist() and masked_val
