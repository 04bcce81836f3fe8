"""ResNet-18/50 in plain torch with torchvision's module names and state_dict layout.

The classifier of the weak-supervision pipeline. Module names follow torchvision's
``torchvision.models.resnet`` (``conv1``, ``bn1``, ``relu``, ``maxpool``, ``layer1`` ..
``layer4``, ``avgpool``, ``fc``; blocks with ``conv1``/``bn1`` ... and ``downsample.0/1``)
so that a torchvision state_dict loads unchanged, but torchvision is never imported.
The last convolutional block used by CAM methods is ``model.layer4``.

Architecture: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016
(stride on the 3x3 conv of the bottleneck, as torchvision's "ResNet v1.5").

Besides the global average pool of the paper (``pool="avg"``) the head can pool *multiple-instance* style
(``pool="topk"`` or ``"lse"``): ``fc`` is applied at every position of ``layer4`` as a 1x1 convolution, giving a
map of artifact logits (:meth:`ResNet.logit_map`), and the image score is the mean of its top-k positions or its
log-sum-exp. A small artifact then decides the image's score instead of being averaged away by a clean field
(Ilse et al., "Attention-based deep multiple instance learning", ICML 2018, review MIL pooling operators;
log-sum-exp pooling: Pinheiro & Collobert, "From image-level to pixel-level labeling with convolutional
networks", CVPR 2015; top-k / "max+min" instance pooling: Durand et al., "WILDCAT", CVPR 2017). The weights and the
state_dict are the same in every mode, so Score-CAM, torchvision weights and saved models work unchanged.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "resnet18",
    "resnet50",
    "build_resnet",
    "load_torchvision_state_dict",
    "ARCHS",
    "POOLS",
    "mil_pool",
]

#: Image-score pooling of the classifier head: global average (the paper), top-k mean or log-sum-exp (MIL).
POOLS = ("avg", "topk", "lse")


def mil_pool(d: torch.Tensor, kind: str, param: float) -> torch.Tensor:
    """Pool a map of artifact evidence ``d`` (N, H, W) to one score per image (N,).

    ``kind="topk"``: the mean of the ``ceil(param * H * W)`` largest values (``param`` = fraction of positions,
    at least one). ``kind="lse"``: ``log(mean(exp(param * d))) / param`` (``param`` = sharpness r: r -> 0 gives
    the mean, r -> inf the maximum). ``kind="avg"``: the plain mean.
    """
    flat = d.flatten(1)
    if kind == "avg":
        return flat.mean(1)
    if kind == "topk":
        k = max(1, min(flat.shape[1], int(math.ceil(float(param) * flat.shape[1]))))
        return flat.topk(k, dim=1).values.mean(1)
    if kind == "lse":
        r = float(param)
        return (torch.logsumexp(r * flat, dim=1) - math.log(flat.shape[1])) / r
    raise ValueError(f"unknown pooling {kind!r}; choose one of {POOLS}")


torch.fx.wrap("mil_pool")  # a leaf for torch.fx tracing (BatchNorm folding traces the classifier)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand (x4), with a shortcut."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv1x1(cin, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet backbone + linear head, torchvision layout.

    Parameters
    ----------
    block : type
        :class:`BasicBlock` or :class:`Bottleneck`.
    layers : sequence of int
        Number of blocks in ``layer1`` .. ``layer4``.
    in_channels : int
        Input channels (1 for grey brightfield images).
    num_classes : int
        Output logits.
    width : int
        Channels of the stem and ``layer1`` (64 = standard); every stage scales with it.
    pool : {"avg", "topk", "lse"}
        Image-score pooling (see the module docstring); ``topk`` and ``lse`` need ``num_classes=2``.
    pool_param : float
        Fraction of positions for ``topk``, sharpness r for ``lse``.
    """

    def __init__(self, block, layers, in_channels: int = 1, num_classes: int = 2, width: int = 64,
                 layer4_stride: int = 2, pool: str = "avg", pool_param: float = 0.02):
        super().__init__()
        if in_channels < 1 or num_classes < 1 or width < 1:
            raise ValueError(
                f"in_channels, num_classes and width must be >= 1, got {in_channels}, {num_classes}, {width}"
            )
        if len(layers) != 4:
            raise ValueError(f"layers must have 4 entries, got {list(layers)}")
        if pool not in POOLS:
            raise ValueError(f"unknown pooling {pool!r}; choose one of {POOLS}")
        if pool != "avg" and num_classes != 2:
            raise ValueError(f"pool={pool!r} scores artifact against clean: it needs num_classes=2")
        if pool != "avg" and not float(pool_param) > 0:
            raise ValueError(f"pool_param must be > 0, got {pool_param}")
        self.pool, self.pool_param = pool, float(pool_param)
        self.arch_block = block
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.width = width
        self._cin = width
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0], stride=1)
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        # layer4_stride=1 keeps layer4 at 1/16 resolution (twice as fine CAMs); the weights are the same shapes
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=layer4_stride)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.num_features = width * 8 * block.expansion
        self.fc = nn.Linear(self.num_features, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._cin != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self._cin, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        mods = [block(self._cin, planes, stride, downsample)]
        self._cin = planes * block.expansion
        mods += [block(self._cin, planes) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Activations of ``layer4`` (the CAM target layer), shape (N, C, H/32, W/32)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def logit_map(self, feats: torch.Tensor) -> torch.Tensor:
        """``fc`` applied at every position of ``layer4`` activations: (N, num_classes, h, w) class logits."""
        return F.conv2d(feats, self.fc.weight[:, :, None, None], self.fc.bias)

    def evidence_map(self, feats: torch.Tensor) -> torch.Tensor:
        """Artifact-minus-clean logit at every position (N, h, w): what the MIL head pools."""
        m = self.logit_map(feats)
        return m[:, 1] - m[:, 0]

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        """Logits from ``layer4`` activations: global average pool + ``fc`` or, for ``topk``/``lse``, the pooled
        evidence map ``z`` as logits ``(-z/2, z/2)`` (softmax gives p_artifact = sigmoid(z))."""
        if self.pool == "avg":
            return self.fc(torch.flatten(self.avgpool(feats), 1))
        z = mil_pool(self.evidence_map(feats), self.pool, self.pool_param)
        return torch.stack([-0.5 * z, 0.5 * z], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits, shape (N, num_classes)."""
        return self.head(self.features(x))


ARCHS = {"resnet18": (BasicBlock, (2, 2, 2, 2)), "resnet50": (Bottleneck, (3, 4, 6, 3))}


def build_resnet(arch: str, in_channels: int = 1, num_classes: int = 2, width: int = 64,
                 layer4_stride: int = 2, pool: str = "avg", pool_param: float = 0.02) -> ResNet:
    """Build a ResNet by name.

    Parameters
    ----------
    arch : {"resnet18", "resnet50"}
    in_channels, num_classes, width : int
        See :class:`ResNet`.
    layer4_stride : {2, 1}
        2 = standard; 1 keeps the last block at 1/16 of the input size for finer class activation maps
        (same parameters and state_dict layout).
    pool, pool_param
        Image-score pooling, see :class:`ResNet` (same parameters and state_dict layout in every mode).

    Returns
    -------
    ResNet
    """
    key = str(arch).lower()
    if key not in ARCHS:
        raise ValueError(f"unknown ResNet architecture {arch!r}; choose one of {sorted(ARCHS)}")
    block, layers = ARCHS[key]
    if layer4_stride not in (1, 2):
        raise ValueError(f"layer4_stride must be 1 or 2, got {layer4_stride}")
    model = ResNet(block, layers, in_channels=in_channels, num_classes=num_classes, width=width,
                   layer4_stride=layer4_stride, pool=pool, pool_param=pool_param)
    model.arch = key
    return model


def resnet18(in_channels: int = 1, num_classes: int = 2, width: int = 64) -> ResNet:
    """ResNet-18 (BasicBlock, 2-2-2-2); see :func:`build_resnet`."""
    return build_resnet("resnet18", in_channels, num_classes, width)


def resnet50(in_channels: int = 1, num_classes: int = 2, width: int = 64) -> ResNet:
    """ResNet-50 (Bottleneck, 3-4-6-3); see :func:`build_resnet`."""
    return build_resnet("resnet50", in_channels, num_classes, width)


def load_torchvision_state_dict(
    model: ResNet, state_dict: Mapping[str, torch.Tensor], strict: bool = True
) -> list[str]:
    """Load a torchvision ResNet state_dict (e.g. ImageNet weights a user owns).

    ``conv1.weight`` is adapted to ``model.in_channels``: summed over the input channels
    when the model has 1 input channel (grey = R = G = B gives the same response), or
    tiled and rescaled otherwise. ``fc.*`` is skipped (model keeps its fresh head) when
    the number of classes differs.

    Parameters
    ----------
    model : ResNet
        Target model; must have ``width=64`` for standard torchvision weights.
    state_dict : mapping of str to tensor
        torchvision state_dict (a ``"module."`` prefix from DataParallel is removed).
    strict : bool
        If True, any missing key, unexpected key or shape mismatch (other than the
        adapted ``conv1`` and the skipped ``fc``) raises ``ValueError``.

    Returns
    -------
    list of str
        Keys of ``state_dict`` that were not loaded (skipped), sorted.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of tensors, got {type(state_dict).__name__}")
    sd = {}
    for k, v in state_dict.items():
        k = k[len("module."):] if k.startswith("module.") else k
        sd[k] = torch.as_tensor(v)
    own = model.state_dict()
    skipped: list[str] = []
    problems: list[str] = []
    new: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k not in own:
            skipped.append(k)
            problems.append(f"unexpected key {k}")
            continue
        target = own[k]
        if k == "conv1.weight" and v.ndim == 4 and v.shape[1] != target.shape[1] and v.shape[0] == target.shape[0]:
            cin = target.shape[1]
            if cin == 1:
                v = v.sum(dim=1, keepdim=True)
            else:
                reps = -(-cin // v.shape[1])
                v = v.repeat(1, reps, 1, 1)[:, :cin] * (v.shape[1] / cin)
        if k.startswith("fc.") and v.shape != target.shape:
            skipped.append(k)
            continue
        if v.shape != target.shape:
            skipped.append(k)
            problems.append(f"shape mismatch for {k}: {tuple(v.shape)} vs model {tuple(target.shape)}")
            continue
        new[k] = v.to(dtype=target.dtype)
    missing = [k for k in own if k not in new and k not in skipped]
    problems += [f"missing key {k}" for k in missing]
    if strict and problems:
        raise ValueError("state_dict does not match the ResNet layout: " + "; ".join(problems[:10])
                         + (f" (+{len(problems) - 10} more)" if len(problems) > 10 else ""))
    model.load_state_dict(new, strict=False)
    return sorted(skipped)


def resize_for_classifier(image: np.ndarray, size: int) -> torch.Tensor:
    """Resize a normalised 2-D image to a (1, 1, size, size) float32 tensor with area averaging."""
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    if t.shape[-2:] != (size, size):
        t = F.interpolate(t, size=(size, size), mode="area")
    return t
