"""The ResNet's multiple-instance (MIL) head: pooling, equivalence to the paper's head, layout, Score-CAM, folding."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from artseg_core.nets.resnet import build_resnet, mil_pool


def test_mil_pool_topk_lse_and_avg_by_hand():
    d = torch.tensor([[[0.0, 1.0], [2.0, 5.0]]])  # 4 positions
    assert float(mil_pool(d, "avg", 0)) == pytest.approx(2.0)
    assert float(mil_pool(d, "topk", 0.25)) == pytest.approx(5.0)          # ceil(0.25 * 4) = 1 position
    assert float(mil_pool(d, "topk", 0.5)) == pytest.approx(3.5)           # (5 + 2) / 2
    assert float(mil_pool(d, "topk", 0.01)) == pytest.approx(5.0)          # at least one position
    r = 2.0
    lse = math.log(sum(math.exp(r * v) for v in (0, 1, 2, 5)) / 4) / r
    assert float(mil_pool(d, "lse", r)) == pytest.approx(lse, rel=1e-6)
    assert float(mil_pool(d, "lse", 1e-4)) == pytest.approx(2.0, abs=1e-3)  # r -> 0: the mean
    assert float(mil_pool(d, "lse", 200.0)) == pytest.approx(5.0, abs=0.01)  # r -> inf: the maximum
    with pytest.raises(ValueError, match="pooling"):
        mil_pool(d, "max", 1)


def _model(pool, param=0.02, seed=0):
    torch.manual_seed(seed)
    return build_resnet("resnet18", width=8, layer4_stride=1, pool=pool, pool_param=param).eval()


def test_topk_over_all_positions_gives_the_papers_average_head():
    """With k = every position the MIL score is the average head's logit difference: same probabilities."""
    avg, mil = _model("avg"), _model("topk", 1.0)
    mil.load_state_dict(avg.state_dict())  # same layout, strict
    x = torch.randn(3, 1, 64, 64)
    with torch.no_grad():
        pa, pm = torch.softmax(avg(x), 1), torch.softmax(mil(x), 1)
    assert torch.allclose(pa, pm, atol=1e-5)


def test_a_small_hot_spot_decides_the_mil_score_but_not_the_average():
    m = _model("topk", 0.02)
    feats = torch.zeros(1, m.num_features, 16, 16)
    with torch.no_grad():
        m.fc.weight.zero_()
        m.fc.bias.zero_()
        m.fc.weight[1, 0] = 1.0  # channel 0 is artifact evidence
        feats[0, 0, 3, 4] = 10.0  # one position of 256
        z_mil = float(m.head(feats)[0, 1] - m.head(feats)[0, 0])
        m.pool = "avg"
        z_avg = float(m.head(feats)[0, 1] - m.head(feats)[0, 0])
    assert z_mil == pytest.approx(10.0 / 6, rel=1e-5)   # k = ceil(0.02 * 256) = 6
    assert z_avg == pytest.approx(10.0 / 256, rel=1e-5)
    ev = m.evidence_map(feats)[0]
    assert ev.shape == (16, 16) and float(ev[3, 4]) == pytest.approx(10.0) and float(ev.abs().sum()) == 10.0


def test_mil_head_validation():
    with pytest.raises(ValueError, match="pooling"):
        build_resnet("resnet18", width=8, pool="median")
    with pytest.raises(ValueError, match="num_classes=2"):
        build_resnet("resnet18", width=8, num_classes=3, pool="topk")
    with pytest.raises(ValueError, match="pool_param"):
        build_resnet("resnet18", width=8, pool="lse", pool_param=0)


def test_mil_classifier_learns_a_small_spot():
    """Trained a few steps on fields where a 4x4 dark spot in 64x64 makes the label, the MIL head separates them."""
    rng = np.random.default_rng(0)

    def batch(n):
        x = rng.normal(0, 0.3, (n, 1, 64, 64)).astype(np.float32)
        y = rng.integers(0, 2, n)
        for i in np.flatnonzero(y):
            r, c = rng.integers(4, 56, 2)
            x[i, 0, r:r + 4, c:c + 4] -= 3.0
        return torch.from_numpy(x), torch.from_numpy(y)

    m = _model("topk", 0.05).train()
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for _ in range(40):
        x, y = batch(16)
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()
    m.eval()
    x, y = batch(64)
    with torch.no_grad():
        p = torch.softmax(m(x), 1)[:, 1].numpy()
    acc = float(((p > 0.5) == y.numpy().astype(bool)).mean())
    assert acc >= 0.9, acc


def test_exact_score_cam_equals_pytorch_grad_cam_on_the_mil_network():
    from gradcam_compat import import_pytorch_grad_cam

    from artseg_core.weak.scorecam import score_cam

    try:
        import_pytorch_grad_cam()
    except ImportError as exc:
        pytest.skip(str(exc))
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    m = _model("topk", 0.05, seed=3)
    x = torch.randn(2, 1, 64, 64)
    with ScoreCAM(model=m, target_layers=[m.layer4]) as cam:
        ref = cam(input_tensor=x, targets=[ClassifierOutputTarget(1)] * 2)
    ours = score_cam(m, x, m.layer4, target=1, mode="exact")
    assert np.abs(ours - ref).max() <= 1e-5


def test_batchnorm_folding_traces_the_mil_head():
    from artseg_core.nets.accel import fold_batchnorm

    m = _model("lse", 4.0, seed=1)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.3, 3.0)
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        before = m(x)
        assert fold_batchnorm(m) > 0  # traced through mil_pool (an fx leaf), so the pairs were found
        after = m(x)
    assert torch.allclose(before, after, atol=1e-4)


def test_logit_saliency_marks_the_hot_spot():
    from artseg_core.weak.logitmap import logit_saliency

    m = _model("topk", 0.02)
    x = torch.zeros(1, 1, 64, 64)
    feats = torch.zeros(1, m.num_features, 4, 4)
    feats[0, 0, 1, 2] = 5.0
    m.features = lambda _x: feats  # the saliency reads features -> evidence map
    with torch.no_grad():
        m.fc.weight.zero_()
        m.fc.bias.fill_(0.0)
        m.fc.bias[0] = 1.0  # clean by default: evidence -1 everywhere
        m.fc.weight[1, 0] = 1.0
    sal = logit_saliency(m, x, (64, 64))
    assert sal.shape == (64, 64) and sal.dtype == np.float32
    assert sal[16 + 8, 32 + 8] > 0.9 and sal[4, 4] < 0.3
    assert (sal >= 0.5).sum() < 64 * 64 / 8
