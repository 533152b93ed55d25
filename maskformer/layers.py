"""Small building blocks shared by backbones and heads, with detectron2-compatible parameter names.

`Conv2d` carries its norm as a submodule named `norm` (so state-dict keys read `conv1.weight`, `conv1.norm.weight`
exactly as in the official checkpoints) and an optional activation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters, all four stored as buffers (never trained).

    y = (x - running_mean) / sqrt(running_var + eps) * weight + bias, computed as one scale and shift.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def scale_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift) with y = x * scale + shift, both [C]."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self.scale_shift()
        return x * scale.to(x.dtype).view(1, -1, 1, 1) + shift.to(x.dtype).view(1, -1, 1, 1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "num_batches_tracked", None)  # torchvision/BatchNorm2d checkpoints carry it
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


class Conv2d(nn.Conv2d):
    """nn.Conv2d followed by an optional `norm` submodule and an optional activation (detectron2's wrapper)."""

    def __init__(self, *args, norm: nn.Module | None = None, activation: nn.Module | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


def c2_xavier_fill(module: nn.Module) -> nn.Module:
    """Caffe2 "XavierFill": kaiming-uniform with a=1 on the weight, zero bias. Returns the module."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.constant_(module.bias, 0)
    return module


def c2_msra_fill(module: nn.Module) -> nn.Module:
    """Caffe2 "MSRAFill": kaiming-normal, fan_out, relu; zero bias. Returns the module."""
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if module.bias is not None:
        nn.init.constant_(module.bias, 0)
    return module


def group_norm(channels: int) -> nn.GroupNorm:
    """detectron2's "GN": 32 groups."""
    return nn.GroupNorm(32, channels)
