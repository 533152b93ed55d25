"""Per-mask losses of matched (prediction, target) pairs: the paper's full-resolution focal + dice loss (reference
section 4.3), and Mask2Former's point-sampled sigmoid-BCE + dice loss (the `point_sampling` option).

Full resolution: the 1/4-resolution logits are upsampled bilinearly (align_corners False) to the padded target size;
per mask focal = mean over pixels of alpha_t (1 - p_t)^2 BCE(x, t) (padding/ignore pixels are negatives) and
dice = 1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1). Both losses and their gradients come from one chunked pass
(with z = x (1 - 2t): BCE = softplus(z), 1 - p_t = sigmoid(z)); the gradients go back to 1/4 resolution through the
exact adjoint of the upsampling, so nothing at full resolution is kept for backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from maskformer.point_sampling import point_sample, point_sample_binary, uncertain_point_coords

FOCAL_ALPHA = 0.25  # focal loss alpha (loss and matcher); gamma is 2
CHUNK_PIXELS = 1 << 18  # full-resolution pixels per chunk: 1 MB fp32 temporaries stay in L2 (1.5-1.8x vs 8 MB)
CHUNK_POINTS = 1 << 17  # oversampled points per chunk of the point-sampled loss (temporaries of a few MB)


def bilinear_taps(scale: int) -> tuple[list[float], int]:
    """1-D taps of bilinear x`scale` upsampling (align_corners False) as a transposed convolution: output pixel
    scale * k + o reads low-res pixel k with weight 1 - |(o + 0.5) / scale - 0.5| > 0. -> (weights by o, -min o)."""
    offsets = [o for o in range(-scale, 2 * scale) if abs((o + 0.5) / scale - 0.5) < 1]
    return [1 - abs((o + 0.5) / scale - 0.5) for o in offsets], -offsets[0]


def upsample_adjoint(grad: Tensor, size: tuple[int, int]) -> Tensor:
    """Adjoint of bilinear upsampling [m, h, w] -> [m, H, W] (align_corners False, integer H/h, W/w): grad [m, H, W]
    -> [m, h, w]. Upsampling = replicate-pad by one pixel + transposed conv with the bilinear taps, so its adjoint is
    the stride-s conv onto the padded grid, the ring folded back onto the border; much faster than autograd on CPU."""
    (h, w), (H, W) = size, grad.shape[-2:]
    (ky, py), (kx, px) = bilinear_taps(H // h), bilinear_taps(W // w)
    kernel = torch.outer(grad.new_tensor(ky), grad.new_tensor(kx))[None, None]  # [1, 1, Ly, Lx]
    sy, sx = H // h, W // w
    r = F.conv2d(grad[:, None], kernel, stride=(sy, sx), padding=(sy + py, sx + px))[:, 0]  # [m, h+2, w+2]
    r[:, 1] += r[:, 0]
    r[:, -2] += r[:, -1]
    r[:, :, 1] += r[:, :, 0]
    r[:, :, -2] += r[:, :, -1]
    return r[:, 1:-1, 1:-1]


def _chunk_terms(x: Tensor, tf: Tensor, grads: Tensor | None) -> tuple[Tensor, Tensor]:
    """Logits x [m, N] and float 0/1 targets tf [m, N] -> focal [m], dice [m]. If `grads` [2, m, N] is given, fill
    it with the elementwise gradients d focal_j / dx and d dice_j / dx."""
    n = x.shape[1]
    z = torch.addcmul(x, x, tf, value=-2)  # x where t = 0, -x where t = 1
    s = z.sigmoid()  # 1 - p_t
    sp = F.softplus(z)  # BCE(x, t)
    s2 = s * s
    f = sp * s2
    focal = ((1 - FOCAL_ALPHA) * f.sum(1) + (2 * FOCAL_ALPHA - 1) * torch.linalg.vecdot(f, tf)) / n  # alpha_t
    sum_t, sum_ts = tf.sum(1), torch.linalg.vecdot(s, tf)
    num = 2 * (sum_t - sum_ts) + 1  # 2 sum(p t) + 1, sum(p t) = sum over t of (1 - s)
    den = s.sum(1) + 2 * (sum_t - sum_ts) + 1  # sum(p) + sum(t) + 1, sum(p) = sum(s) + sum_t - 2 sum_ts
    if grads is not None:
        u = 1 - s
        # d focal/dx = alpha_t (1 - 2t) s^2 (s + 2 softplus(z) (1 - s)) / N, alpha_t (1 - 2t) = (1 - alpha) - t
        torch.addcmul(s, sp, u, value=2, out=grads[0]).mul_(s2).mul_(torch.rsub(tf, (1 - FOCAL_ALPHA) / n, alpha=1 / n))
        # d dice/dx = (num / den^2 - 2 t / den) p (1 - p), p (1 - p) = s (1 - s)
        coef = torch.addcmul((num / den.square())[:, None], tf, (-2 / den)[:, None])
        torch.mul(s, u, out=grads[1]).mul_(coef)
    return focal, 1 - num / den


def _chunks(m: int, per_mask: int, budget: int) -> list[slice]:
    """Slices of at most max(1, budget // per_mask) of m masks."""
    step = max(1, budget // max(per_mask, 1))
    return [slice(i, min(i + step, m)) for i in range(0, m, step)]


def _full_res_terms(logits: Tensor, targets: Tensor, with_grad: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """(focal [M], dice [M], their gradients w.r.t. logits [2, M, h, w] or None), chunk by chunk, no autograd."""
    (m, h, w), (H, W) = logits.shape, targets.shape[-2:]
    focal, dice = logits.new_zeros(m), logits.new_zeros(m)
    grads = logits.new_zeros(2, m, h, w) if with_grad else None  # d focal_j, d dice_j w.r.t. logits_j
    for sl in _chunks(m, H * W, CHUNK_PIXELS):
        tf = targets[sl].reshape(-1, H * W).view(torch.uint8).to(logits.dtype)  # [c, N] 0/1
        full = logits.new_empty(2, tf.shape[0], H * W) if with_grad else None  # full-resolution gradients
        x = F.interpolate(logits[sl, None], size=(H, W), mode="bilinear", align_corners=False).flatten(1)  # [c, N]
        focal[sl], dice[sl] = _chunk_terms(x, tf, full)
        if with_grad:
            grads[:, sl] = upsample_adjoint(full.view(-1, H, W), (h, w)).view(2, -1, h, w)
    return focal, dice, grads


def _check_targets(where: str, logits: Tensor, targets: Tensor) -> None:
    m = logits.shape[0]
    if targets.dtype != torch.bool or targets.shape[0] != m:
        raise ValueError(f"{where}: want bool targets [{m}, H, W], got {targets.dtype} {tuple(targets.shape)}")


class _MaskPairLoss(torch.autograd.Function):
    """Two per-mask losses [M] of logits [M, h, w], values and gradients from `terms(logits, *args, with_grad) ->
    (first [M], second [M], grads [2, M, h, w] | None)`; only these 1/4-resolution gradients are kept for backward."""

    @staticmethod
    def forward(ctx, logits: Tensor, terms, with_grad: bool, *args) -> tuple[Tensor, Tensor]:
        first, second, grads = terms(logits.detach(), *args, with_grad=with_grad)
        ctx.num_args = len(args)
        ctx.save_for_backward(grads)
        return first, second

    @staticmethod
    @once_differentiable
    def backward(ctx, g_first: Tensor, g_second: Tensor):
        (grads,) = ctx.saved_tensors
        if grads is None:
            raise RuntimeError("mask loss: backward through a call made without gradients enabled")
        grad = g_first[:, None, None] * grads[0] + g_second[:, None, None] * grads[1]
        return (grad, None, None) + (None,) * ctx.num_args


def full_res_mask_losses(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """(focal mean over pixels [M], dice [M]) of logits [M, h, w] at the resolution of bool targets [M, H, W]
    (integer H/h and W/w: 4 in the model), differentiable w.r.t. logits."""
    _check_targets("full_res_mask_losses", logits, targets)
    (h, w), (H, W) = logits.shape[-2:], targets.shape[-2:]
    if H % h or W % w:
        raise ValueError(f"full_res_mask_losses: target size {(H, W)} is not an integer multiple of {(h, w)}")
    with_grad = logits.requires_grad and torch.is_grad_enabled()
    return _MaskPairLoss.apply(logits, _full_res_terms, with_grad, targets.contiguous())


def _point_terms(logits: Tensor, targets: Tensor, sampling: dict, with_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(BCE [M], dice [M], gradients [2, M, h, w] or None) at importance-sampled points, chunked over masks."""
    m, h, w = logits.shape
    bce, dice = logits.new_zeros(m), logits.new_zeros(m)
    grads = logits.new_zeros(2, m, h, w) if with_grad else None
    per_mask = int(sampling["num_points"] * sampling["oversample_ratio"])
    for sl in _chunks(m, per_mask, CHUNK_POINTS):
        coords = uncertain_point_coords(logits[sl, None], **sampling).to(logits.dtype)  # [c, P, 2]
        labels = point_sample_binary(targets[sl], coords)  # [c, P] soft labels (bilinear at mask edges)
        lo = logits[sl, None].expand(-1, 2, -1, -1).detach().requires_grad_(with_grad)  # 2 channels: 2 cotangents
        with torch.enable_grad():
            y = point_sample(lo, coords)  # [c, 2, P]
        x = y[:, 0].detach()
        p = x.sigmoid()
        bce[sl] = (F.softplus(x) - x * labels).mean(1)
        num, den = 2 * (p * labels).sum(1) + 1, p.sum(1) + labels.sum(1) + 1
        dice[sl] = 1 - num / den
        if with_grad:
            g_bce = (p - labels) / x.shape[1]  # d mean BCE / dx
            g_dice = (num / den.square())[:, None].sub(labels * (2 / den)[:, None]).mul_(p * (1 - p))
            (g,) = torch.autograd.grad(y, lo, torch.stack([g_bce, g_dice], 1))  # [c, 2, h, w]
            grads[:, sl] = g.transpose(0, 1)
    return bce, dice, grads


def point_sampled_mask_losses(
    logits: Tensor,
    targets: Tensor,
    *,
    num_points: int = 12544,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
) -> tuple[Tensor, Tensor]:
    """Mask2Former's (sigmoid BCE mean over points [M], dice [M]) on `num_points` importance-sampled points per pair
    of logits [M, h, w] and bool targets [M, H, W] (read bilinearly at the same points: soft labels at mask edges)."""
    _check_targets("point_sampled_mask_losses", logits, targets)
    sampling = dict(
        num_points=num_points, oversample_ratio=oversample_ratio, importance_sample_ratio=importance_sample_ratio
    )
    with_grad = logits.requires_grad and torch.is_grad_enabled()
    return _MaskPairLoss.apply(logits, _point_terms, with_grad, targets, sampling)
