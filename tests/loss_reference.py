"""Float64 reference of MaskFormer's matching and loss, written directly from the formulas of the reference notes
(section 4) with numpy and plain loops, sharing no code with maskformer.matcher / maskformer.criterion.

Shapes follow the contract: logits [Q, K+1], mask logits [Q, h, w] per image, targets padded to (4h, 4w).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

ALPHA, GAMMA = 0.25, 2.0


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def softmax(v):
    e = np.exp(v - v.max())
    return e / e.sum()


def pad(mask, H, W):
    """Zero-pad a [h, w] mask bottom/right to [H, W]."""
    out = np.zeros((H, W))
    out[: mask.shape[0], : mask.shape[1]] = mask
    return out


def nearest_down(mask, h, w):
    """F.interpolate(mode="nearest"): output (i, j) reads input (floor(i * H/h), floor(j * W/w))."""
    H, W = mask.shape
    out = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            out[i, j] = mask[min(int(math.floor(i * H / h)), H - 1), min(int(math.floor(j * W / w)), W - 1)]
    return out


def bilinear_up(x, H, W):
    """Bilinear resize of x [h, w] to [H, W], align_corners=False (source = (i + 0.5) * h/H - 0.5, clamped at 0)."""
    h, w = x.shape
    out = np.zeros((H, W))
    for i in range(H):
        sy = max((i + 0.5) * h / H - 0.5, 0.0)
        y0 = int(math.floor(sy))
        y1, ly = min(y0 + 1, h - 1), sy - y0
        for j in range(W):
            sx = max((j + 0.5) * w / W - 0.5, 0.0)
            x0 = int(math.floor(sx))
            x1, lx = min(x0 + 1, w - 1), sx - x0
            top = (1 - lx) * x[y0, x0] + lx * x[y0, x1]
            bottom = (1 - lx) * x[y1, x0] + lx * x[y1, x1]
            out[i, j] = (1 - ly) * top + ly * bottom
    return out


def bilinear_at(x, cx, cy):
    """Value of x [h, w] at the normalized point (cx, cy) in [0, 1] (grid_sample, align_corners=False, zeros
    outside): pixel coordinate (cx * w - 0.5, cy * h - 0.5)."""
    h, w = x.shape
    px, py = cx * w - 0.5, cy * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    total = 0.0
    for yi, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
        for xi, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= yi < h and 0 <= xi < w:
                total += wy * wx * x[yi, xi]
    return total


def focal_mean(x, t):
    """Sigmoid focal loss, mean over pixels: alpha_t (1 - p_t)^gamma * BCE, p = sigmoid(x)."""
    p = sigmoid(x)
    ce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    p_t = p * t + (1 - p) * (1 - t)
    alpha_t = ALPHA * t + (1 - ALPHA) * (1 - t)
    return float(np.mean(alpha_t * (1 - p_t) ** GAMMA * ce))


def bce_mean(x, t):
    p = sigmoid(x)
    return float(np.mean(-(t * np.log(p) + (1 - t) * np.log(1 - p))))


def dice(x, t):
    p = sigmoid(x)
    return float(1 - (2 * np.sum(p * t) + 1) / (np.sum(p) + np.sum(t) + 1))


def cost_matrix(logits, mask_logits, labels, masks, weights=(1.0, 20.0, 1.0)):
    """Matching cost [Q, T] of one image: class -p, focal (mean over pixels), dice, at the prediction resolution.

    masks: the padded [T, H, W] targets, nearest-downsampled here."""
    Q, h, w = mask_logits.shape
    C = np.zeros((Q, len(labels)))
    for q in range(Q):
        prob = softmax(logits[q])
        for j, (lab, m) in enumerate(zip(labels, masks)):
            t = nearest_down(m, h, w)
            C[q, j] = (
                -weights[0] * prob[lab]
                + weights[1] * focal_mean(mask_logits[q], t)
                + weights[2] * dice(mask_logits[q], t)
            )
    return C


def brute_force_assignment(C):
    """Minimum-cost injective map targets -> predictions by enumeration: (cost, sorted [(q, t)])."""
    Q, T = C.shape
    best = (math.inf, [])
    for qs in itertools.permutations(range(Q), T):
        cost = sum(C[q, t] for t, q in enumerate(qs))
        if cost < best[0]:
            best = (cost, sorted((q, t) for t, q in enumerate(qs)))
    return best


def layer_losses(logits, mask_logits, labels, masks, num_classes, no_object_weight=0.1, num_masks=None):
    """Unweighted (loss_ce, loss_mask, loss_dice) of one layer, with brute-force matching.

    logits [B, Q, K+1], mask_logits [B, Q, h, w], labels list of [T_i], masks list of padded [T_i, 4h, 4w]."""
    B, Q, h, w = mask_logits.shape
    num_masks = max(sum(len(lb) for lb in labels), 1) if num_masks is None else num_masks
    ce_num = ce_den = focal = dsum = 0.0
    for b in range(B):
        _, pairs = brute_force_assignment(cost_matrix(logits[b], mask_logits[b], labels[b], masks[b]))
        target = {q: labels[b][t] for q, t in pairs}
        for q in range(Q):
            cls = target.get(q, num_classes)
            wgt = no_object_weight if cls == num_classes else 1.0
            ce_num += wgt * -math.log(softmax(logits[b, q])[cls])
            ce_den += wgt
        for q, t in pairs:
            up = bilinear_up(mask_logits[b, q], 4 * h, 4 * w)
            focal += focal_mean(up, masks[b][t])
            dsum += dice(up, masks[b][t])
    return ce_num / ce_den, focal / num_masks, dsum / num_masks


def per_pixel_ce(sem_logits, label_maps, ignore):
    """Mean CE over non-ignored pixels of bilinearly x4-upsampled logits [B, K, h, w] vs label maps [B, 4h, 4w]."""
    B, K, h, w = sem_logits.shape
    total, count = 0.0, 0
    for b in range(B):
        up = np.stack([bilinear_up(sem_logits[b, k], 4 * h, 4 * w) for k in range(K)])  # [K, H, W]
        for i in range(4 * h):
            for j in range(4 * w):
                lab = label_maps[b, i, j]
                if lab == ignore:
                    continue
                total += -math.log(softmax(up[:, i, j])[lab])
                count += 1
    return total / max(count, 1)
