"""Training loops: an interrupted training resumes from its checkpoint to the same result; seeds reproduce."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from artseg_core.nets.resnet import resnet18
from artseg_core.nets.unet import ArtSegUNet
from artseg_core.training.classifier import ClassifierFitConfig, fit_classifier
from artseg_core.training.unet import UNetFitConfig, fit_unet


def _seeded(build, *args, **kw):
    torch.manual_seed(0)
    return build(*args, **kw)


def _cls_data():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(24, 1, 32, 32, generator=g)
    y = np.array([0, 1] * 12)
    x[y == 1, :, 10:20, 10:20] += 2.0  # a bright square marks the "artifact" class
    return x, y


def test_classifier_resumes_to_the_same_weights(tmp_path):
    torch.set_num_threads(1)
    x, y = _cls_data()
    cfg = ClassifierFitConfig(epochs=4, batch_size=8, seed=3, min_steps_per_epoch=2)
    ref = _seeded(resnet18, width=4)
    fit_classifier(ref, x, y, x[:8], y[:8], cfg)
    ck = tmp_path / "c.ckpt"
    part = _seeded(resnet18, width=4)
    h1 = fit_classifier(part, x, y, x[:8], y[:8], ClassifierFitConfig(**{**cfg.__dict__, "epochs": 2}), checkpoint=ck)
    assert h1["epochs_run"] == 2 and ck.is_file()
    resumed = resnet18(width=4)  # a fresh process: other weights, replaced from the checkpoint
    h2 = fit_classifier(resumed, x, y, x[:8], y[:8], cfg, checkpoint=ck)
    assert h2["resumed_from"] == 2 and h2["epochs_run"] == 4 and len(h2["history"]) == 4
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)


def test_classifier_weight_average_is_what_is_kept_and_resumes(tmp_path):
    """ema_decay > 0: the kept weights are the running average of every step's weights (not the last step's);
    keep='last' runs every epoch (no early stop); an interrupted run resumes to the same average."""
    from artseg_core.training.classifier import _EMA

    torch.set_num_threads(1)
    x, y = _cls_data()
    cfg = ClassifierFitConfig(epochs=4, batch_size=8, seed=3, min_steps_per_epoch=2, ema_decay=0.5, keep="last",
                              early_stop=1)
    plain = _seeded(resnet18, width=4)
    fit_classifier(plain, x, y, x[:8], y[:8], ClassifierFitConfig(**{**cfg.__dict__, "ema_decay": 0.0}))
    avg = _seeded(resnet18, width=4)
    h = fit_classifier(avg, x, y, x[:8], y[:8], cfg)
    assert h["epochs_run"] == 4  # keep='last' ignores early_stop=1
    assert h["kept"] == "final weight average" and h["weight_average_decay"] == 0.5
    # same seed, same steps: the raw weights of both runs are equal, so the average must differ from them
    w_plain, w_avg = plain.conv1.weight, avg.conv1.weight
    assert not torch.allclose(w_plain, w_avg)
    # the average of a network with itself stays put; with another network it moves by (1 - decay)
    e = _EMA(plain, 0.5)
    e.update(plain)
    torch.testing.assert_close(e.model.conv1.weight, w_plain)
    zero = resnet18(width=4)
    torch.nn.init.zeros_(zero.conv1.weight)
    e.update(zero)
    torch.testing.assert_close(e.model.conv1.weight, 0.5 * w_plain)
    # resume
    ck = tmp_path / "e.ckpt"
    fit_classifier(_seeded(resnet18, width=4), x, y, x[:8], y[:8], ClassifierFitConfig(**{**cfg.__dict__, "epochs": 2}),
                   checkpoint=ck)
    resumed = resnet18(width=4)
    h2 = fit_classifier(resumed, x, y, x[:8], y[:8], cfg, checkpoint=ck)
    assert h2["resumed_from"] == 2
    for (k, a), b in zip(avg.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
    with pytest.raises(ValueError, match="keep"):
        fit_classifier(resnet18(width=4), x, y, None, None, ClassifierFitConfig(keep="first"))


def test_classifier_cosine_schedule_runs_every_epoch_and_resumes(tmp_path, monkeypatch):
    """schedule='cosine': every epoch runs (no early stop), the learning rate falls by a half cosine from lr to 1 % of
    it at the last epoch, and an interrupted run resumes to the same weights."""
    import math

    torch.set_num_threads(1)
    x, y = _cls_data()
    cfg = ClassifierFitConfig(epochs=4, batch_size=8, seed=3, min_steps_per_epoch=2, lr=0.002, early_stop=1,
                              schedule="cosine")
    ref = _seeded(resnet18, width=4)
    h = fit_classifier(ref, x, y, x[:8], y[:8], cfg)
    assert h["epochs_run"] == 4
    lrs = [e["lr"] for e in h["history"]]
    want = [0.00002 + 0.5 * (0.002 - 0.00002) * (1 + math.cos(math.pi * e / 4)) for e in range(1, 5)]
    np.testing.assert_allclose(lrs, want, rtol=1e-6)
    # interrupted after epoch 2 of 4 (the checkpoint is written, then the run dies), resumed in a fresh network
    import artseg_core.training.classifier as clsmod

    ck = tmp_path / "c.ckpt"
    real_save = clsmod.save_checkpoint

    def save_then_die(path, payload):
        real_save(path, payload)
        if payload["state"]["epoch"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(clsmod, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        fit_classifier(_seeded(resnet18, width=4), x, y, x[:8], y[:8], cfg, checkpoint=ck)
    monkeypatch.setattr(clsmod, "save_checkpoint", real_save)
    # another budget than the checkpoint's schedule is refused (the cosine would not reach its end)
    with pytest.raises(ValueError, match="cosine"):
        fit_classifier(resnet18(width=4), x, y, x[:8], y[:8], ClassifierFitConfig(**{**cfg.__dict__, "epochs": 6}),
                       checkpoint=ck)
    resumed = resnet18(width=4)
    h2 = fit_classifier(resumed, x, y, x[:8], y[:8], cfg, checkpoint=ck)
    assert h2["resumed_from"] == 2 and h2["epochs_run"] == 4
    assert [e["lr"] for e in h2["history"]] == lrs
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
    with pytest.raises(ValueError, match="schedule"):
        fit_classifier(resnet18(width=4), x, y, None, None, ClassifierFitConfig(schedule="step"))


def test_unet_resumes_to_the_same_weights(tmp_path):
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    imgs = [rng.random((40, 48), dtype=np.float32) for _ in range(3)]
    masks = [im > 0.8 for im in imgs]
    cfg = UNetFitConfig(steps=6, batch_size=2, tile=32, seed=1, checkpoint_every=2)
    ref = _seeded(ArtSegUNet, width=4, levels=2)
    fit_unet(ref, imgs, masks, cfg)
    ck = tmp_path / "u.ckpt"

    def interrupt(step, loss):
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_unet(_seeded(ArtSegUNet, width=4, levels=2), imgs, masks, cfg, checkpoint=ck, on_step=interrupt)
    resumed = ArtSegUNet(width=4, levels=2)
    h = fit_unet(resumed, imgs, masks, cfg, checkpoint=ck)
    assert h["resumed_from"] == 4 and h["steps_run"] == 6
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)


def test_classifier_training_is_seeded():
    torch.set_num_threads(1)
    x, y = _cls_data()
    cfg = ClassifierFitConfig(epochs=2, batch_size=8, seed=5, min_steps_per_epoch=2)
    a, b = _seeded(resnet18, width=4), _seeded(resnet18, width=4)
    torch.manual_seed(123)  # different global state must not matter: the loop seeds itself
    fit_classifier(a, x, y, None, None, cfg)
    fit_classifier(b, x, y, None, None, cfg)
    for (k, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, msg=k)


def test_fast_math_classifier_learns_and_leaves_a_standard_model():
    """fast_math (channels-last + bf16 autocast where bf16 is native, else fp32 NCHW) still learns the toy task,
    and the trained model is handed back in the standard NCHW layout, so saving and fp32 inference see ordinary
    contiguous weights."""
    from artseg_core.nets.accel import bf16_supported, training_precision
    from artseg_core.training.classifier import predict_proba

    torch.set_num_threads(1)
    x, y = _cls_data()
    m = _seeded(resnet18, width=4)
    h = fit_classifier(m, x, y, x, y, ClassifierFitConfig(epochs=15, batch_size=8, seed=0, min_steps_per_epoch=3,
                                                          fast_math=True))
    assert h["history"][-1]["train_loss"] < h["history"][0]["train_loss"]
    assert all(p.is_contiguous() for p in m.parameters())
    p = predict_proba(m, x)
    assert ((p > 0.5) == (y == 1)).mean() >= 0.8  # fp32 reaches 1.0 here, bf16 0.875: why it is opt-in
    prec = training_precision(resnet18(width=4), "cpu", fast_math=True)
    assert prec.bf16 == prec.channels_last == bf16_supported("cpu")  # else the fp32 NCHW reference path
    assert not training_precision(resnet18(width=4), "cpu", fast_math=False).bf16


def _squares(seed: int = 0):
    """Four noisy 48x48 fields, each with a bright 10x10 square, and the squares' masks."""
    rng = np.random.default_rng(seed)
    imgs = [rng.random((48, 48), dtype=np.float32) * 0.2 for _ in range(4)]
    masks = []
    for im in imgs:
        m = np.zeros(im.shape, bool)
        r, c = rng.integers(8, 32, 2)
        m[r:r + 10, c:c + 10] = True
        im[m] += 0.8
        masks.append(m)
    return imgs, masks


def test_fast_math_unet_learns():
    torch.set_num_threads(1)
    imgs, masks = _squares()
    net = _seeded(ArtSegUNet, width=4, levels=2)
    h = fit_unet(net, imgs, masks, UNetFitConfig(steps=100, batch_size=4, tile=32, lr=5e-3, seed=0, fast_math=True))
    assert h["history"][-1]["loss"] < 0.3 * h["history"][0]["loss"]  # measured: 1.49 -> 0.09 (fp32 alike)
    assert all(p.is_contiguous() for p in net.parameters())


def test_unet_steps_grow_with_the_training_set():
    from artseg_core.nets.profiles import get_profile, unet_training_steps

    fast = get_profile("fast")
    assert unet_training_steps(fast, 40) == fast.unet_steps == 600   # small sets: the fixed budget
    assert unet_training_steps(fast, 160) == 1800                     # the demo's 200 fields: 90 crops per image,
    assert unet_training_steps(fast, 161) == 1812                     # 8 per step, rounded up
    assert unet_training_steps(get_profile("tiny"), 10_000) == get_profile("tiny").unet_steps
    with pytest.raises(ValueError, match="n_train"):
        unet_training_steps(fast, -1)


def test_train_runs_the_scaled_or_the_asked_number_of_unet_steps(tmp_path):
    import artseg_core
    from artseg_core.data import phantoms
    from artseg_core.nets.profiles import get_profile, unet_training_steps

    plate = tmp_path / "plate"
    phantoms.make_plate(plate, rows=2, cols=6, fields=2, prevalence=0.5, seed=3, shape=(64, 64))
    prof = get_profile("tiny", cls_size=64, cls_epochs=1, unet_tile=64, unet_steps=3, unet_crops_per_image=8)
    m = artseg_core.train(plate / "images", plate / "labels.csv", profile=prof, seed=0, progress=False)
    n_train = m.summary["n_train"]
    assert m.summary["unet"]["steps_run"] == unet_training_steps(prof, n_train) == -(-8 * n_train // 8) > 3
    # steps asked for explicitly (``artseg train --unet-steps``) are run exactly, not scaled
    m = artseg_core.train(plate / "images", plate / "labels.csv", profile=prof, seed=0, progress=False, unet_steps=5)
    assert m.summary["unet"]["steps_run"] == 5


def test_a_model_keeps_its_normalisation_and_reuses_only_a_classifier_trained_under_it(tmp_path):
    import artseg_core
    from artseg_core.data import phantoms
    from artseg_core.imgproc.normalize import normalize
    from artseg_core.nets.profiles import Profile, get_profile

    assert get_profile("fast").normalization == "quartile"        # the default route
    assert get_profile("paper").normalization == "percentile"
    old = {k: v for k, v in get_profile("fast").to_dict().items() if k != "normalization"}
    assert Profile.from_dict(old).normalization == "percentile"   # model files written before the setting
    plate = tmp_path / "plate"
    phantoms.make_plate(plate, rows=2, cols=6, fields=2, prevalence=0.5, seed=3, shape=(64, 64))
    prof = get_profile("tiny", cls_size=64, cls_epochs=1, unet_tile=64, unet_steps=3)
    m = artseg_core.train(plate / "images", plate / "labels.csv", profile=prof, seed=0, progress=False,
                          normalization="quartile")
    m.save(tmp_path / "q.artseg")
    back = artseg_core.load_model(tmp_path / "q.artseg")
    assert back.profile.normalization == "quartile"
    img = phantoms.make_field((64, 64), seed=8, artifacts=["bubble"]).image
    np.testing.assert_array_equal(back.normalize(img), normalize(img, method="quartile"))
    assert not np.array_equal(back.normalize(img), normalize(img))
    with pytest.raises(ValueError, match="q.artseg: its classifier saw images under the 'quartile' normalisation"):
        artseg_core.train(plate / "images", plate / "labels.csv", profile=prof, seed=0, progress=False,
                          classifier_from=tmp_path / "q.artseg")


def test_masked_share_tells_a_trained_unet_from_a_collapsed_one():
    from artseg_core.training.unet import MIN_MASKED_SHARE, masked_share

    torch.set_num_threads(1)
    imgs, masks = _squares()
    net = _seeded(ArtSegUNet, width=4, levels=2)
    fit_unet(net, imgs, masks, UNetFitConfig(steps=100, batch_size=4, tile=32, lr=5e-3, seed=0))
    assert masked_share(net, imgs, masks, tile=32, threshold=0.5) == 1.0   # it masks every square it was taught
    with torch.no_grad():                      # collapsed: the head ignores its features, one low value everywhere
        net.head.weight.zero_()
        net.head.bias.fill_(-3.0)
    assert masked_share(net, imgs, masks, tile=32, threshold=0.5) == 0.0 < MIN_MASKED_SHARE
    # fields without target foreground are not probed
    assert masked_share(net, imgs, [np.zeros_like(m) for m in masks], tile=32, threshold=0.5) == 1.0


def test_a_unet_training_that_collapses_is_run_once_more_and_reported(tmp_path, caplog):
    """A U-Net that masks nothing of what it was taught is trained once more (other seed, half the step size); when
    that collapses too, the summary and the log say so. Here it cannot learn: its head gives one low value and
    the step size is 0."""
    import logging

    from artseg_core.data import phantoms
    from artseg_core.io.labels import load_labeled_set
    from artseg_core.nets.profiles import get_profile
    from artseg_core.predict.model import ArtifactModel
    from artseg_core.training import pipeline as P

    plate = tmp_path / "plate"
    phantoms.make_plate(plate, rows=2, cols=4, fields=1, prevalence=0.5, seed=3, shape=(64, 64))
    prof = get_profile("tiny", unet_tile=64, unet_steps=2, unet_lr=0.0)
    f = P._read_fields(load_labeled_set(plate / "images", plate / "labels.csv"), None, 0.2, 0, False,
                       normalization="percentile")
    unet = _seeded(ArtifactModel.build_unet, prof)
    with torch.no_grad():
        unet.head.weight.zero_()
        unet.head.bias.fill_(-3.0)
    saliency = {int(i): np.ones(f.imgs[i].shape, np.float32) for i in np.flatnonzero(f.y == 1)}
    with caplog.at_level(logging.WARNING, logger="artseg.train"):
        ufit = P._unet_step(prof, unet, f, saliency, 0.5, False, 0, "cpu", tmp_path, False, pretrained=True)
    assert ufit["collapsed"] and ufit["training_fields_masked"] == 0.0
    assert ufit["retried_after_collapse"]["training_fields_masked"] == 0.0
    assert (tmp_path / "unet.ckpt").exists() and (tmp_path / "unet_retry.ckpt").exists()
    assert "training it again" in caplog.text and "still masks only" in caplog.text
