"""Score-CAM: exact mode against pytorch-grad-cam, the paper and fast variants, chunking and validation."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from artseg_core.nets.resnet import resnet18, resnet50
from artseg_core.weak.scorecam import DEFAULT_TOP_K, cam_layer, score_cam


def _grad_cam():
    """pytorch-grad-cam's ScoreCAM and ClassifierOutputTarget, or skip with the reason."""
    from gradcam_compat import import_pytorch_grad_cam

    try:
        import_pytorch_grad_cam()
    except ImportError as exc:
        pytest.skip(str(exc))
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    return ScoreCAM, ClassifierOutputTarget


def _reference(model, x, layer, targets):
    ScoreCAM, ClassifierOutputTarget = _grad_cam()
    with ScoreCAM(model=model, target_layers=[layer]) as cam:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])


def _blob_images(n: int, size: int, seed: int, radius=(5.0, 9.0), p: float = 0.5):
    """Smooth-noise backgrounds; with probability p one dark disk (the 'artifact'). Returns x, y, masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    x = np.empty((n, 1, size, size), np.float32)
    y = np.zeros(n, np.int64)
    masks = np.zeros((n, size, size), bool)
    for i in range(n):
        noise = rng.normal(size=(size // 4 + 1, size // 4 + 1))
        bg = np.kron(noise, np.ones((4, 4)))[:size, :size] * 0.5 + rng.normal(scale=0.2, size=(size, size))
        if rng.random() < p:
            r = rng.uniform(*radius)
            cy, cx = rng.uniform(r + 2, size - r - 2, 2)
            m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            bg = bg - 2.5 * m
            y[i], masks[i] = 1, m
        x[i, 0] = bg
    return torch.from_numpy(x), torch.from_numpy(y), masks


def _blob_resnet(steps: int, batch: int, first_seed: int) -> nn.Module:
    """ResNet18 (width 8, 64 channels in layer4) trained ``steps`` Adam steps on 64x64 blob images, in eval mode."""
    torch.manual_seed(0)
    model = resnet18(in_channels=1, num_classes=2, width=8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(steps):
        x, y, _ = _blob_images(batch, 64, seed=first_seed + step)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def small_resnet():
    """Trained for a few steps only, so that channel scores differ."""
    return _blob_resnet(steps=6, batch=8, first_seed=0)


class TinyCNN(nn.Module):
    """Two conv layers; in the second one (the CAM layer) the first ``dead`` channels never fire."""

    def __init__(self, dead: int = 0):
        super().__init__()
        torch.manual_seed(1)
        self.conv1 = nn.Conv2d(1, 8, 5, stride=2, padding=2)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, 2)
        with torch.no_grad():
            self.conv2.weight[:dead] = 0.0
            self.conv2.bias[:dead] = -1.0  # relu(-1) = 0 everywhere
        self.layer = nn.Sequential(self.conv2, nn.ReLU())

    def forward(self, x):
        a = self.layer(F.relu(self.conv1(x)))
        return self.fc(a.mean(dim=(2, 3)))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


# ------------------------------------------------------------------------------------------- exact mode


def test_exact_equals_pytorch_grad_cam_on_resnet18(small_resnet):
    x, _, _ = _blob_images(2, 64, seed=11, p=1.0)
    ref = _reference(small_resnet, x, small_resnet.layer4, [1, 1])
    ours = score_cam(small_resnet, x, small_resnet.layer4, target=1, mode="exact")
    assert ours.shape == (2, 64, 64) and ours.dtype == np.float32
    assert np.abs(ours - ref).max() <= 1e-5
    assert ours.min() >= 0.0 and ours.max() <= 1.0 and ours.max() > 0.99  # a real, non-flat map


def test_exact_equals_pytorch_grad_cam_non_square_per_image_targets_and_chunks(small_resnet):
    x, _, _ = _blob_images(2, 96, seed=12, p=1.0)
    x = x[:, :, :80, :]  # 80 x 96: catches any swap of height and width in the final resize
    ref = _reference(small_resnet, x, small_resnet.layer4, [0, 1])
    ours = score_cam(small_resnet, x, small_resnet.layer4, target=[0, 1], mode="exact", chunk_size=5)
    assert ours.shape == (2, 80, 96)
    assert np.abs(ours - ref).max() <= 1e-5


def test_exact_shares_one_pass_for_dead_channels_and_still_matches():
    model = TinyCNN(dead=6).eval()
    x, _, _ = _blob_images(2, 48, seed=3, p=1.0)
    seen = []
    ours = score_cam(model, x, model.layer, target=1, mode="exact", chunk_size=4,
                     _on_batch=lambda b: seen.append(b.shape[0]))
    # 10 live channels + the all-zero input, per image
    assert sum(seen) == 2 * (16 - 6 + 1)
    ref = _reference(model, x, model.layer, [1, 1])
    assert np.abs(ours - ref).max() <= 1e-5


def test_cam_layer_and_default_layer(small_resnet):
    assert cam_layer(small_resnet) is small_resnet.layer4
    tiny = TinyCNN()
    assert cam_layer(tiny) is tiny.conv2  # no layer4: the last Conv2d
    x, _, _ = _blob_images(1, 64, seed=2, p=1.0)
    a = score_cam(small_resnet, x, mode="exact")
    b = score_cam(small_resnet, x, small_resnet.layer4, mode="exact")
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="no 'layer4' and no Conv2d"):
        cam_layer(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))


# ------------------------------------------------------------------------------------------- paper mode


def _paper_by_hand(model, x, layer, target):
    """Wang et al.'s weighting written out channel by channel (no batching, no chunking)."""
    store = []
    h = layer.register_forward_hook(lambda m, i, o: store.append(o.detach()))
    with torch.no_grad():
        model(x)
    h.remove()
    acts = store[0][0].double()
    size = x.shape[-2:]
    cam = torch.zeros(acts.shape[1:], dtype=torch.float64)
    for a in acts:
        if a.max() == a.min():
            continue
        up = F.interpolate(a[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0]
        mask = (up - up.min()) / (up.max() - up.min())
        with torch.no_grad():
            p = torch.softmax(model(x * mask), dim=1)[0, target]
        cam += float(p) * a
    cam = F.interpolate(cam[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0]
    cam = torch.relu(cam)
    return ((cam - cam.min()) / (cam.max() - cam.min())).numpy()


def test_paper_mode_uses_class_probabilities(small_resnet):
    x, _, _ = _blob_images(1, 64, seed=21, p=1.0)
    paper = score_cam(small_resnet, x, small_resnet.layer4, target=1, mode="paper", chunk_size=7)
    assert paper.shape == (1, 64, 64) and paper.dtype == np.float32
    assert paper.min() >= 0 and paper.max() <= 1
    by_hand = _paper_by_hand(small_resnet, x, small_resnet.layer4, 1)
    assert np.abs(paper[0] - by_hand).max() < 1e-4
    exact = score_cam(small_resnet, x, small_resnet.layer4, target=1, mode="exact")
    assert np.abs(paper - exact).max() > 1e-3  # a different weighting gives a different map


# ------------------------------------------------------------------------------------------- fast mode


@pytest.fixture(scope="module")
def blob_model():
    """Trained until it finds dark disks: a model with a clear Score-CAM target."""
    return _blob_resnet(steps=40, batch=16, first_seed=100)


@pytest.mark.parametrize("bf16", [False, "auto"])
def test_fast_mode_matches_exact_masks(blob_model, bf16):
    x, _, _ = _blob_images(4, 96, seed=7, p=1.0)
    with torch.no_grad():
        p = torch.softmax(blob_model(x), dim=1)[:, 1]
    assert float(p.min()) > 0.5, "the test model did not learn the blobs"
    exact = score_cam(blob_model, x, target=1, mode="exact")
    fast = score_cam(blob_model, x, target=1, mode="fast", top_k=16, bf16=bf16)
    assert fast.shape == exact.shape and fast.min() >= 0 and fast.max() <= 1
    ious = [_iou(e >= 0.5, f >= 0.5) for e, f in zip(exact, fast)]
    assert np.mean(ious) >= 0.9, ious


def test_fast_mode_scores_only_top_k(blob_model):
    x, _, _ = _blob_images(2, 64, seed=8, p=1.0)
    seen = []
    score_cam(blob_model, x, target=1, mode="fast", top_k=10, chunk_size=4, bf16=False,
              _on_batch=lambda b: seen.append(b.shape[0]))
    assert max(seen) <= 4 and sum(seen) == 2 * 10
    assert DEFAULT_TOP_K == 32


# ------------------------------------------------------------------------------------------- memory, state, errors


def test_chunking_bounds_the_batch_and_does_not_change_the_result(small_resnet):
    x, _, _ = _blob_images(1, 64, seed=31, p=1.0)
    sizes = []
    a = score_cam(small_resnet, x, target=1, mode="exact", chunk_size=3, _on_batch=lambda b: sizes.append(b.shape))
    b = score_cam(small_resnet, x, target=1, mode="exact", chunk_size=64)
    assert max(s[0] for s in sizes) <= 3
    k = small_resnet.layer4[-1].conv2.out_channels
    assert sum(s[0] for s in sizes) in (k, k + 1)  # every channel once (+ the zero input if a channel is dead)
    assert all(tuple(s[1:]) == (1, 64, 64) for s in sizes)
    assert np.abs(a - b).max() <= 1e-5


def test_model_state_is_restored_and_weight_changes_are_seen():
    torch.manual_seed(3)
    model = resnet18(in_channels=1, num_classes=2, width=8)
    model.train()
    before = copy.deepcopy(model.state_dict())
    x, _, _ = _blob_images(1, 64, seed=4, p=1.0)
    first = score_cam(model, x, target=1, mode="exact")
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    with torch.no_grad():
        model.fc.weight[1] *= -3.0  # in place: a cached scoring copy must not be reused
    second = score_cam(model, x, target=1, mode="exact")
    fresh = score_cam(copy.deepcopy(model), x, target=1, mode="exact")
    np.testing.assert_allclose(second, fresh, atol=1e-6)
    assert np.abs(second - first).max() > 1e-3


def test_input_validation(small_resnet):
    x, _, _ = _blob_images(1, 32, seed=0)
    with pytest.raises(ValueError, match="mode"):
        score_cam(small_resnet, x, mode="slow")
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        score_cam(small_resnet, x[0])
    with pytest.raises(ValueError, match="float"):
        score_cam(small_resnet, x.to(torch.int32))
    with pytest.raises(ValueError, match="out of range"):
        score_cam(small_resnet, x, target=2)
    with pytest.raises(ValueError, match="target has 2 entries"):
        score_cam(small_resnet, x, target=[0, 1])
    with pytest.raises(ValueError, match="bf16=True"):
        score_cam(small_resnet, x, mode="exact", bf16=True)
    with pytest.raises(ValueError, match="chunk_size"):
        score_cam(small_resnet, x, chunk_size=0)
    with pytest.raises(ValueError, match="top_k"):
        score_cam(small_resnet, x, mode="fast", top_k=0)
    with pytest.raises(ValueError, match="NaN"):
        score_cam(small_resnet, x * float("nan"))


class _Branchy(nn.Module):
    """conv -> bn, but the conv output also feeds a skip: that pair must not be folded."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        c = self.conv(x)
        y = torch.relu(self.bn(c)) + c
        y = torch.relu(self.bn2(self.conv2(y)))
        return self.fc(y.mean(dim=(2, 3)))


@pytest.mark.parametrize("build", [lambda: resnet18(in_channels=1, num_classes=2, width=8),
                                   lambda: resnet50(in_channels=1, num_classes=2, width=8), lambda: _Branchy()],
                         ids=["resnet18", "resnet50", "branching"])
def test_scoring_copy_folds_batchnorm_and_equals_the_model(build):
    from artseg_core.weak.scorecam import _scoring_model

    torch.manual_seed(5)
    model = build()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):  # statistics far from the identity
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.3, 3.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    model.eval()
    net = _scoring_model(model)
    assert net is not model and _scoring_model(model) is net  # cached copy
    x = torch.randn(3, 1, 64, 64)
    with torch.no_grad():
        ref = model(x)
        out = net(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-5)
    left = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert left == (1 if isinstance(model, _Branchy) else 0)  # only the branching pair stays unfolded
