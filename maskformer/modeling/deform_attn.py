"""Multi-scale deformable attention (Deformable DETR, as used by Mask2Former's pixel decoder) in plain PyTorch.

Reference notes mask2former.md section 2. Each query attends, per head, to `n_points` locations on each of `n_levels`
feature maps: location = reference point + learned offset / (W_l, H_l) in normalized [0, 1] coordinates, read with
bilinear interpolation (align_corners=False, zeros outside: (j + 0.5) / W is the centre of column j), weighted by a
softmax over all levels x points of that head. This is the official formulation; no compiled op is needed.

Two exact forms of the sampling core:
- `gather_core` (eager): one `F.embedding_bag` over the 4 bilinear corners of every sample, the attention weight folded
  into the corner weights. The value is kept channels-last ([B, S, heads, d] rows, so each corner reads d contiguous
  floats) and zero-padded around each level, so out-of-range corners read zeros instead of needing masks.
- `grid_sample_core` (export): the official `grid_sample` form; level sizes are Python ints taken from the feature maps'
  shapes (symbolic under export), no `.item()`, no data-dependent control flow, every intermediate at most 5-d.
  Selected automatically while tracing / exporting.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def exporting() -> bool:
    """True while tracing for ONNX or torch.export / compiling: use the exportable `grid_sample_core` then."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


def grid_sample_core(
    value: torch.Tensor, shapes: list[tuple[int, int]], locations: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """`ms_deform_attn_core` with `F.grid_sample` per level (the official form; exports to ONNX GridSample)."""
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


def level_sizes(shapes: list[tuple[int, int]], num_points: int, like: torch.Tensor) -> torch.Tensor:
    """(W_l, H_l) of the level of each of the L * P samples (level-major) as [2, L * P], dtype / device of `like`."""
    sizes = torch.tensor([[w for _, w in shapes], [h for h, _ in shapes]], dtype=like.dtype, device=like.device)
    return sizes.repeat_interleave(num_points, dim=1)


def gather_core(
    value: torch.Tensor, shapes: list[tuple[int, int]], pixels: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """`ms_deform_attn_core` in pixel coordinates: pixels [B, Lq, h, 2, L*P] = location * (W_l, H_l) - 0.5, x then y
    (pixel j's centre is at j); value [B, S, h, d]; weights [B, Lq, h, L*P] (any strides) -> [B, Lq, h*d].

    Each level is zero-padded by 1 pixel before and 2 after in both axes, and coordinates are clamped to [-1, size]:
    a corner outside the level then reads a zero row, exactly as grid_sample's zero padding (a clamped coordinate has
    all four corners outside, so value and gradient are 0 there too). Row of corner (x, y) of head k in the table
    [B * S_pad * h, d]: ((b * S_pad + start_l + (y + 1) * (W_l + 3) + x + 1) * h + k. The samples of one query and
    head form one bag of 4 * L * P rows. Differentiable w.r.t. value, pixels and weights (the corner indices are
    piecewise constant). The L * P axis is innermost everywhere so the elementwise steps run on contiguous rows.
    """
    b, s, heads, d = value.shape
    lq, lp = pixels.shape[1], pixels.shape[-1]
    points = lp // len(shapes)
    channels = heads * d
    padded = [(h + 3, w + 3) for h, w in shapes]
    s_pad = sum(h * w for h, w in padded)
    table = value.new_zeros(b, s_pad, channels)  # [B, S_pad, h*d]
    start, start_pad = 0, 0
    for (h, w), (hp, wp) in zip(shapes, padded):
        inner = table[:, start_pad : start_pad + hp * wp].view(b, hp, wp, channels)[:, 1 : h + 1, 1 : w + 1]
        inner.copy_(value[:, start : start + h * w].reshape(b, h, w, channels))
        start, start_pad = start + h * w, start_pad + hp * wp

    device = value.device
    sizes = level_sizes(shapes, points, pixels)  # [2, L*P] (W_l; H_l)
    xy = torch.clamp(pixels, -torch.ones_like(sizes), sizes)  # [B, Lq, h, 2, L*P]
    corner = xy.floor()
    frac = xy - corner
    tent = torch.stack((1 - frac, frac), dim=3)  # [B, Lq, h, 2 (corner 0, 1), 2 (x, y), L*P]
    weights_y = weights[:, :, :, None] * tent[:, :, :, :, 1]  # [B, Lq, h, 2 (y corner), L*P]
    corner_weights = weights_y[:, :, :, :, None] * tent[:, :, :, None, :, 0]  # [B, Lq, h, 2 (y), 2 (x), L*P]

    # row of corner (0, 0) without the constant part, x * h + y * (W_l + 3) * h, as one matmul of [.., 2 * L*P] with a
    # [2 * L*P, L*P] matrix (exact: integers below 2**24 in float32, else float64)
    exact = torch.float32 if max(h * w for h, w in padded) * heads < 2**24 else torch.float64
    strides = torch.tensor([[heads] * len(padded), [wp * heads for _, wp in padded]], dtype=exact, device=device)
    select = torch.cat([torch.diag(a) for a in strides.repeat_interleave(points, dim=1)])  # [2 * L*P, L*P]
    row = torch.matmul(corner.detach().to(exact).flatten(-2), select)  # [B, Lq, h, L*P]
    index = torch.int32 if b * s_pad * heads < 2**31 else torch.int64
    # constant part per (batch, head, corner, sample): (b * S_pad + start_l + W_l + 4) * h + k + (0, h, W'h, W'h + h)
    starts = torch.tensor([0] + [h * w for h, w in padded[:-1]], device=device).cumsum(0)
    level_const = ((starts + torch.tensor([wp + 1 for _, wp in padded], device=device)) * heads).repeat_interleave(
        points
    )  # [L*P]
    corner_step = torch.tensor([[0, heads, wp * heads, (wp + 1) * heads] for _, wp in padded], device=device)
    const = (
        torch.arange(b, device=device).view(b, 1, 1, 1, 1) * (s_pad * heads)
        + torch.arange(heads, device=device).view(1, 1, heads, 1, 1)
        + level_const.view(1, 1, 1, 1, lp)
        + corner_step.t().repeat_interleave(points, dim=1).view(1, 1, 1, 4, lp)
    ).to(index)  # [B, 1, h, 4, L*P]
    rows = row.to(index)[:, :, :, None] + const  # [B, Lq, h, 4 (corner), L*P]
    out = F.embedding_bag(
        rows.view(-1, 4 * lp),
        table.view(-1, d),
        per_sample_weights=corner_weights.reshape(-1, 4 * lp),
        mode="sum",
    )  # [B*Lq*h, d]
    return out.view(b, lq, channels)


def ms_deform_attn_core(
    value: torch.Tensor, shapes: list[tuple[int, int]], locations: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Weighted bilinear samples of a multi-level value map.

    value [B, S, h, d] (S = sum of H_l * W_l, levels concatenated in `shapes` order, row-major within a level);
    locations [B, Lq, h, L * P, 2] as (x, y) in [0, 1], level-major over the L * P axis; weights [B, Lq, h, L * P].
    Returns [B, Lq, h * d] = sum over (level, point) of weight * bilinear(value_l at location).
    """
    if exporting():
        return grid_sample_core(value, shapes, locations, weights)
    pixels = locations.transpose(-1, -2) * level_sizes(shapes, locations.shape[3] // len(shapes), locations) - 0.5
    return gather_core(value, shapes, pixels, weights)


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
        if not exporting():
            # output rows reordered so that the L*P axis is innermost: offsets [B, Lq, h, 2, L*P] (x; y), attention
            # logits [B, Lq, L*P, h] (a softmax over a non-last axis of 12 runs much faster than over the last)
            lin = self.sampling_offsets
            order = torch.arange(lin.out_features, device=query.device).view(heads, levels * points, 2)
            order = order.transpose(1, 2).flatten()
            offsets = F.linear(query, lin.weight[order], lin.bias[order]).view(b, lq, heads, 2, levels * points)
            lin = self.attention_weights
            order = torch.arange(lin.out_features, device=query.device).view(heads, levels * points).t().flatten()
            logits = F.linear(query, lin.weight[order], lin.bias[order]).view(b, lq, levels * points, heads)
            weights = logits.softmax(2).transpose(2, 3)  # [B, Lq, h, L*P]
            # pixel coordinates: location * size - 0.5 = reference * size - 0.5 + offset
            base = reference[:, :, None, :, None] * level_sizes(shapes, points, offsets) - 0.5  # [B|1, Lq, 1, 2, L*P]
            return self.output_proj(gather_core(value, shapes, offsets + base, weights))
        offsets = self.sampling_offsets(query).view(b, lq, heads, levels, 2 * points)  # [B, Lq, h, L, P*2]
        weights = self.attention_weights(query).view(b, lq, heads, levels * points).softmax(-1)  # [B, Lq, h, L*P]
        ref = reference[:, :, None, None, :]  # [B, Lq, 1, 1, 2]
        locations = []
        for level, (h, w) in enumerate(shapes):
            off = offsets[:, :, :, level].reshape(b, lq, heads, points, 2)  # [B, Lq, h, P, 2]
            off = torch.stack((off[..., 0] / w, off[..., 1] / h), dim=-1)  # x by width, y by height
            locations.append(ref + off)
        locations = torch.cat(locations, dim=3)  # [B, Lq, h, L*P, 2]
        return self.output_proj(grid_sample_core(value, shapes, locations, weights))
