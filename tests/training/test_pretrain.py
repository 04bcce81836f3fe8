"""Self-supervised pretraining of the U-Net (masked-region inpainting on unlabelled fields) and its fine-tuning."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from artseg_core.data import phantoms
from artseg_core.imgproc.normalize import normalize
from artseg_core.nets.unet import ArtSegUNet
from artseg_core.training.pretrain import (PretrainConfig, hide_regions, inpainting_loss, load_pretrained,
                                           pretrain_unet, read_pretrained, save_pretrained,
                                           check_pretrained)

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory):
    """A folder of 12 unlabelled phantom fields (some with artifacts) and one broken file."""
    plate = tmp_path_factory.mktemp("unl")
    phantoms.make_plate(plate, rows=2, cols=3, fields=2, prevalence=0.3, seed=11, shape=(128, 128))
    (plate / "images" / "broken.tif").write_bytes(b"not an image")
    return plate / "images"


def test_hidden_regions_cover_the_fraction_and_keep_the_rest():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 64, 64)
    y, hidden = hide_regions(x, 0.25, g)
    cover = hidden.float().mean(dim=(1, 2, 3))
    assert bool((cover >= 0.25).all()) and bool((cover < 0.5).all())
    assert torch.equal(y[~hidden], x[~hidden])  # no noise asked: visible pixels untouched
    assert not torch.allclose(y[hidden], x[hidden])
    # the filling has the crop's mean, not the hidden pixels' own values
    assert abs(float(y[hidden].mean()) - float(x.mean())) < 0.2
    with pytest.raises(ValueError):
        hide_regions(x, 1.0, g)


def test_inpainting_loss_counts_hidden_pixels_and_weighs_the_visible_ones():
    t = torch.zeros(1, 1, 4, 4)
    hidden = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    hidden[..., :2, :] = True
    pred = t.clone()
    assert float(inpainting_loss(pred, t, hidden, 0.1)) == 0.0
    pred[..., :2, :] = 1.0  # wrong on the hidden half only
    assert float(inpainting_loss(pred, t, hidden, 0.1)) == pytest.approx(1.0)
    pred = t.clone()
    pred[..., 2:, :] = 1.0  # wrong on the visible half only
    assert float(inpainting_loss(pred, t, hidden, 0.1)) == pytest.approx(0.1)
    assert float(inpainting_loss(pred, t, hidden, 0.0)) == 0.0


def _held_out_loss(net, fields, seed=123):
    """Inpainting loss on fixed crops of fields the network was not pretrained on, and the loss of copying the
    input (what an untrained restorer can always do)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(np.stack([f[:64, :64] for f in fields])[:, None].astype(np.float32))
    xin, hidden = hide_regions(x, 0.25, g)
    with torch.no_grad():
        pred = net(xin)
    return float(inpainting_loss(pred, x, hidden, 0.0)), float(inpainting_loss(xin, x, hidden, 0.0))


def test_pretraining_learns_to_restore_hidden_regions(unlabelled, tmp_path):
    torch.manual_seed(0)
    net = ArtSegUNet(width=8, levels=2, scale=1)
    held = [normalize(phantoms.make_field((64, 64), seed=s, artifacts=[]).image) for s in (90, 91, 92, 93)]
    before, copy = _held_out_loss(net, held)
    cfg = PretrainConfig(steps=150, batch_size=8, tile=64, lr=3e-3, seed=0, chunk_pixels=6 * 128 * 128)
    paths = sorted(unlabelled.glob("*.tif"))
    info = pretrain_unet(net, paths, cfg, checkpoint=tmp_path / "pre.ckpt")
    after, _ = _held_out_loss(net, held)
    assert info["steps_run"] == 150 and info["n_fields"] == len(paths) - 1
    assert len(info["skipped"]) == 1 and "broken.tif" in info["skipped"][0]  # named, and the rest went on
    assert after < 0.7 * before, (before, after)
    assert after < copy, (after, copy)  # it restores better than leaving the filling in place
    # the checkpoint resumes: asking for more steps continues from 150
    more = pretrain_unet(net, paths, PretrainConfig(**{**cfg.__dict__, "steps": 160}), checkpoint=tmp_path / "pre.ckpt")
    assert more["resumed_from"] == 150 and more["steps_run"] == 160


def test_fine_tuning_keeps_every_layer_but_the_head(tmp_path):
    torch.manual_seed(0)
    a = ArtSegUNet(width=8, levels=2)
    with torch.no_grad():
        a.head.weight.fill_(3.0)
        a.head.bias.fill_(3.0)
    path = save_pretrained(tmp_path / "p.pt", a, PretrainConfig(steps=1), {"n_fields": 3, "history": [1]})
    d = read_pretrained(path)
    assert d["info"] == {"n_fields": 3}
    torch.manual_seed(1)
    b = ArtSegUNet(width=8, levels=2)
    load_pretrained(b, d, str(path))
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        if k.startswith("head."):
            assert not torch.equal(va, vb), k
        else:
            assert torch.equal(va, vb), k
    with pytest.raises(ValueError, match="pretrain again with the same profile"):
        load_pretrained(ArtSegUNet(width=16, levels=2), d, str(path))
    check_pretrained(b, d, str(path), "percentile")  # pretrained on percentile-scaled fields, the default
    with pytest.raises(ValueError, match="p.pt: pretrained on images under the 'percentile' normalisation"):
        check_pretrained(b, d, str(path), "quartile")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    with pytest.raises(ValueError, match="bad.pt: not a pretrained U-Net file"):
        read_pretrained(bad)
    torch.save({"kind": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt: not a pretrained U-Net file"):
        read_pretrained(tmp_path / "other.pt")
