"""Point sampling for Mask2Former's point-sampled mask loss (an option; the paper's loss is full-resolution).

Points are normalized (x, y) in [0, 1] over the padded frame, read with bilinear interpolation and
align_corners=False (detectron2's `point_sample`): point (x, y) sits at pixel coordinate (x * W - 0.5, y * H - 0.5),
and samples outside the frame read zero. A prediction at 1/4 resolution and its target at full resolution therefore
share the same points.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def point_sample(features: Tensor, coords: Tensor) -> Tensor:
    """Bilinear values of features [N, C, H, W] at coords [N, P, 2] ((x, y) in [0, 1]) -> [N, C, P]."""
    grid = (2.0 * coords - 1.0).unsqueeze(2).to(features.dtype)  # [N, P, 1, 2] in grid_sample's [-1, 1]
    out = F.grid_sample(features, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # [N, C, P, 1]
    return out.squeeze(3)


def point_sample_binary(masks: Tensor, coords: Tensor) -> Tensor:
    """`point_sample(masks.float()[:, None], coords)[:, 0]` for bool masks [N, H, W] -> [N, P] in coords' dtype,
    without a float copy: a one-pixel zero border makes every neighbour index valid, then 4 gathers and lerps."""
    n, H, W = masks.shape
    border = F.pad(masks, (1, 1, 1, 1)).reshape(n, (H + 2) * (W + 2))  # [N, (H+2)*(W+2)]
    pos = coords * coords.new_tensor([W, H]) - 0.5  # [N, P, 2] pixel coordinates (align_corners False)
    low = pos.floor()
    frac = pos - low  # [N, P, 2]
    low = low.long() + 1  # top-left neighbour in the bordered frame, in [0, W] x [0, H]
    corner = (low[..., 1] * (W + 2) + low[..., 0])[..., None]  # [N, P, 1]
    steps = torch.tensor([0, 1, W + 2, W + 3], device=coords.device)  # top-left, top-right, bottom-left, bottom-right
    p = corner.shape[1]
    hits = border.gather(1, (corner + steps).view(n, 4 * p)).view(torch.uint8).to(coords.dtype).view(n, p, 4)
    top = torch.lerp(hits[..., 0], hits[..., 1], frac[..., 0])  # [N, P]
    bottom = torch.lerp(hits[..., 2], hits[..., 3], frac[..., 0])
    return torch.lerp(top, bottom, frac[..., 1])


def uncertain_point_coords(
    logits: Tensor, *, num_points: int, oversample_ratio: float = 3.0, importance_sample_ratio: float = 0.75
) -> Tensor:
    """PointRend importance sampling: [N, P, 2] points for mask logits [N, 1, h, w], the int(importance_sample_ratio
    * P) most uncertain of int(P * oversample_ratio) uniform points plus fresh uniform ones. Not differentiable."""
    if oversample_ratio < 1 or not 0 <= importance_sample_ratio <= 1:
        raise ValueError(
            f"point sampling needs oversample_ratio >= 1 and 0 <= importance_sample_ratio <= 1, got "
            f"{oversample_ratio} and {importance_sample_ratio}"
        )
    n = logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    coords = torch.rand(n, num_sampled, 2, device=logits.device)  # [N, S, 2]
    scores = -point_sample(logits, coords)[:, 0].abs()  # [N, S] uncertainty -|logit|: highest at the boundary
    num_uncertain = int(importance_sample_ratio * num_points)
    idx = _top_indices(scores, num_uncertain)  # [N, P_u]
    picked = coords.gather(1, idx.unsqueeze(-1).expand(-1, -1, 2))  # [N, P_u, 2]
    fresh = torch.rand(n, num_points - num_uncertain, 2, device=logits.device)
    return torch.cat([picked, fresh], dim=1)  # [N, P, 2]


def _top_indices(scores: Tensor, k: int) -> Tensor:
    """Indices [N, k] of the k largest scores per row (any order); on the CPU numpy's linear-time partition, many
    times faster than torch.topk on long rows."""
    if scores.device.type != "cpu" or k == 0 or k >= scores.shape[1]:
        return scores.topk(k, dim=1, sorted=False).indices
    part = np.argpartition(scores.detach().numpy(), scores.shape[1] - k, axis=1)[:, scores.shape[1] - k :]
    return torch.from_numpy(np.ascontiguousarray(part)).long()
