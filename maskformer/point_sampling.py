"""Point sampling for Mask2Former's point-sampled mask loss (an option; the paper's loss is full-resolution).

Points are normalized (x, y) in [0, 1] over the padded frame, read with bilinear interpolation and
align_corners=False (detectron2's `point_sample`): point (x, y) sits at pixel coordinate (x * W - 0.5, y * H - 0.5),
and samples outside the frame read zero. A prediction at 1/4 resolution and its target at full resolution therefore
share the same points.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def point_sample(features: Tensor, coords: Tensor) -> Tensor:
    """Bilinear values of features [N, C, H, W] at coords [N, P, 2] ((x, y) in [0, 1]) -> [N, C, P]."""
    grid = (2.0 * coords - 1.0).unsqueeze(2).to(features.dtype)  # [N, P, 1, 2] in grid_sample's [-1, 1]
    out = F.grid_sample(features, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # [N, C, P, 1]
    return out.squeeze(3)


def point_sample_binary(masks: Tensor, coords: Tensor, size: tuple[int, int] | None = None) -> Tensor:
    """Bilinear values of binary masks at points, without a float copy of the masks.

    masks: bool [N, h, w]; coords: [N, P, 2] ((x, y) in [0, 1] of the frame `size` = (H, W) >= (h, w), default
    (h, w)); the masks are taken as zero-padded bottom/right to `size`. Returns float [N, P] equal to
    `point_sample(padded_masks.float()[:, None], coords)[:, 0]` (the 4 neighbours are gathered directly).
    """
    n, h, w = masks.shape
    H, W = size if size is not None else (h, w)
    px = coords[..., 0].float() * W - 0.5  # [N, P] pixel coordinates in the padded frame
    py = coords[..., 1].float() * H - 0.5
    x0, y0 = px.floor(), py.floor()
    fx, fy = px - x0, py - y0
    x0, y0 = x0.long(), y0.long()
    flat = masks.reshape(n, h * w)  # [N, h*w]
    out = torch.zeros(px.shape, dtype=torch.float32, device=coords.device)
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            yi, xi = y0 + dy, x0 + dx
            inside = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)  # outside the unpadded mask reads 0
            idx = yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)  # [N, P]
            hit = flat.gather(1, idx) & inside
            out += hit * (wy * wx)
    return out


def uncertainty(logits: Tensor) -> Tensor:
    """Mask2Former's point uncertainty: -|logit| (highest at the decision boundary)."""
    return -logits.abs()


def uncertain_point_coords(
    logits: Tensor, *, num_points: int, oversample_ratio: float = 3.0, importance_sample_ratio: float = 0.75
) -> Tensor:
    """PointRend importance sampling: [N, P, 2] points for mask logits [N, 1, h, w].

    Draw int(P * oversample_ratio) uniform points, keep the int(importance_sample_ratio * P) most uncertain ones,
    and add P - that many fresh uniform points. Not differentiable (call under no_grad).
    """
    if oversample_ratio < 1 or not 0 <= importance_sample_ratio <= 1:
        raise ValueError(
            f"point sampling needs oversample_ratio >= 1 and 0 <= importance_sample_ratio <= 1, got "
            f"{oversample_ratio} and {importance_sample_ratio}"
        )
    n = logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    coords = torch.rand(n, num_sampled, 2, device=logits.device)  # [N, S, 2]
    scores = uncertainty(point_sample(logits, coords))[:, 0]  # [N, S]
    num_uncertain = int(importance_sample_ratio * num_points)
    idx = scores.topk(num_uncertain, dim=1).indices  # [N, P_u]
    picked = coords.gather(1, idx.unsqueeze(-1).expand(-1, -1, 2))  # [N, P_u, 2]
    fresh = torch.rand(n, num_points - num_uncertain, 2, device=logits.device)
    return torch.cat([picked, fresh], dim=1)  # [N, P, 2]
