"""Hungarian matching between predicted masks and target segments (reference section 4.2).

Cost C[q, t] = cost_class * (-softmax(logits)[q, label_t]) + cost_mask * focal(q, t) + cost_dice * dice(q, t):
- class: the probability over K+1 classes (not its log);
- mask: the sigmoid focal loss (alpha 0.25, gamma 2) of prediction q against target t, summed over pixels / (H*W);
- dice: 1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1), p = sigmoid(logit);
computed at the prediction resolution (1/4) with nearest-downsampled targets and solved per image by
`scipy.optimize.linear_sum_assignment`. The cost matrices of the whole batch come from batched tensor operations:
every pairwise term is linear in the target, sum_n f(x_qn) t_tn + sum_n g(x_qn) (1 - t_tn), so one batched
matrix product per cost against the zero-padded [B, max T, N] targets gives all images' matrices (split afterwards);
very large batches are processed in groups of images to bound memory.

With `num_points > 0` the matcher follows Mask2Former instead: the mask cost is the sigmoid binary cross-entropy
(no focal weighting) and both mask costs use `num_points` uniform random points per image, the same points for every
prediction and target of that image.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from maskformer.point_sampling import point_sample, point_sample_binary

FOCAL_ALPHA = 0.25  # focal loss alpha; gamma is 2 (squared below)
GROUP_ELEMENTS = 1 << 22  # cost terms of at most this many (query, pixel) pairs at once: 16 MB per fp32 temporary


def pairwise_focal_cost(x: Tensor, t: Tensor, p: Tensor | None = None) -> Tensor:
    """Focal cost of logits x [B, Q, N] against binary targets t [B, T, N] -> [B, Q, T], mean over the N pixels.

    Positive pixels cost alpha (1-p)^2 BCE(x, 1), negative ones (1-alpha) p^2 BCE(x, 0), with BCE(x, 0) = softplus(x)
    and BCE(x, 1) = softplus(x) - x; sum_n [t pos + (1-t) neg] = t @ (pos - neg) + sum_n neg. `p`: sigmoid(x) if known.
    """
    p = x.sigmoid() if p is None else p
    sp = F.softplus(x)
    neg = p * p
    neg.mul_(sp)  # p^2 BCE(x, 0)
    diff = (1 - p).square_().mul_(sp.sub_(x)).sub_(neg, alpha=(1 - FOCAL_ALPHA) / FOCAL_ALPHA)  # (pos - neg) / alpha
    cost = torch.baddbmm(neg.sum(-1, keepdim=True), diff, t.transpose(1, 2), beta=1 - FOCAL_ALPHA, alpha=FOCAL_ALPHA)
    return cost.div_(x.shape[-1])


def pairwise_bce_cost(x: Tensor, t: Tensor) -> Tensor:
    """Sigmoid BCE cost (Mask2Former) [B, Q, N] x [B, T, N] -> [B, Q, T], mean over N: softplus(x) - x t."""
    return torch.baddbmm(F.softplus(x).sum(-1, keepdim=True), x, t.transpose(1, 2), alpha=-1.0).div_(x.shape[-1])


def pairwise_dice_cost(x: Tensor, t: Tensor, p: Tensor | None = None) -> Tensor:
    """Dice cost with +1 smoothing, logits x [B, Q, N] against targets t [B, T, N] -> [B, Q, T]."""
    p = x.sigmoid() if p is None else p
    inter = torch.bmm(p, t.transpose(1, 2))  # [B, Q, T]
    return 1 - (2 * inter + 1) / (p.sum(-1)[:, :, None] + t.sum(-1)[:, None, :] + 1)


def downsample_masks(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour resize of bool masks [T, H, W] to `size` (F.interpolate "nearest") -> bool [T, h, w]."""
    H, W = masks.shape[-2:]
    h, w = size
    if (H, W) == (h, w):
        return masks
    if H % h == 0 and W % w == 0:  # integer ratio: nearest picks source pixel (i * H/h), a strided view
        return masks[:, :: H // h, :: W // w]
    return F.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0] > 0.5


def pack_targets(rows: list[Tensor], dtype: torch.dtype) -> Tensor:
    """Stack per-image target rows [T_i, N] into a zero-padded [B, max T_i, N] tensor of `dtype`."""
    n = rows[0].shape[-1]
    out = torch.zeros(len(rows), max(r.shape[0] for r in rows), n, dtype=dtype, device=rows[0].device)
    for b, r in enumerate(rows):
        out[b, : r.shape[0]] = r
    return out


class HungarianMatcher(nn.Module):
    """Optimal one-to-one assignment of Q predictions to T targets per image (min(Q, T) pairs), without gradient."""

    def __init__(
        self, *, cost_class: float = 1.0, cost_mask: float = 20.0, cost_dice: float = 1.0, num_points: int = 0
    ):
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("HungarianMatcher: all costs are 0")
        self.cost_class, self.cost_mask, self.cost_dice = cost_class, cost_mask, cost_dice
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
        """The weighted cost matrices, one float [Q, T_i] per image (NaN/inf replaced by the largest float).

        Computed for groups of images at once (the whole batch unless B*Q*N exceeds GROUP_ELEMENTS)."""
        B, Q = pred_logits.shape[:2]
        if len(labels) != B or len(masks) != B:
            raise ValueError(f"HungarianMatcher: {B} predictions but {len(labels)} labels and {len(masks)} masks")
        per_image = Q * (self.num_points if self.num_points > 0 else pred_masks[0, 0].numel())
        step = max(1, GROUP_ELEMENTS // per_image)
        costs = []
        with torch.autocast(pred_logits.device.type, enabled=False):
            for i in range(0, B, step):
                g = slice(i, i + step)
                cost = self._group_costs(_fp32(pred_logits[g]), _fp32(pred_masks[g]), labels[g], masks[g])
                costs += [cost[b, :, : len(lb)] for b, lb in enumerate(labels[g])]
        return costs

    def _group_costs(
        self, pred_logits: Tensor, pred_masks: Tensor, labels: list[Tensor], masks: list[Tensor]
    ) -> Tensor:
        """Weighted costs [b, Q, Tmax] of b images (columns past an image's T_i are padding)."""
        b, Q = pred_logits.shape[:2]
        x, t = self._mask_rows(pred_masks, masks)  # [b, Q, N], [b, Tmax, N]
        lab = pack_targets([lb.to(x.device)[:, None] for lb in labels], torch.long)[..., 0]  # [b, Tmax] (0-padded)
        prob = pred_logits.softmax(-1)  # [b, Q, K+1]
        cost = -self.cost_class * prob.gather(2, lab[:, None, :].expand(b, Q, -1))  # [b, Q, Tmax]
        p = x.sigmoid()  # [b, Q, N], shared by both mask costs
        if self.cost_mask != 0:
            mask_cost = pairwise_bce_cost(x, t) if self.num_points > 0 else pairwise_focal_cost(x, t, p)
            cost = cost + self.cost_mask * mask_cost
        if self.cost_dice != 0:
            cost = cost + self.cost_dice * pairwise_dice_cost(x, t, p)
        big = torch.finfo(cost.dtype).max
        return torch.nan_to_num(cost, nan=big, posinf=big, neginf=big)

    def _mask_rows(self, pred_masks: Tensor, masks: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Predictions [B, Q, N] and packed float targets [B, Tmax, N] at the pixels or points the costs use."""
        B, Q, h, w = pred_masks.shape
        if self.num_points <= 0:
            rows = [downsample_masks(m, (h, w)).reshape(m.shape[0], h * w) for m in masks]  # [T_i, h*w]
            return pred_masks.reshape(B, Q, h * w), pack_targets(rows, pred_masks.dtype)
        coords = torch.rand(B, self.num_points, 2, device=pred_masks.device)  # [B, P, 2], shared within an image
        x = point_sample(pred_masks, coords)  # [B, Q, P] (queries as channels)
        counts = [m.shape[0] for m in masks]
        owner = torch.repeat_interleave(
            torch.arange(B, device=coords.device), torch.tensor(counts, device=coords.device)
        )
        rows = point_sample_binary(torch.cat(masks), coords[owner])  # [sum T_i, P], each at its image's points
        return x, pack_targets(list(rows.split(counts)), pred_masks.dtype)

    @staticmethod
    def _solve(cost: Tensor) -> tuple[Tensor, Tensor]:
        rows, cols = linear_sum_assignment(cost.cpu().numpy())
        return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(np.asarray(cols), dtype=torch.int64)

    def extra_repr(self) -> str:
        costs = f"cost_class={self.cost_class}, cost_mask={self.cost_mask}, cost_dice={self.cost_dice}"
        return f"{costs}, num_points={self.num_points}"


def _fp32(x: Tensor) -> Tensor:
    """Half/bfloat16 -> float32 (costs and losses always run in at least fp32); float32/float64 unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
