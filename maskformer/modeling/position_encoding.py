"""Sine positional encoding of a feature map (DETR / official MaskFormer, no padding mask; reference notes 3.4)."""

from __future__ import annotations

import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """pos = [sin/cos(y / t_i) ..., sin/cos(x / t_i) ...], t_i = temperature^(2*floor(i/2)/num_pos_feats), computed in
    float32, then cast to the input's dtype. No parameters or buffers (so no state-dict keys)."""

    temperature = 10000.0
    scale = 2 * math.pi
    eps = 1e-6

    def __init__(self, *, num_pos_feats: int = 128):
        super().__init__()
        self.num_pos_feats = num_pos_feats

    def _axis(self, n: int, device: torch.device) -> torch.Tensor:
        """Encoding of positions 1..n along one axis (normalized over the full padded map, without a mask the
        official cumulative sums): [n, num_pos_feats], interleaved (sin, cos) pairs."""
        v = torch.arange(1, n + 1, dtype=torch.float32, device=device) / (n + self.eps) * self.scale  # [n]
        i = torch.arange(self.num_pos_feats, dtype=torch.float32, device=device)
        dim_t = self.temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / self.num_pos_feats)  # [F]
        arg = v[:, None] / dim_t  # [n, F]
        return torch.stack((arg[:, 0::2].sin(), arg[:, 1::2].cos()), dim=2).flatten(1)  # [n, F/2, 2] -> [n, F]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W] (only its shape, device and dtype are used) -> pos [B, 2*num_pos_feats, H, W]."""
        b, _, h, w = x.shape
        f = self.num_pos_feats
        pos_y = self._axis(h, x.device).t()[:, :, None].expand(f, h, w)  # [F, H, W]
        pos_x = self._axis(w, x.device).t()[:, None, :].expand(f, h, w)  # [F, H, W]
        pos = torch.cat((pos_y, pos_x), dim=0).to(x.dtype)  # [2F, H, W]
        return pos.unsqueeze(0).expand(b, -1, -1, -1)

    def extra_repr(self) -> str:
        return f"num_pos_feats={self.num_pos_feats}, temperature={self.temperature}, scale={self.scale:.4f}"
