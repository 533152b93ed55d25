"""Per-mask losses of matched (prediction, target) pairs: the paper's full-resolution focal + dice loss, and
Mask2Former's point-sampled sigmoid-BCE + dice loss (the `point_sampling` option).

Full resolution (reference section 4.3): the 1/4-resolution logits are upsampled bilinearly (align_corners False) to
the padded target size, then per mask
    focal = mean over pixels of alpha_t (1 - p_t)^2 BCE(x, t)      (alpha 0.25; padding/ignore pixels are negatives)
    dice  = 1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1).
`full_res_mask_losses` computes both in one fused pass, chunked over masks so the full-resolution tensors stay small
and cache-resident, and recomputes the upsampling in backward instead of storing it. With the signed logit
z = x (t = 0) or -x (t = 1): BCE = softplus(z) and 1 - p_t = sigmoid(z), so focal = alpha_t softplus(z) sigmoid(z)^2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from maskformer.point_sampling import point_sample, point_sample_binary, uncertain_point_coords

FOCAL_ALPHA = 0.25
CHUNK_PIXELS = 1 << 20  # full-resolution elements per chunk (4 MB in fp32)


def _upsample(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """[m, h, w] -> [m, H*W], bilinear, align_corners False."""
    up = F.interpolate(logits[:, None], size=size, mode="bilinear", align_corners=False)  # [m, 1, H, W]
    return up.flatten(1)


def _forward_terms(x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Full-resolution logits x [m, N], bool targets t [m, N] -> focal [m], dice numerator A [m], denominator D [m]."""
    tf = t.to(x.dtype)
    s = torch.where(t, -x, x).sigmoid_()  # sigmoid(z) = 1 - p_t
    focal = (torch.where(t, FOCAL_ALPHA, 1 - FOCAL_ALPHA) * F.softplus(torch.where(t, -x, x)) * s * s).mean(1)
    sum_t = tf.sum(1)
    sum_ts = (tf * s).sum(1)
    sum_p = s.sum(1) + sum_t - 2 * sum_ts  # p = s where t = 0, 1 - s where t = 1
    return focal, 2 * (sum_t - sum_ts) + 1, sum_p + sum_t + 1


def _backward_terms(x: Tensor, t: Tensor, g_focal: Tensor, g_dice: Tensor, num: Tensor, den: Tensor) -> Tensor:
    """d(sum g_focal focal + g_dice dice)/dx at full resolution, [m, N]; all per-mask inputs are [m]."""
    z = torch.where(t, -x, x)
    s = z.sigmoid()
    s1 = 1 - s
    # d focal / dz = alpha_t s^2 (s + 2 softplus(z) (1 - s)) / N, dz/dx = -1 where t
    c_pos = (-FOCAL_ALPHA * g_focal / x.shape[1])[:, None]
    c_neg = ((1 - FOCAL_ALPHA) * g_focal / x.shape[1])[:, None]
    d_focal = torch.where(t, c_pos, c_neg) * s * s * (s + 2 * F.softplus(z) * s1)
    # d dice / dp = A / D^2 - 2 t / D, dp/dx = p (1 - p) = s (1 - s)
    a = (g_dice * num / den.square())[:, None]
    d_dice = torch.where(t, a - (2 * g_dice / den)[:, None], a) * s * s1
    return d_focal + d_dice


def _chunks(m: int, pixels: int) -> list[slice]:
    step = max(1, CHUNK_PIXELS // max(pixels, 1))
    return [slice(i, min(i + step, m)) for i in range(0, m, step)]


class _FullResMaskLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        m, (H, W) = logits.shape[0], targets.shape[-2:]
        focal, num, den = (logits.new_zeros(m) for _ in range(3))
        for sl in _chunks(m, H * W):
            focal[sl], num[sl], den[sl] = _forward_terms(_upsample(logits[sl], (H, W)), targets[sl].flatten(1))
        ctx.save_for_backward(logits, targets, num, den)
        return focal, 1 - num / den

    @staticmethod
    @once_differentiable
    def backward(ctx, g_focal: Tensor, g_dice: Tensor) -> tuple[Tensor, None]:
        logits, targets, num, den = ctx.saved_tensors
        H, W = targets.shape[-2:]
        grad = torch.zeros_like(logits)
        for sl in _chunks(logits.shape[0], H * W):
            with torch.enable_grad():
                lo = logits[sl].detach().requires_grad_()
                up = _upsample(lo, (H, W))  # recomputed instead of stored
            g_up = _backward_terms(up.detach(), targets[sl].flatten(1), g_focal[sl], g_dice[sl], num[sl], den[sl])
            (grad[sl],) = torch.autograd.grad(up, lo, g_up)
        return grad, None


def full_res_mask_losses(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Focal (mean over pixels) and dice loss per matched pair at the target resolution.

    logits: float [M, h, w] matched mask logits (1/4 resolution); targets: bool [M, H, W] padded target masks.
    Returns (focal [M], dice [M]), differentiable w.r.t. logits.
    """
    if targets.dtype != torch.bool:
        raise TypeError(f"full_res_mask_losses: targets must be bool masks, got {targets.dtype}")
    return _FullResMaskLoss.apply(logits, targets)


def point_sampled_mask_losses(
    logits: Tensor,
    targets: Tensor,
    *,
    num_points: int = 12544,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
) -> tuple[Tensor, Tensor]:
    """Mask2Former's mask losses on `num_points` importance-sampled points per pair.

    logits: float [M, h, w] (not upsampled); targets: bool [M, H, W] padded target masks (read bilinearly at the same
    points, giving soft labels at mask edges). Returns (sigmoid BCE mean over points [M], dice [M]).
    """
    with torch.no_grad():
        coords = uncertain_point_coords(
            logits[:, None].detach(),
            num_points=num_points,
            oversample_ratio=oversample_ratio,
            importance_sample_ratio=importance_sample_ratio,
        )  # [M, P, 2]
        labels = point_sample_binary(targets, coords).to(logits.dtype)  # [M, P]
    x = point_sample(logits[:, None], coords)[:, 0]  # [M, P]
    bce = F.binary_cross_entropy_with_logits(x, labels, reduction="none").mean(1)
    p = x.sigmoid()
    dice = 1 - (2 * (p * labels).sum(1) + 1) / (p.sum(1) + labels.sum(1) + 1)
    return bce, dice
