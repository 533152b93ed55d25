"""Multi-scale deformable attention (Deformable DETR, as used by Mask2Former's pixel decoder) in plain PyTorch.

Reference notes mask2former.md section 2. Each query attends, per head, to `n_points` locations on each of `n_levels`
feature maps: location = reference point + learned offset / (W_l, H_l) in normalized [0, 1] coordinates, read with
bilinear interpolation (`grid_sample`, align_corners=False, zeros outside: (j + 0.5) / W is the centre of column j),
weighted by a softmax over all levels x points of that head. This is the official `ms_deform_attn_core_pytorch`
formulation (the compiled CUDA op computes the same); no compiled op is needed.

Export-friendly: level sizes are Python ints taken from the feature maps' shapes (traced / symbolic under export),
no `.item()`, no data-dependent control flow, every intermediate at most 5-d.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def ms_deform_attn_core(
    value: torch.Tensor, shapes: list[tuple[int, int]], locations: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Weighted bilinear samples of a multi-level value map.

    value [B, S, h, d] (S = sum of H_l * W_l, levels concatenated in `shapes` order, row-major within a level);
    locations [B, Lq, h, L * P, 2] as (x, y) in [0, 1], level-major over the L * P axis; weights [B, Lq, h, L * P].
    Returns [B, Lq, h * d] = sum over (level, point) of weight * bilinear(value_l at location).
    """
    b, _, heads, d = value.shape
    lq = locations.shape[1]
    num_points = locations.shape[3] // len(shapes)
    grids = 2 * locations - 1  # grid_sample's [-1, 1] coordinates
    samples, start = [], 0
    for level, (h, w) in enumerate(shapes):
        v = value[:, start : start + h * w]  # [B, H_l*W_l, h, d]
        start = start + h * w
        v = v.flatten(2).transpose(1, 2).reshape(b * heads, d, h, w)  # [B*h, d, H_l, W_l]
        g = grids[:, :, :, level * num_points : (level + 1) * num_points]  # [B, Lq, h, P, 2]
        g = g.transpose(1, 2).flatten(0, 1)  # [B*h, Lq, P, 2]
        samples.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))  # [B*h,d,Lq,P]
    sampled = torch.cat(samples, dim=-1)  # [B*h, d, Lq, L*P]
    w = weights.transpose(1, 2).reshape(b * heads, 1, lq, -1)  # [B, Lq, h, L*P] -> [B*h, 1, Lq, L*P]
    out = (sampled * w).sum(-1)  # [B*h, d, Lq]
    return out.view(b, heads * d, lq).transpose(1, 2)  # [B, Lq, h*d]


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention with the official parameter names (`sampling_offsets`, `attention_weights`,
    `value_proj`, `output_proj`) and initialization.

    forward(query [B, Lq, C] (content + position), reference [B or 1, Lq, 2] (x, y) in [0, 1] (the same point on every
    level), value_in [B, S, C], shapes [(H_l, W_l)] * L) -> [B, Lq, C].
    """

    def __init__(self, d_model: int = 256, n_levels: int = 3, n_heads: int = 8, n_points: int = 4):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"MSDeformAttn: d_model {d_model} is not divisible by n_heads {n_heads}")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Official init: zero offset weights; offset biases point head h along angle 2*pi*h/n_heads (scaled so the
        larger component is 1), times (p + 1) for point p; uniform attention; xavier value/output projections."""
        nn.init.zeros_(self.sampling_offsets.weight)
        theta = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([theta.cos(), theta.sin()], -1)  # [h, 2]
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)  # [h, L, P, 2]
        grid *= torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for lin in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(
        self, query: torch.Tensor, reference: torch.Tensor, value_in: torch.Tensor, shapes: list[tuple[int, int]]
    ) -> torch.Tensor:
        b, lq, _ = query.shape
        heads, levels, points = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(value_in).view(b, value_in.shape[1], heads, self.d_model // heads)  # [B, S, h, d]
        offsets = self.sampling_offsets(query).view(b, lq, heads, levels, 2 * points)  # [B, Lq, h, L, P*2]
        weights = self.attention_weights(query).view(b, lq, heads, levels * points).softmax(-1)  # [B, Lq, h, L*P]
        ref = reference[:, :, None, None, :]  # [B, Lq, 1, 1, 2]
        locations = []
        for level, (h, w) in enumerate(shapes):
            off = offsets[:, :, :, level].reshape(b, lq, heads, points, 2)  # [B, Lq, h, P, 2]
            off = torch.stack((off[..., 0] / w, off[..., 1] / h), dim=-1)  # x by width, y by height
            locations.append(ref + off)
        locations = torch.cat(locations, dim=3)  # [B, Lq, h, L*P, 2]
        return self.output_proj(ms_deform_attn_core(value, shapes, locations, weights))
