"""The ArtSeg U-Net: the segmentation network trained on refined Score-CAM masks.

Paper configuration (Ali et al., "ArtSeg - Artifact segmentation and removal in
brightfield cell microscopy images without manual pixel-level annotations",
Sci Rep 12, 11404 (2022), doi:10.1038/s41598-022-14703-y): an encoder of 15
conv3x3 + ReLU layers with a 2x2 max-pool after every third, a 3-layer bottleneck,
a decoder of 15 conv3x3 + ReLU layers with 2x upsampling before every group of three
and skip links (concatenation), 64 filters in every layer, a 1x1 convolution head and
a sigmoid output.

``forward`` returns logits (train with ``BCEWithLogitsLoss``); ``probability`` applies
the sigmoid. ``width`` changes the filters per layer and ``scale`` runs the network on
an input down-sampled by an integer factor (area average) with logits upsampled back
bilinearly: both give faster profiles. All ops keep ``channels_last`` and run under
bf16 autocast.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ArtSegUNet", "init_conv", "paper_unet", "count_conv_layers", "conv_macs"]


def _conv_block(cin: int, cout: int, n: int) -> nn.Sequential:
    """``n`` times conv3x3 ('same' padding) + ReLU; the first maps ``cin`` -> ``cout``."""
    mods: list[nn.Module] = []
    for i in range(n):
        mods += [nn.Conv2d(cin if i == 0 else cout, cout, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
    return nn.Sequential(*mods)


def init_conv(conv: nn.Conv2d) -> None:
    """The U-Net's initialisation of a convolution: Kaiming-normal weights (ReLU gain), zero bias."""
    nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
    nn.init.zeros_(conv.bias)


class ArtSegUNet(nn.Module):
    """U-Net with a constant number of filters per layer (the ArtSeg paper's design).

    Parameters
    ----------
    in_channels : int
        Input channels (1: normalised grey brightfield image).
    out_channels : int
        Output channels (1: artifact logit).
    width : int
        Filters in every conv layer (64 in the paper).
    levels : int
        Encoder levels, each followed by a 2x2 max-pool (5 in the paper).
    convs_per_level : int
        conv3x3 layers per encoder level, in the bottleneck and per decoder level (3).
    scale : int
        Input down-sampling factor (1 = full resolution).

    Attributes
    ----------
    divisor : int
        ``2**levels * scale``; input height and width must be multiples of it.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, width: int = 64, levels: int = 5,
                 convs_per_level: int = 3, scale: int = 1):
        super().__init__()
        for name, v, lo in (("in_channels", in_channels, 1), ("out_channels", out_channels, 1),
                            ("width", width, 1), ("levels", levels, 0), ("convs_per_level", convs_per_level, 1),
                            ("scale", scale, 1)):
            if int(v) != v or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.width, self.levels = int(width), int(levels)
        self.convs_per_level, self.scale = int(convs_per_level), int(scale)
        w, n = self.width, self.convs_per_level
        self.encoder = nn.ModuleList(_conv_block(in_channels if i == 0 else w, w, n) for i in range(levels))
        self.bottleneck = _conv_block(in_channels if levels == 0 else w, w, n)
        self.decoder = nn.ModuleList(_conv_block(2 * w, w, n) for _ in range(levels))
        self.head = nn.Conv2d(w, out_channels, kernel_size=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                init_conv(m)

    @property
    def divisor(self) -> int:
        """Input H and W must be multiples of this (``2**levels * scale``)."""
        return 2 ** self.levels * self.scale

    def config(self) -> dict:
        """Constructor arguments (to rebuild the model from a saved file)."""
        return {"in_channels": self.in_channels, "out_channels": self.out_channels, "width": self.width,
                "levels": self.levels, "convs_per_level": self.convs_per_level, "scale": self.scale}

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.divisor or w % self.divisor:
            raise ValueError(f"input height and width must be multiples of {self.divisor} "
                             f"(2**levels * scale), got {h}x{w}; pad the image (tiling does)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Artifact logits, same spatial size as ``x``: (N, out_channels, H, W)."""
        self._check(x)
        size = x.shape[-2:]
        if self.scale > 1:
            x = F.avg_pool2d(x, self.scale)
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for block, skip in zip(self.decoder, reversed(skips)):
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = block(torch.cat((x, skip), dim=1))
        x = self.head(x)
        if self.scale > 1:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x

    def probability(self, x: torch.Tensor) -> torch.Tensor:
        """Artifact probability (sigmoid of the logits), float32."""
        return torch.sigmoid(self.forward(x).float())


def paper_unet(in_channels: int = 1, out_channels: int = 1) -> ArtSegUNet:
    """The paper configuration: 5 levels x 3 convs, 64 filters, full resolution."""
    return ArtSegUNet(in_channels, out_channels, width=64, levels=5, convs_per_level=3, scale=1)


def count_conv_layers(model: ArtSegUNet) -> dict:
    """Count the conv layers of a U-Net by part.

    Returns
    -------
    dict
        ``encoder``, ``bottleneck``, ``decoder`` (conv3x3 layers), ``head`` (1x1) and ``total``.
    """
    def n3(mod):
        return sum(1 for m in mod.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))

    out = {"encoder": n3(model.encoder), "bottleneck": n3(model.bottleneck), "decoder": n3(model.decoder),
           "head": sum(1 for m in model.head.modules() if isinstance(m, nn.Conv2d))}
    out["total"] = sum(out.values())
    return out


def conv_macs(model: nn.Module, height: int, width: int) -> int:
    """Multiply-accumulates of all convolutions of one forward pass on an ``height x width`` input.

    Counted analytically from the layer shapes ('same' padding: every conv at level ``l``
    produces ``(H / scale / 2**l) * (W / scale / 2**l)`` outputs). FLOPs = 2 * MACs.
    The input pooling, max-pools, upsampling and ReLUs are not counted.
    """
    if not isinstance(model, ArtSegUNet):
        raise TypeError("conv_macs supports ArtSegUNet only")
    if height % model.divisor or width % model.divisor:
        raise ValueError(f"height and width must be multiples of {model.divisor}, got {height}x{width}")
    h, w = height // model.scale, width // model.scale
    total = 0
    for lvl, (enc, dec) in enumerate(zip(model.encoder, model.decoder)):
        px = (h >> lvl) * (w >> lvl)
        for block in (enc, dec):
            for m in block.modules():
                if isinstance(m, nn.Conv2d):
                    total += px * m.in_channels * m.out_channels * m.kernel_size[0] * m.kernel_size[1]
    px = (h >> model.levels) * (w >> model.levels)
    for m in model.bottleneck.modules():
        if isinstance(m, nn.Conv2d):
            total += px * m.in_channels * m.out_channels * 9
    total += h * w * model.head.in_channels * model.head.out_channels
    return int(total)
