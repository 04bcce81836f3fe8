"""Tests of the plain-torch models: ResNet (torchvision layout) and the paper's U-Net."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from artseg_core.nets import accel as fastpath
from artseg_core.nets import resnet as R
from artseg_core.nets import unet as U

pytestmark = pytest.mark.engine  # also run in the numpy-2 environment (make test-numpy2)


def _bf16_conv_runs() -> bool:
    """Whether this CPU's oneDNN runs a bf16 convolution (it needs AVX-512 BW/VL/DQ or AVX-NE-CONVERT)."""
    net = fastpath.fuse_conv_relu(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU()).eval())
    try:
        with torch.inference_mode(), fastpath.autocast_context("cpu", enabled=True):
            net(torch.ones(1, 1, 8, 8))
        return True
    except RuntimeError:
        return False


needs_bf16_conv = pytest.mark.skipif(not _bf16_conv_runs(), reason="this CPU cannot run bf16 convolutions "
                                     "(oneDNN needs AVX-512 BW/VL/DQ or AVX-NE-CONVERT)")

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
    for path in (R.__file__, U.__file__, fastpath.__file__):
        src = open(path, encoding="utf-8").read()
        assert "import torchvision" not in src and "from torchvision" not in src, path


# ---------------------------------------------------------------------------------------------
# U-Net (Ali et al., Sci Rep 2022): 15 encoder conv3x3, 3 bottleneck, 15 decoder conv3x3, 64 filters
# ---------------------------------------------------------------------------------------------


def _conv_params(cin, cout, k=3):
    return k * k * cin * cout + cout


def _unet_params(cin=1, cout=1, w=64, levels=5, n=3):
    """Parameters from the architecture formula: the first encoder conv maps cin->w, the first conv of
    every decoder level sees the upsampled features concatenated with the skip (2w), head is 1x1."""
    enc = _conv_params(cin, w) + (levels * n - 1) * _conv_params(w, w)
    bott = n * _conv_params(w, w)
    dec = levels * (_conv_params(2 * w, w) + (n - 1) * _conv_params(w, w))
    return enc + bott + dec + _conv_params(w, cout, k=1)


def test_paper_unet_layer_and_parameter_counts():
    m = U.paper_unet()
    assert U.count_conv_layers(m) == {"encoder": 15, "bottleneck": 3, "decoder": 15, "head": 1, "total": 34}
    assert sum(p.numel() for p in m.parameters()) == _unet_params()
    convs = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
    assert all(c.out_channels == 64 for c in convs[:-1]) and convs[-1].kernel_size == (1, 1)
    assert m.divisor == 32


@pytest.mark.parametrize("w,levels,n", [(16, 3, 2), (8, 4, 3), (32, 2, 1)])
def test_unet_variant_counts(w, levels, n):
    m = U.ArtSegUNet(width=w, levels=levels, convs_per_level=n)
    c = U.count_conv_layers(m)
    assert (c["encoder"], c["bottleneck"], c["decoder"]) == (levels * n, n, levels * n)
    assert sum(p.numel() for p in m.parameters()) == _unet_params(w=w, levels=levels, n=n)


def test_paper_unet_pools_after_every_third_conv():
    m = U.paper_unet().eval()
    sizes = []
    for c in m.modules():
        if isinstance(c, nn.Conv2d) and c.kernel_size == (3, 3):
            c.register_forward_hook(lambda mod, i, o: sizes.append(tuple(o.shape[-2:])))
    with torch.no_grad():
        y = m(torch.randn(1, 1, 64, 96))
    assert y.shape == (1, 1, 64, 96)
    expect = [(64 >> (i // 3), 96 >> (i // 3)) for i in range(15)]
    expect += [(2, 3)] * 3
    expect += [(64 >> (4 - j // 3), 96 >> (4 - j // 3)) for j in range(15)]
    assert sizes == expect


def test_unet_gradients_reach_every_parameter():
    torch.manual_seed(0)
    m = U.ArtSegUNet(width=8)
    x = torch.randn(2, 1, 64, 64)
    target = (torch.rand(2, 1, 64, 64) > 0.5).float()
    loss = nn.functional.binary_cross_entropy_with_logits(m(x), target)
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_unet_probability_is_sigmoid_of_logits():
    m = U.ArtSegUNet(width=8, levels=3).eval()
    x = torch.randn(1, 1, 32, 40)
    with torch.no_grad():
        p, z = m.probability(x), m(x)
    assert p.dtype == torch.float32 and p.min() >= 0 and p.max() <= 1
    assert torch.allclose(p, torch.sigmoid(z))


def test_unet_scale_runs_on_area_downsampled_input_and_upsamples_logits():
    torch.manual_seed(1)
    fast = U.ArtSegUNet(width=16, levels=3, scale=2).eval()
    inner = U.ArtSegUNet(width=16, levels=3, scale=1).eval()
    inner.load_state_dict(fast.state_dict())
    assert fast.divisor == 16
    x = torch.randn(1, 1, 48, 64)
    with torch.no_grad():
        y = fast(x)
        small = inner(x.reshape(1, 1, 24, 2, 32, 2).mean(dim=(3, 5)))
    assert y.shape == x.shape
    ref = nn.functional.interpolate(small, size=(48, 64), mode="bilinear", align_corners=False)
    assert torch.allclose(y, ref, atol=1e-5)


def test_unet_rejects_bad_shapes_and_arguments():
    m = U.ArtSegUNet(width=4, levels=2, scale=2)
    with pytest.raises(ValueError, match="multiples of 8"):
        m(torch.zeros(1, 1, 20, 16))
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        m(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="scale"):
        U.ArtSegUNet(scale=0)
    assert U.ArtSegUNet(**m.config()).config() == m.config()


def test_unet_channels_last_bf16_matches_fp32():
    torch.manual_seed(2)
    m = U.ArtSegUNet(width=16, levels=3).eval()
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        ref = m(x)
        mc = m.to(memory_format=torch.channels_last)
        with fastpath.autocast_context("cpu", enabled=True):
            y = mc(x.contiguous(memory_format=torch.channels_last))
    assert y.dtype == torch.bfloat16
    assert y.is_contiguous(memory_format=torch.channels_last)
    err = (y.float() - ref).abs().max() / ref.abs().max()
    assert err < 0.05


def test_conv_macs_matches_layer_by_layer_count():
    m = U.ArtSegUNet(width=8, levels=3, scale=2).eval()
    macs = []

    def hook(mod, inp, out):
        macs.append(out.numel() * mod.in_channels * mod.kernel_size[0] * mod.kernel_size[1])

    for c in m.modules():
        if isinstance(c, nn.Conv2d):
            c.register_forward_hook(hook)
    with torch.no_grad():
        m(torch.zeros(1, 1, 64, 80))
    assert U.conv_macs(m, 64, 80) == sum(macs)


# ---------------------------------------------------------------------------------------------
# fastpath
# ---------------------------------------------------------------------------------------------


def test_autocast_context_switches_dtype():
    a = torch.randn(8, 8)
    with fastpath.autocast_context("cpu", enabled=True):
        assert (a @ a).dtype == torch.bfloat16
    with fastpath.autocast_context("cpu", enabled=False):
        assert (a @ a).dtype == torch.float32


def test_bf16_supported_follows_cpu_flags_and_env(monkeypatch):
    monkeypatch.delenv("ARTSEG_BF16", raising=False)
    flags = fastpath.cpu_flags()
    if flags:
        assert fastpath.bf16_supported("cpu") == bool({"amx_bf16", "avx512_bf16"} & set(flags))
    monkeypatch.setenv("ARTSEG_BF16", "0")
    assert fastpath.bf16_supported("cpu") is False
    with fastpath.autocast_context("cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    monkeypatch.setenv("ARTSEG_BF16", "1")
    assert fastpath.bf16_supported("cpu") is True


def test_set_threads(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert fastpath.set_threads(1) == 1
        monkeypatch.setenv("ARTSEG_THREADS", "2")
        assert fastpath.set_threads() == 2
        monkeypatch.delenv("ARTSEG_THREADS")
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert fastpath.set_threads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert fastpath.set_threads() == fastpath.available_cpus()
        with pytest.raises(ValueError):
            fastpath.set_threads(0)
    finally:
        torch.set_num_threads(before)


@needs_bf16_conv
def test_fuse_conv_relu_keeps_keys_and_results():
    import copy

    torch.manual_seed(3)
    m = U.ArtSegUNet(width=8, levels=3).eval()
    f = fastpath.fuse_conv_relu(copy.deepcopy(m))
    assert sum(isinstance(c, fastpath.FusedConvReLU2d) for c in f.modules()) == 3 * 3 * 2 + 3
    assert list(f.state_dict()) == list(m.state_dict())
    x = torch.randn(2, 1, 32, 48)
    with torch.inference_mode():
        assert torch.allclose(f(x), m(x), atol=1e-5)
        with fastpath.autocast_context("cpu", enabled=True):
            assert f(x).dtype == torch.bfloat16
    # training through a fused model falls back to conv + relu and gets gradients
    f.train()
    f(x).sum().backward()
    assert all(p.grad is not None for p in f.parameters())


@needs_bf16_conv
def test_prepare_for_inference_bf16_copy():
    torch.manual_seed(4)
    m = U.ArtSegUNet(width=16, levels=3).eval()
    p = fastpath.prepare_for_inference(m, bf16=True)
    assert next(m.parameters()).dtype == torch.float32 and next(m.parameters()).requires_grad  # original untouched
    assert p.artseg_dtype == torch.bfloat16 and next(p.parameters()).dtype == torch.bfloat16
    x = torch.rand(1, 1, 64, 64)
    with torch.inference_mode():
        ref = m(x)
        y = p(x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last))
    assert y.shape == ref.shape and y.is_contiguous(memory_format=torch.channels_last)
    assert (y.float() - ref).abs().max() / ref.abs().max() < 0.05
    p32 = fastpath.prepare_for_inference(m, bf16=False)
    with torch.inference_mode():
        assert torch.allclose(p32(x), ref, atol=1e-5)


@pytest.mark.parametrize("fn,n_bn", [(R.resnet18, 20), (R.resnet50, 53)])
def test_fold_batchnorm_preserves_resnet_eval_output(fn, n_bn):
    import copy

    torch.manual_seed(5)
    m = fn(width=8, num_classes=3)
    for mod in m.modules():  # non-trivial BN statistics and affine parameters
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.1, 0.1)
    m.eval()
    f = copy.deepcopy(m)
    assert fastpath.fold_batchnorm(f) == n_bn
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in f.modules())
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(f(x), m(x), atol=1e-5)
        if _bf16_conv_runs():
            p = fastpath.prepare_for_inference(m, bf16=True)
            y = p(x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)).float()
            assert (y - m(x)).abs().max() < 0.05 * m(x).abs().max() + 1e-3
        p = fastpath.prepare_for_inference(m, bf16=False)
        assert torch.allclose(p(x.contiguous(memory_format=torch.channels_last)), m(x), atol=1e-4)
    assert isinstance(p.layer4, nn.Sequential)  # CAM target layer still there
    with pytest.raises(ValueError, match="eval"):
        fastpath.fold_batchnorm(fn(width=8).train())
