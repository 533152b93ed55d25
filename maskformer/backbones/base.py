"""The backbone contract and small helpers shared by every backbone.

A backbone maps a normalized image batch x [B, 3, H, W] to four feature maps {"res2", "res3", "res4", "res5"} at
strides 4, 8, 16, 32 and advertises `out_channels`, `strides` and `size_divisibility`. Any `nn.Module` with these
attributes works with `build_model(cfg, backbone=...)`; subclassing `Backbone` is a convenience, not a requirement.

Feature maps may be returned in channels-last memory layout ([B, C, H, W] shape, NHWC strides) because that is
what the fast CPU/GPU kernels produce; use `.reshape`/`.flatten` (not `.view`) on them.
"""

from __future__ import annotations

import torch
from torch import nn

FEATURE_NAMES = ("res2", "res3", "res4", "res5")


class Backbone(nn.Module):
    """Base class holding the contract attributes; size_divisibility: the input side multiple the model pads to
    (32: every stage halves cleanly)."""

    size_divisibility: int = 32

    def __init__(self, *, out_channels: dict[str, int]):
        super().__init__()
        self.out_channels = dict(out_channels)
        self.strides = dict(zip(FEATURE_NAMES, (4, 8, 16, 32)))

    def optimize_for_inference(self) -> Backbone:
        """Eval mode plus any precomputation inference can reuse; the state dict is unchanged."""
        self.eval()
        return self


def check_image_input(x: torch.Tensor, who: str, min_side: int = 1) -> None:
    """Raise a clear error unless x is a floating [B, 3, H, W] tensor with H, W >= min_side."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{who}: expected a torch.Tensor [B, 3, H, W], got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"{who}: expected an image batch of shape [B, 3, H, W], got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{who}: expected a floating-point (normalized) image tensor, got dtype {x.dtype}")
    if x.shape[-2] < min_side or x.shape[-1] < min_side:
        raise ValueError(f"{who}: input {tuple(x.shape[-2:])} is smaller than the minimum side {min_side}")


def is_exporting() -> bool:
    """True while tracing/scripting/compiling, where Python-side caches must not be used."""
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()


def num_parameters(module: nn.Module) -> int:
    """Trainable-size count (also `flops.count_parameters`): all parameters plus the FrozenBN affine buffers, so
    counts match the published numbers (torchvision's ResNet-50 trunk = 23.5 M with BatchNorm parameters)."""
    from maskformer.layers import FrozenBatchNorm2d

    n = sum(p.numel() for p in module.parameters())
    return n + sum(m.weight.numel() + m.bias.numel() for m in module.modules() if isinstance(m, FrozenBatchNorm2d))
