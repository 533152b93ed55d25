"""ResNet backbones in the detectron2 layout and parameter names (official section 2.1 / 2.2).

- ResNet-18/34: BasicBlock (conv1 3x3 with the stride, conv2 3x3, shortcut when the shape changes).
- ResNet-50/101: BottleneckBlock (conv1 1x1, conv2 3x3 with the stride ("STRIDE_IN_1X1: False"), conv3 1x1,
  shortcut 1x1 only in block 0 of a stage).
- R101c: the DeepLab stem (three 3x3 convs 3->64 s2, 64->64, 64->128, max-pool) and res5 multi-grid dilations 1/2/4
  with padding = dilation, res5 keeping stride 2 (output stride 32).

Norm defaults to FrozenBN (four buffers, never trained); every conv weight is trainable (FREEZE_AT 0). In eval mode
each conv + FrozenBN pair runs as one conv (cpu_tuning.conv_frozen_bn_folded); the state dict keeps the official
`*.norm.*` buffers. Inputs are converted to channels-last, the fast layout for oneDNN/cuDNN convs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from maskformer.backbones.base import FEATURE_NAMES, Backbone, check_image_input
from maskformer.cpu_tuning import conv_frozen_bn_folded
from maskformer.layers import Conv2d, FrozenBatchNorm2d, c2_msra_fill, group_norm

# detectron2's `get_norm` names -> norm layer of `channels` (checked by ResNet before any layer is built)
NORMS = {"FrozenBN": FrozenBatchNorm2d, "BN": nn.BatchNorm2d, "SyncBN": nn.SyncBatchNorm, "GN": group_norm}


class ConvNorm(Conv2d):
    """Bias-free conv -> norm (-> ReLU), named like detectron2 (`weight`, `norm.*`); `fold_bn`: a cpu_tuning switch."""

    def __init__(self, cin: int, cout: int, k: int, *, stride=1, padding=0, dilation=1, norm="FrozenBN", relu=False):
        conv = dict(stride=stride, padding=padding, dilation=dilation, bias=False)
        super().__init__(cin, cout, k, **conv, norm=NORMS[norm](cout))
        self.relu = relu
        self.fold_bn = True
        c2_msra_fill(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fold_bn and not self.training and isinstance(self.norm, FrozenBatchNorm2d):
            x = conv_frozen_bn_folded(self, x)
        else:
            x = self.norm(F.conv2d(x, self.weight, None, self.stride, self.padding, self.dilation, self.groups))
        return F.relu_(x) if self.relu else x


class Stem(nn.Module):
    """Conv(s) + norm + ReLU, then 3x3/2 max-pool: [B, 3, H, W] -> [B, C, H/4, W/4]. "basic": one 7x7/2 `conv1`
    (pad 3); "deeplab" (R101c): three 3x3 `conv1..3` (3->C/2 s2, C/2->C/2, C/2->C)."""

    def __init__(self, kind: str, out_channels: int, norm: str):
        super().__init__()
        if kind == "basic":
            self.conv1 = ConvNorm(3, out_channels, 7, stride=2, padding=3, norm=norm, relu=True)
        else:
            mid = out_channels // 2
            self.conv1 = ConvNorm(3, mid, 3, stride=2, padding=1, norm=norm, relu=True)
            self.conv2 = ConvNorm(mid, mid, 3, padding=1, norm=norm, relu=True)
            self.conv3 = ConvNorm(mid, out_channels, 3, padding=1, norm=norm, relu=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.children():
            x = conv(x)
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


def _shortcut(in_channels: int, out_channels: int, stride: int, norm: str) -> ConvNorm | None:
    """1x1 projection (+ norm) when the block changes shape; None (identity) otherwise."""
    if in_channels == out_channels and stride == 1:
        return None
    return ConvNorm(in_channels, out_channels, 1, stride=stride, norm=norm)


class BasicBlock(nn.Module):
    """relu(conv2(relu(conv1(x))) + shortcut(x)), two 3x3 convs, the stride in conv1."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1, norm: str = "FrozenBN"):
        super().__init__()
        self.shortcut = _shortcut(in_channels, out_channels, stride, norm)
        self.conv1 = ConvNorm(in_channels, out_channels, 3, stride=stride, padding=1, norm=norm, relu=True)
        self.conv2 = ConvNorm(out_channels, out_channels, 3, padding=1, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        return F.relu_(out.add_(x if self.shortcut is None else self.shortcut(x)))


class BottleneckBlock(nn.Module):
    """relu(conv3(relu(conv2(relu(conv1(x))))) + shortcut(x)); 1x1 -> 3x3 (stride, dilation) -> 1x1."""

    def __init__(
        self, in_channels: int, out_channels: int, bottleneck_channels: int, *, stride=1, dilation=1, norm="FrozenBN"
    ):
        super().__init__()
        self.shortcut = _shortcut(in_channels, out_channels, stride, norm)
        mid = bottleneck_channels
        self.conv1 = ConvNorm(in_channels, mid, 1, norm=norm, relu=True)
        self.conv2 = ConvNorm(mid, mid, 3, stride=stride, padding=dilation, dilation=dilation, norm=norm, relu=True)
        self.conv3 = ConvNorm(mid, out_channels, 1, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv3(self.conv2(self.conv1(x)))
        return F.relu_(out.add_(x if self.shortcut is None else self.shortcut(x)))


class ResNet(Backbone):
    """detectron2-style ResNet trunk: `stem`, then stages `res2`..`res5` (nn.Sequential of blocks).

    depths: blocks per stage; stage_channels: output channels per stage; bottleneck_channels: inner width per stage
    (bottleneck blocks) or None (basic blocks); stem: "basic" (7x7) or "deeplab" (three 3x3);
    res5_dilations: 3x3 dilation of each res5 block (multi-grid), stride stays 2.
    forward(x [B, 3, H, W] normalized) -> {"res2".."res5"}: [B, C_i, ceil(H/s_i), ceil(W/s_i)], s = 4, 8, 16, 32.
    """

    def __init__(
        self,
        *,
        depths: Sequence[int],
        stage_channels: Sequence[int],
        bottleneck_channels=None,
        stem="basic",
        stem_channels=64,
        res5_dilations=None,
        norm="FrozenBN",
        channels_last=True,
    ):
        _check_resnet_args(depths, stage_channels, bottleneck_channels, stem, res5_dilations, norm)
        super().__init__(out_channels=dict(zip(FEATURE_NAMES, stage_channels)))
        self.channels_last = channels_last
        self.stem = Stem(stem, stem_channels, norm)
        in_ch = stem_channels
        for i, (name, out_ch) in enumerate(zip(FEATURE_NAMES, stage_channels)):
            dilations = res5_dilations if (name == "res5" and res5_dilations) else [1] * depths[i]
            blocks = []
            for j, dilation in enumerate(dilations):  # only block 0 strides (and may project the shortcut)
                cin = in_ch if j == 0 else out_ch
                stride = 2 if j == 0 and i > 0 else 1
                if bottleneck_channels is None:
                    blocks.append(BasicBlock(cin, out_ch, stride=stride, norm=norm))
                else:
                    mid = bottleneck_channels[i]
                    blocks.append(BottleneckBlock(cin, out_ch, mid, stride=stride, dilation=dilation, norm=norm))
            self.add_module(name, nn.Sequential(*blocks))
            in_ch = out_ch

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        check_image_input(x, type(self).__name__)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.stem(x)
        out = {}
        for name in FEATURE_NAMES:
            out[name] = x = getattr(self, name)(x)
        return out


def _check_resnet_args(depths, stage_channels, bottleneck_channels, stem, res5_dilations, norm) -> None:
    if len(depths) != 4 or len(stage_channels) != 4:
        raise ValueError(f"ResNet needs 4 stages: got depths={list(depths)}, stage_channels={list(stage_channels)}")
    if bottleneck_channels is not None and len(bottleneck_channels) != 4:
        raise ValueError(f"ResNet bottleneck_channels needs 4 entries, got {list(bottleneck_channels)}")
    if stem not in ("basic", "deeplab"):
        raise ValueError(f"unknown ResNet stem {stem!r}; valid: basic, deeplab")
    if res5_dilations is not None:
        if bottleneck_channels is None:
            raise ValueError("res5_dilations needs bottleneck blocks (detectron2 BasicBlock has no dilation)")
        if len(res5_dilations) != depths[3]:
            raise ValueError(f"res5_dilations {list(res5_dilations)} must have one entry per res5 block ({depths[3]})")
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}")


_BASIC = dict(stage_channels=(64, 128, 256, 512))  # ResNet-18/34: basic blocks
_BOTTLENECK = dict(stage_channels=(256, 512, 1024, 2048), bottleneck_channels=(64, 128, 256, 512))
RESNET_VARIANTS = {
    "resnet18": dict(_BASIC, depths=(2, 2, 2, 2)),
    "resnet34": dict(_BASIC, depths=(3, 4, 6, 3)),
    "resnet50": dict(_BOTTLENECK, depths=(3, 4, 6, 3)),  # the official R50
    "resnet101": dict(_BOTTLENECK, depths=(3, 4, 23, 3)),
    "resnet101c": dict(_BOTTLENECK, depths=(3, 4, 23, 3), stem="deeplab", stem_channels=128, res5_dilations=(1, 2, 4)),
}
