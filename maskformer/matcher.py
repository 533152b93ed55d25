"""Hungarian matching between predicted masks and target segments (reference section 4.2).

Cost C[q, t] = cost_class * (-softmax(logits)[q, label_t]) + cost_mask * focal(q, t) + cost_dice * dice(q, t), at the
prediction resolution (1/4) against nearest-downsampled targets, solved per image by `linear_sum_assignment`. Every
pairwise term is linear in the target, sum_n f(x_qn) t_tn + g(x_qn) (1 - t_tn), so each cost is one matrix product
against the image's [T, N] target rows. With `num_points > 0` it follows Mask2Former: sigmoid BCE instead of focal,
both mask costs at `num_points` uniform random points per image (shared by that image's predictions and targets).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from maskformer.mask_losses import FOCAL_ALPHA
from maskformer.point_sampling import point_sample, point_sample_binary

CHUNK_ELEMENTS = 1 << 17  # (query, pixel) pairs per cost chunk: 512 KB fp32 temporaries that stay in L2


def pairwise_focal_cost(x: Tensor, t: Tensor, p: Tensor | None = None) -> Tensor:
    """Focal cost of logits x [..., Q, N] against binary targets t [..., T, N] -> [..., Q, T], mean over the N pixels.

    Positive pixels cost alpha (1-p)^2 BCE(x, 1), negative ones (1-alpha) p^2 BCE(x, 0), with BCE(x, 0) = softplus(x)
    and BCE(x, 1) = softplus(x) - x; sum_n [t pos + (1-t) neg] = t @ (pos - neg) + sum_n neg. `p`: sigmoid(x) if known.
    """
    p = x.sigmoid() if p is None else p
    sp = F.softplus(x)
    neg = p * p
    neg.mul_(sp)  # p^2 BCE(x, 0)
    diff = (1 - p).square_().mul_(sp.sub_(x)).sub_(neg, alpha=(1 - FOCAL_ALPHA) / FOCAL_ALPHA)  # (pos - neg) / alpha
    cost = (diff @ t.transpose(-1, -2)).mul_(FOCAL_ALPHA).add_(neg.sum(-1, keepdim=True), alpha=1 - FOCAL_ALPHA)
    return cost.div_(x.shape[-1])


def pairwise_bce_cost(x: Tensor, t: Tensor) -> Tensor:
    """Sigmoid BCE cost (Mask2Former) [..., Q, N] x [..., T, N] -> [..., Q, T], mean over N: softplus(x) - x t."""
    return (F.softplus(x).sum(-1, keepdim=True) - x @ t.transpose(-1, -2)).div_(x.shape[-1])


def pairwise_dice_cost(x: Tensor, t: Tensor, p: Tensor | None = None) -> Tensor:
    """Dice cost with +1 smoothing, logits x [..., Q, N] against targets t [..., T, N] -> [..., Q, T]."""
    p = x.sigmoid() if p is None else p
    inter = p @ t.transpose(-1, -2)  # [..., Q, T]
    return 1 - (2 * inter + 1) / (p.sum(-1)[..., :, None] + t.sum(-1)[..., None, :] + 1)


def downsample_masks(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour resize of bool masks [T, H, W] to `size` (F.interpolate "nearest") -> bool [T, h, w]."""
    H, W = masks.shape[-2:]
    h, w = size
    if H % h == 0 and W % w == 0:  # integer ratio: nearest picks source pixel (i * H/h), a strided view
        return masks[:, :: H // h, :: W // w]
    return F.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0] > 0.5


class HungarianMatcher(nn.Module):
    """Optimal one-to-one assignment of Q predictions to T targets per image (min(Q, T) pairs), without gradient."""

    def __init__(
        self, *, cost_class: float = 1.0, cost_mask: float = 20.0, cost_dice: float = 1.0, num_points: int = 0
    ):
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("HungarianMatcher: all costs are 0")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    @torch.no_grad()
    def forward(
        self, pred_logits: Tensor, pred_masks: Tensor, labels: list[Tensor], masks: list[Tensor]
    ) -> list[tuple[Tensor, Tensor]]:
        """pred_logits [B, Q, K+1], pred_masks [B, Q, h, w], labels[i] int64 [T_i], masks[i] bool [T_i, H, W] (the
        padded frame, H/h = W/w = 4 in the model). Returns per image (pred_idx, tgt_idx), int64 [min(Q, T_i)] on the
        CPU, pred_idx ascending."""
        return [self._solve(c) for c in self.cost_matrices(pred_logits, pred_masks, labels, masks)]

    @torch.no_grad()
    def cost_matrices(
        self, pred_logits: Tensor, pred_masks: Tensor, labels: list[Tensor], masks: list[Tensor]
    ) -> list[Tensor]:
        """The weighted cost matrices, one float [Q, T_i] per image (NaN/inf replaced by the largest float)."""
        B = pred_logits.shape[0]
        if len(labels) != B or len(masks) != B:
            raise ValueError(f"HungarianMatcher: {B} predictions but {len(labels)} labels and {len(masks)} masks")
        with torch.autocast(pred_logits.device.type, enabled=False):
            prob = _fp32(pred_logits).softmax(-1)  # [B, Q, K+1]
            pred_masks = _fp32(pred_masks)
            coords = None
            if self.num_points > 0:  # shared by an image's predictions and targets
                coords = torch.rand(B, self.num_points, 2, device=pred_masks.device).to(pred_masks.dtype)
            return [
                self._image_cost(prob[b], pred_masks[b], labels[b], masks[b], None if coords is None else coords[b])
                for b in range(B)
            ]

    def _image_cost(
        self, prob: Tensor, pred_masks: Tensor, labels: Tensor, masks: Tensor, coords: Tensor | None
    ) -> Tensor:
        """Weighted costs [Q, T] of one image: prob [Q, K+1], pred_masks [Q, h, w], labels [T], masks bool [T, H, W],
        coords [P, 2] in point mode. The mask costs run over chunks of queries whose temporaries stay in cache."""
        cost = -self.cost_class * prob[:, labels.to(prob.device)]  # [Q, T]
        if len(labels) == 0 or (self.cost_mask == 0 and self.cost_dice == 0):
            return _finite(cost)
        Q, h, w = pred_masks.shape
        if coords is None:
            t = downsample_masks(masks, (h, w)).reshape(len(masks), h * w).to(pred_masks.dtype)  # [T, h*w]
        else:
            t = point_sample_binary(masks, coords.expand(len(masks), -1, -1))  # [T, P]
        step = max(1, CHUNK_ELEMENTS // t.shape[1]) if pred_masks.device.type == "cpu" else Q  # GPUs: one chunk
        for q in range(0, Q, step):
            rows = pred_masks[q : q + step]
            if coords is None:
                x = rows.reshape(-1, h * w)  # [c, h*w]
            else:
                x = point_sample(rows[None], coords[None])[0]  # [c, P]
            p = x.sigmoid()  # shared by both mask costs
            if self.cost_mask != 0:
                mask_cost = pairwise_bce_cost(x, t) if coords is not None else pairwise_focal_cost(x, t, p)
                cost[q : q + step] += self.cost_mask * mask_cost
            if self.cost_dice != 0:
                cost[q : q + step] += self.cost_dice * pairwise_dice_cost(x, t, p)
        return _finite(cost)

    @staticmethod
    def _solve(cost: Tensor) -> tuple[Tensor, Tensor]:
        rows, cols = linear_sum_assignment(cost.cpu().numpy())
        return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(np.asarray(cols), dtype=torch.int64)

    def extra_repr(self) -> str:
        costs = f"cost_class={self.cost_class}, cost_mask={self.cost_mask}, cost_dice={self.cost_dice}"
        return f"{costs}, num_points={self.num_points}"


def _finite(cost: Tensor) -> Tensor:
    """NaN and +-inf replaced by the largest float, so linear_sum_assignment always has a solution."""
    big = torch.finfo(cost.dtype).max
    return torch.nan_to_num(cost, nan=big, posinf=big, neginf=big)


def _fp32(x: Tensor) -> Tensor:
    """Half/bfloat16 -> float32 (costs and losses always run in at least fp32); float32/float64 unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
