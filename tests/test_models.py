"""Tests of the plain-torch models: ResNet (torchvision layout) and the paper's U-Net."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from artseg_core.models import resnet as R

# ---------------------------------------------------------------------------------------------
# ResNet: expected torchvision layout, written out from the architecture (He et al. 2016;
# torchvision.models.resnet), never from torchvision itself.
# ---------------------------------------------------------------------------------------------


def _bn(prefix, c):
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def _expected_layout(arch, cin=3, ncls=1000, w=64):
    """Expected state_dict keys -> shapes of torchvision's resnet18 / resnet50."""
    bottleneck = arch == "resnet50"
    blocks = (3, 4, 6, 3) if bottleneck else (2, 2, 2, 2)
    exp = 4 if bottleneck else 1
    out = {"conv1.weight": (w, cin, 7, 7)}
    out.update(_bn("bn1", w))
    inp = w
    for li, (n, planes) in enumerate(zip(blocks, (w, 2 * w, 4 * w, 8 * w)), start=1):
        for b in range(n):
            p = f"layer{li}.{b}"
            if bottleneck:
                out[f"{p}.conv1.weight"] = (planes, inp, 1, 1)
                out.update(_bn(f"{p}.bn1", planes))
                out[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                out.update(_bn(f"{p}.bn2", planes))
                out[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
                out.update(_bn(f"{p}.bn3", planes * 4))
            else:
                out[f"{p}.conv1.weight"] = (planes, inp, 3, 3)
                out.update(_bn(f"{p}.bn1", planes))
                out[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                out.update(_bn(f"{p}.bn2", planes))
            if b == 0 and (li > 1 or inp != planes * exp):
                out[f"{p}.downsample.0.weight"] = (planes * exp, inp, 1, 1)
                out.update(_bn(f"{p}.downsample.1", planes * exp))
            inp = planes * exp
    out["fc.weight"] = (ncls, inp)
    out["fc.bias"] = (ncls,)
    return out


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_resnet_state_dict_layout_matches_torchvision(arch):
    model = R.build_resnet(arch, in_channels=3, num_classes=1000)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == _expected_layout(arch)


@pytest.mark.parametrize("arch,n", [("resnet18", 11_689_512), ("resnet50", 25_557_032)])
def test_resnet_param_count_matches_torchvision(arch, n):
    # torchvision's ResNet18_Weights / ResNet50_Weights meta "num_params" (3 in-channels, 1000 classes)
    model = R.build_resnet(arch, in_channels=3, num_classes=1000)
    assert sum(p.numel() for p in model.parameters()) == n


def test_resnet_default_is_grey_two_class_and_layer4_is_cam_layer():
    m = R.resnet18().eval()
    assert m.conv1.weight.shape[1] == 1 and m.fc.out_features == 2
    feats = {}
    m.layer4.register_forward_hook(lambda mod, i, o: feats.setdefault("a", o))
    with torch.no_grad():
        y = m(torch.randn(2, 1, 96, 128))
        assert torch.allclose(m.head(m.features(torch.zeros(1, 1, 64, 64))),
                              m(torch.zeros(1, 1, 64, 64)))
    assert y.shape == (2, 2)
    assert feats["a"].shape == (2, 512, 3, 4)


@pytest.mark.parametrize("fn,exp", [(R.resnet18, 1), (R.resnet50, 4)])
def test_resnet_width_scales_channels(fn, exp):
    m = fn(width=16, num_classes=3)
    assert m.conv1.out_channels == 16
    assert m.layer4[-1].conv2.out_channels == 128
    assert m.fc.in_features == 128 * exp == m.num_features
    assert m(torch.randn(1, 1, 64, 64)).shape == (1, 3)


def test_resnet_bad_arguments():
    with pytest.raises(ValueError, match="resnet34"):
        R.build_resnet("resnet34")
    with pytest.raises(ValueError, match="width"):
        R.resnet18(width=0)


def test_load_torchvision_state_dict_adapts_conv1_and_skips_fc():
    torch.manual_seed(0)
    src = R.resnet18(in_channels=3, num_classes=1000).eval()
    # make BN non-trivial so the comparison below is meaningful
    for mod in src.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
    sd = {"module." + k: v for k, v in src.state_dict().items()}
    dst = R.resnet18(in_channels=1, num_classes=2).eval()
    fc_before = dst.fc.weight.detach().clone()
    skipped = R.load_torchvision_state_dict(dst, sd)
    assert skipped == ["fc.bias", "fc.weight"]
    assert torch.equal(dst.fc.weight, fc_before)  # fresh head kept
    assert torch.allclose(dst.conv1.weight, src.conv1.weight.sum(1, keepdim=True))
    # grey image replicated to RGB gives the same layer4 activations through either model
    g = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(dst.features(g), src.features(g.repeat(1, 3, 1, 1)), atol=1e-4)


def test_load_torchvision_state_dict_same_head_loads_everything():
    src = R.resnet50(in_channels=1, num_classes=2, width=8)
    dst = R.resnet50(in_channels=1, num_classes=2, width=8)
    assert R.load_torchvision_state_dict(dst, src.state_dict()) == []
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k


def test_load_torchvision_state_dict_strict_errors():
    dst = R.resnet18()
    with pytest.raises(ValueError, match="resnet50|shape mismatch|unexpected"):
        R.load_torchvision_state_dict(dst, R.resnet50(in_channels=3, num_classes=1000).state_dict())
    sd = R.resnet18(in_channels=3, num_classes=1000).state_dict()
    sd.pop("layer2.0.bn1.running_var")
    with pytest.raises(ValueError, match="missing key layer2.0.bn1.running_var"):
        R.load_torchvision_state_dict(dst, sd)
    # non-strict: loads what it can and reports the rest
    skipped = R.load_torchvision_state_dict(dst, dict(sd, extra=torch.zeros(1)), strict=False)
    assert "extra" in skipped
    assert torch.equal(dst.layer1[0].conv1.weight, sd["layer1.0.conv1.weight"])


def test_engine_models_do_not_import_torchvision():
    for path in (R.__file__,):
        src = open(path, encoding="utf-8").read()
        assert "import torchvision" not in src and "from torchvision" not in src, path
