"""Opt-in fast post-processing (`maskformer.inference` with fast=True): its rules, tile by tile and only where needed.

Every output pixel of the official chain (upsample, crop, resize; bilinear) is a convex combination of a small
window of low-res values, so the window's min/max bound a whole output tile. With trained masks most tiles are
decided by the bounds alone; only the (tile, channel) pairs left are resampled, as small batched matrix products.
An `AxisPlan` per image axis holds the tiles' low-res windows and F.interpolate's own weights; a linear chain is one
matrix, a chain with a nonlinearity between upsampling and resizing (official semantic order) keeps two stages.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Size = tuple[int, int]
ITEM_BUDGET = 1 << 22  # max evaluated pixels held at once (items x tile x tile)
DELTA = 1e-5  # semantic: a query moving a class score by at most this much inside a tile is taken as constant there
MARGIN = 1e-5  # semantic: relative slack on comparisons of bounds (float32 sums of up to Q terms)


def linear_weights(n_in: int, n_out: int, scale: float | None = None) -> torch.Tensor:
    """Weights [n_out, n_in] of 1-D linear resampling (align_corners=False), exactly as F.interpolate computes them;
    scale: its scale_factor (the first n_out outputs are kept), None: size mode."""
    eye = torch.eye(n_in, dtype=torch.float32)[None]  # [1, n_in channels, n_in length]
    kw = {"size": n_out} if scale is None else {"scale_factor": scale, "recompute_scale_factor": False}
    return F.interpolate(eye, mode="linear", align_corners=False, **kw)[0, :, :n_out].T.contiguous()


def fast_geometry(n_low: int, n_pad: int, n_crop: int, n_out: int) -> tuple[int, float]:
    """order="fast" on one axis: (low-res cells the image touches + 1 right neighbour, output pixels per cell)."""
    return min(n_low, -(-n_crop * n_low // n_pad) + 1), n_out * n_pad / (n_crop * n_low)


def axis_weights(kind: str, n_low: int, n_pad: int, n_crop: int, n_out: int):
    """(stage A [n_mid, n_low], stage B [n_out, n_mid] or None) for one axis. kind "linear": the official chain
    composed in float64; "two_stage": A = upsample + crop, B = resize; "fast": covered low-res cells to the output."""
    if kind == "fast" and n_crop != n_pad:
        keep, scale = fast_geometry(n_low, n_pad, n_crop, n_out)
        return F.pad(linear_weights(keep, n_out, scale), (0, n_low - keep)), None
    if kind == "fast":
        return linear_weights(n_low, n_out), None
    stage_a = linear_weights(n_low, n_pad)[:n_crop]
    stage_b = None if n_out == n_crop else linear_weights(n_crop, n_out)
    if kind == "linear" and stage_b is not None:
        return (stage_b.double() @ stage_a.double()).float(), None
    return stage_a, stage_b


@dataclass(frozen=True)
class AxisPlan:
    """One axis cut into output tiles of `tile` pixels. low_idx [n_tiles, wl]: low-res indices each tile reads (a
    window, its last index repeated to a common width); low_w [n_tiles, R, wl]: stage-A weights onto the tile's R rows
    (R = tile, or the stage-B window width); mid_w [n_tiles, tile, wm]: stage-B weights or None; valid [n_tiles, tile]:
    pixels inside the output."""

    n_out: int
    tile: int
    low_idx: torch.Tensor
    low_w: torch.Tensor
    mid_w: torch.Tensor | None
    valid: torch.Tensor

    @property
    def n_tiles(self) -> int:
        return self.low_idx.shape[0]


def _windows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """rows [n_t, R, n_cols] -> (idx [n_t, w], sub [n_t, R, w]): per tile the window of columns with nonzero weight."""
    used = (rows != 0).any(1)  # [n_t, n_cols]
    first = used.float().argmax(1)
    last = rows.shape[-1] - 1 - used.flip(1).float().argmax(1)
    idx = first[:, None] + torch.arange(int((last - first).max()) + 1)  # [n_t, w]
    inside = idx <= last[:, None]
    idx = torch.minimum(idx, last[:, None])
    return idx, rows.gather(2, idx[:, None, :].expand(-1, rows.shape[1], -1)) * inside[:, None, :]


def _tiled_rows(m: torch.Tensor, tile: int) -> torch.Tensor:
    """[n, k] -> [n_t, tile, k], zero rows appended to fill the last tile."""
    n_t = -(-m.shape[0] // tile)
    return F.pad(m, (0, 0, 0, n_t * tile - m.shape[0])).reshape(n_t, tile, m.shape[1])


@functools.lru_cache(maxsize=64)
def _plan(kind: str, n_low: int, n_pad: int, n_crop: int, n_out: int, tile: int, device, dtype) -> AxisPlan:
    if not 0 < n_crop <= n_pad:
        raise ValueError(f"image size {n_crop} must lie in 1..{n_pad} (the padded size)")
    stage_a, stage_b = axis_weights(kind, n_low, n_pad, n_crop, n_out)
    valid = _tiled_rows(torch.ones(n_out, 1), tile)[..., 0].bool()  # [n_t, tile]
    if stage_b is None:
        (low_idx, low_w), mid_w = _windows(_tiled_rows(stage_a, tile)), None
    else:
        mid_idx, mid_w = _windows(_tiled_rows(stage_b, tile))  # [n_t, wm], [n_t, tile, wm]
        low_idx, low_w = _windows(stage_a[mid_idx])  # stage-A rows of each tile's intermediate window
    mid_w = None if mid_w is None else mid_w.to(device, dtype)
    return AxisPlan(n_out, tile, low_idx.to(device), low_w.to(device, dtype), mid_w, valid.to(device))


def plans(kind: str, low: Size, pad: Size, crop: Size, out: Size, ref: torch.Tensor, tile: int = 32):
    """(rows plan, cols plan) for `kind` (see axis_weights), on ref's device and dtype; cached."""
    return tuple(_plan(kind, low[a], pad[a], crop[a], out[a], tile, ref.device, ref.dtype) for a in (0, 1))


def window_bounds(x: torch.Tensor, py: AxisPlan, px: AxisPlan, ops=(torch.minimum, torch.maximum)):
    """Per op (min, max), each channel reduced over each tile's window: x [C, h, w] -> ([C, n_ty, n_tx], ...)."""
    return tuple(_range_reduce(_range_reduce(x, 1, py, op), 2, px, op) for op in ops)


def _range_reduce(x: torch.Tensor, dim: int, plan: AxisPlan, op) -> torch.Tensor:
    """op of x over each tile's index range [first, last] along `dim` (1 or 2) -> size n_tiles there. Sparse-table
    style: with 2^k <= every width < 2^(k+1), k passes of op over neighbours give entries covering 2^k; two overlapping
    entries cover a range (narrower ranges widened to 2^k: a superset, so still a bound). The last dim goes through a
    transposed copy (row gathers are faster)."""
    if dim == 2:
        return _range_reduce(x.transpose(1, 2).contiguous(), 1, plan, op).transpose(1, 2)
    first, last = plan.low_idx[:, 0], plan.low_idx[:, -1]
    k = int((last - first + 1).max()).bit_length() - 1
    span = 1 << k
    last = torch.maximum(last, (first + span - 1).clamp(max=x.shape[1] - 1))
    first = torch.minimum(first, last - span + 1)
    for j in range(k):
        n = x.shape[1] - (1 << j)
        x = op(x.narrow(1, 0, n), x.narrow(1, 1 << j, n))  # entry r: op over [r, r + 2^(j+1) - 1]
    return op(x.index_select(1, first), x.index_select(1, last - span + 1))


def stage_a(x: torch.Tensor, py: AxisPlan, px: AxisPlan, ch: torch.Tensor, ty: torch.Tensor, tx: torch.Tensor):
    """Channel ch[i] of x [C, h, w] resampled through stage A on tile (ty[i], tx[i]) -> [N, Ry, Rx]."""
    patch = x[ch[:, None, None], py.low_idx[ty][:, :, None], px.low_idx[tx][:, None, :]]  # [N, wly, wlx]
    return py.low_w[ty] @ patch @ px.low_w[tx].transpose(1, 2)


def _valid(py: AxisPlan, px: AxisPlan, ty: torch.Tensor, tx: torch.Tensor) -> torch.Tensor:
    """[N, tile, tile] True inside the output."""
    return py.valid[ty][:, :, None] & px.valid[tx][:, None, :]


def _chunks(n: int, per_item: int) -> Iterator[slice]:
    """Slices of range(n) holding at most ITEM_BUDGET // per_item items."""
    step = max(1, ITEM_BUDGET // max(1, per_item))
    return (slice(s, min(n, s + step)) for s in range(0, n, step))


def _untile(tiles: torch.Tensor, py: AxisPlan, px: AxisPlan, dtype: torch.dtype | None = None) -> torch.Tensor:
    """[n_ty * n_tx, tile, tile] -> [H, W] of `dtype` (default tiles'), the part inside the output; one copy."""
    t = py.tile
    img = torch.empty(py.n_tiles * t, px.n_tiles * t, dtype=dtype or tiles.dtype, device=tiles.device)
    img.view(py.n_tiles, t, px.n_tiles, t).copy_(tiles.view(py.n_tiles, px.n_tiles, t, t).transpose(1, 2))
    return img[: py.n_out, : px.n_out]


def _label_dtype(n: int) -> torch.dtype:
    """The smallest integer type for labels 0..n-1 held per tile (the full-size result is int64)."""
    return torch.int16 if n <= torch.iinfo(torch.int16).max else torch.int32


def _slots(sel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """sel [g, n] bool -> (row, col, slot, n_slots): the True entries, each with its rank within its row."""
    row, col = sel.nonzero(as_tuple=True)
    start = torch.zeros(sel.shape[0] + 1, dtype=torch.long, device=sel.device)
    start[1:] = sel.sum(1).cumsum(0)
    return row, col, torch.arange(len(row), device=sel.device) - start[row], int(sel.sum(1).max()) if len(row) else 0


def candidate_argmax(x, cand, py: AxisPlan, px: AxisPlan, value_fn: Callable | None = None, labels_of=None):
    """Per output pixel the channel with the largest resampled value (one-stage plans): int64 [H, W]. x [C, h, w]; cand
    [C, n_ty, n_tx] bool, every channel that can win in the tile (at least one); value_fn(z [N, t, t], ch [N]) maps
    resampled values first; labels_of [C] int64: write labels_of[channel] instead. Ties go to the lowest channel, as
    torch.argmax. Tiles are handled in buckets of similar candidate counts (2, 3-4, 5-8, ...) so little is padded."""
    t = py.tile
    names = torch.arange(x.shape[0], device=x.device) if labels_of is None else labels_of
    names = names.to(_label_dtype(int(names.max()) + 1))
    count = cand.sum(0).flatten()  # [n_tiles]
    out = names[cand.float().argmax(0).flatten()][:, None, None].expand(-1, t, t).clone()  # single-candidate tiles
    sel = cand.flatten(1).T  # [n_tiles, C]
    lo = 2
    while lo <= int(count.max()):
        hi = 2 if lo == 2 else 2 * (lo - 1)
        tiles = ((count >= lo) & (count <= hi)).nonzero()[:, 0]
        for g in _chunks(len(tiles), hi * t * t):
            row, ch, slot, _ = _slots(sel[tiles[g]])
            ty, tx = tiles[g][row] // px.n_tiles, tiles[g][row] % px.n_tiles
            z = stage_a(x, py, px, ch, ty, tx)
            z = z if value_fn is None else value_fn(z, ch)
            buf = z.new_full((len(tiles[g]), t * t, hi), float("-inf"))  # slots last: argmax over a contiguous dim
            buf[row, :, slot] = z.flatten(1)
            chan = names.new_zeros(len(tiles[g]), hi)
            chan[row, slot] = names[ch]
            out[tiles[g]] = chan.gather(1, buf.argmax(2)).view(-1, t, t)
        lo = hi + 1
    return _untile(out, py, px, torch.int64)


def semantic_labels(probs, masks, low: Size, pad: Size, img: Size, out: Size, *, order: str, before_inference: bool):
    """argmax over classes of inference.semantic_inference for one image -> int64 [H, W] (ties: lowest class; equal
    up to float rounding). probs [Q, K] with mask logits masks [Q, h, w], or None with class logits masks [K, h, w]."""
    if probs is None:
        return _bounded_argmax(masks, "fast" if order == "fast" else "linear", low, pad, img, out)
    if order == "fast":
        classes, sem = marginal_pruned(probs, masks.sigmoid())  # [C'], [C', h, w]
        return _bounded_argmax(sem, "fast", low, pad, img, out, classes)
    if not before_inference and 4 * img[0] * img[1] <= out[0] * out[1]:
        # upscaling: the marginal at the crop (K x crop, far below K x output), then only its resize is tiled
        up = F.interpolate(masks[None], size=pad, mode="bilinear", align_corners=False)[0, :, : img[0], : img[1]]
        classes, sem = marginal_pruned(probs, up.sigmoid_())
        return _bounded_argmax(sem, "linear", img, img, img, out, classes)
    return _official_labels(probs, masks, low, pad, img, out, before_inference)


def marginal_pruned(probs: torch.Tensor, sig: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sum_q probs[q, k] sig[q] for the classes that can win somewhere: (classes [C'], maps [C', h, w]). Resampling is a
    convex combination, so class k never exceeds its mass sum_q probs[q, k], while the best class at a pixel is at least
    the mean over any class set S, hence at least min_pixels mean_S. Classes with less mass than that bound are dropped
    before the (K x Q x h x w) marginalization."""
    mass = probs.sum(0)  # [K]
    dominant = (mass >= 0.5) | (mass == mass.max())
    sel = dominant.nonzero()[:, 0]  # S: classes holding at least half a query's probability
    sem_s = torch.einsum("qk,qhw->khw", probs[:, sel], sig)  # [|S|, h, w]
    bound = float(sem_s.mean(0).amin())
    extra = ((mass >= bound - 1e-5 * (1 + bound)) & ~dominant).nonzero()[:, 0]  # slack for float32 sums
    if len(extra) == 0:
        return sel, sem_s
    classes, order = torch.cat([sel, extra]).sort()
    return classes, torch.cat([sem_s, torch.einsum("qk,qhw->khw", probs[:, extra], sig)])[order]


def _bounded_argmax(x: torch.Tensor, kind: str, low: Size, pad: Size, img: Size, out: Size, labels_of=None):
    """argmax over channels of x [C, h, w] resampled by a one-stage plan -> int64 [H, W] (labels_of[channel]). Lower
    bound of the winner per tile: the best window minimum, or the window minimum of the mean of the top-1..4 channels by
    window maximum (a mean of channels never exceeds their max; much tighter where the winner changes)."""
    py, px = plans(kind, low, pad, img, out, x)
    lo, hi = window_bounds(x, py, px)  # [C, n_ty, n_tx]
    m = min(4, x.shape[0])
    top = hi.topk(m, dim=0).indices.permute(1, 2, 0)  # [n_ty, n_tx, m]
    vals = x[top[..., None, None], py.low_idx[:, None, None, :, None], px.low_idx[None, :, None, None, :]]
    means = vals.cumsum(2) / torch.arange(1, m + 1, device=x.device, dtype=x.dtype)[:, None, None]
    best_lo = torch.maximum(lo.amax(0), means.amin((3, 4)).amax(2))  # [n_ty, n_tx]
    return candidate_argmax(x, hi >= best_lo - 1e-6 * (1 + best_lo.abs()), py, px, labels_of=labels_of)


def _official_labels(probs, masks, low: Size, pad: Size, img: Size, out: Size, before_inference: bool, tile=8):
    """argmax_k of the official scores O_k = B(sum_q p_qk sigmoid(A(m_q))) for probs [Q, K], masks [Q, h, w]. A
    upsamples and crops, B resizes (before_inference: A = the whole chain, B = identity). Window bounds of A(m_q) give
    class bounds per tile; classes that cannot win are skipped. Queries whose sigmoid barely moves in a tile
    ("inactive") contribute a known interval; only the active ones are resampled. A pixel is decided when the winner's
    lower value beats every rival's upper value; tiles with undecided pixels are redone with all queries."""
    py, px = plans("linear" if before_inference else "two_stage", low, pad, img, out, masks, tile)
    lo, hi = window_bounds(masks, py, px)  # [Q, n_ty, n_tx]
    sl, sh = lo.sigmoid().flatten(1).T, hi.sigmoid().flatten(1).T  # [n_tiles, Q]
    lower, upper = sl @ probs, sh @ probs  # [n_tiles, K]
    best = lower.amax(1, keepdim=True)
    cand = upper >= best - MARGIN * (1 + best)
    labels = cand.float().argmax(1).to(_label_dtype(probs.shape[1]))  # tiles with one candidate
    labels = labels[:, None, None].expand(-1, tile, tile).clone()
    count = cand.sum(1)
    multi = (count >= 2).nonzero()[:, 0]
    multi = multi[count[multi].argsort(stable=True)]  # groups of similar candidate counts: little padding
    per_group = max(1, min(128, ITEM_BUDGET // (tile * tile * 16)))
    for g0 in range(0, len(multi), per_group):
        tiles = multi[g0 : g0 + per_group]
        row, col, slot, n_c = _slots(cand[tiles])
        kmat = col.new_zeros(len(tiles), n_c)  # [g, n_c] candidate classes per tile, packed left
        kmat[row, slot] = col
        cvalid = torch.zeros(len(tiles), n_c, dtype=torch.bool, device=col.device)
        cvalid[row, slot] = True
        p_cand = (probs[:, kmat] * cvalid).amax(2).T  # [g, Q] a query's largest probability among candidates
        active = p_cand * (sh[tiles] - sl[tiles]) > DELTA
        a, b = (sl[tiles] * ~active) @ probs, (sh[tiles] * ~active) @ probs  # [g, K] the inactive parts
        redo = _decide_tiles(probs, masks, py, px, tiles, kmat, cvalid, active, a, b, labels).nonzero()[:, 0]
        if len(redo):  # close calls: every query, no bounds
            zero = a.new_zeros(len(redo), a.shape[1])
            all_q = torch.ones_like(active[redo])
            _decide_tiles(probs, masks, py, px, tiles[redo], kmat[redo], cvalid[redo], all_q, zero, zero, labels)
    return _untile(labels, py, px, torch.int64)


def _decide_tiles(probs, masks, py, px, tiles, kmat, cvalid, active, a, b, labels) -> torch.Tensor:
    """Write the best candidate of every pixel of `tiles` into labels [n_tiles, t, t]; bool [g]: tile undecided."""
    g, t = len(tiles), py.tile
    ty, tx = tiles // px.n_tiles, tiles % px.n_tiles
    scores = _active_scores(probs, masks, py, px, ty, tx, kmat, active).permute(0, 2, 3, 1)  # [g, t, t, n_c]
    off = ~cvalid[:, None, None, :]
    low_v = (scores + a.gather(1, kmat)[:, None, None, :]).masked_fill(off, float("-inf"))
    up_v = (scores + b.gather(1, kmat)[:, None, None, :]).masked_fill(off, float("-inf"))
    win = low_v.argmax(-1, keepdim=True)  # [g, t, t, 1]
    best = low_v.gather(-1, win)
    rival = up_v.scatter(-1, win, float("-inf")).amax(-1, keepdim=True)
    labels[tiles] = kmat.gather(1, win.flatten(1)).view(g, t, t).to(labels.dtype)
    undecided = (best <= rival + MARGIN * (1 + best.abs()))[..., 0] & _valid(py, px, ty, tx)
    return undecided.flatten(1).any(1)


def _active_scores(probs, masks, py, px, ty, tx, kmat, active) -> torch.Tensor:
    """sum over active queries of p_qk * sigmoid(A(m_q)), through B: [g, n_c, t, t] for the classes in kmat."""
    g, n_c = kmat.shape
    q_row, q_id, q_slot, n_q = _slots(active)
    if n_q == 0:
        return probs.new_zeros(g, n_c, py.tile, py.tile)
    z = stage_a(masks, py, px, q_id, ty[q_row], tx[q_row]).sigmoid()  # [Nq, Ry, Rx]
    ry, rx = z.shape[-2:]
    zbuf = z.new_zeros(g, n_q, ry * rx)
    zbuf[q_row, q_slot] = z.flatten(1)
    weights = probs.new_zeros(g, n_c, n_q)
    weights[q_row, :, q_slot] = probs[q_id[:, None], kmat[q_row]]  # [Nq, n_c] into [g, n_c, n_q]
    mid = (weights @ zbuf).view(g, n_c, ry, rx)
    return mid if py.mid_w is None else torch.einsum("gyr,gcrs,gxs->gcyx", py.mid_w[ty], mid, px.mid_w[tx])


def panoptic_assign(m, s, low: Size, pad: Size, img: Size, out: Size, tile: int = 16, find_void: bool = False):
    """For kept queries' mask logits m [Qk, h, w] and scores s [Qk], with V = the resampled logits:
    (argmax_q s_q * sigmoid(V_q) int64 [H, W] (ties: lowest q), #pixels with sigmoid(V_q) >= 0.5 int64 [Qk],
    find_void: bool [H, W] True where the assigned query's sigmoid(V) < 0.5 (Mask2Former's unpainted pixels), else
    None). Only (query, tile) pairs whose bounds straddle 0.5 are resampled for the areas and the void pixels."""
    py, px = plans("linear", low, pad, img, out, m, tile)
    lo, hi = window_bounds(m, py, px)  # [Qk, n_ty, n_tx] logit bounds
    s3 = s[:, None, None]
    cand = s3 * hi.sigmoid() >= (s3 * lo.sigmoid()).amax(0) - 1e-6
    assign = candidate_argmax(m, cand, py, px, value_fn=lambda z, ch: s[ch][:, None, None] * z.sigmoid())
    full = lo > 1e-6  # the whole tile is >= 0.5
    area = (full * (py.valid.sum(1)[:, None] * px.valid.sum(1)[None, :])).sum((1, 2))
    void = None
    if find_void:  # candidates wholly below 0.5 in a tile: void wherever they are assigned there
        padded = F.pad(assign, (0, px.n_tiles * tile - out[1], 0, py.n_tiles * tile - out[0]), value=-1)
        tiles = padded.view(py.n_tiles, tile, px.n_tiles, tile).transpose(1, 2).reshape(-1, tile, tile)  # -1 outside
        void = torch.zeros(tiles.shape, dtype=torch.bool, device=m.device)
        ch, ty, tx = (cand & (hi < -1e-6)).nonzero(as_tuple=True)
        for sl in _chunks(len(ch), tile * tile):
            _mark_void(void, tiles, ch[sl], ty[sl], tx[sl], px, below=None)
    ch, ty, tx = ((hi >= -1e-6) & ~full).nonzero(as_tuple=True)  # tiles crossing 0.5
    for sl in _chunks(len(ch), tile * tile):
        above = stage_a(m, py, px, ch[sl], ty[sl], tx[sl]).sigmoid() >= 0.5
        area.index_add_(0, ch[sl], (above & _valid(py, px, ty[sl], tx[sl])).sum((1, 2)))
        if find_void:
            _mark_void(void, tiles, ch[sl], ty[sl], tx[sl], px, below=~above)
    return assign, area, None if void is None else _untile(void, py, px)


def _mark_void(void, tiles, ch, ty, tx, px: AxisPlan, below: torch.Tensor | None) -> None:
    """Set void [n_tiles, t, t] where tile (ty[i], tx[i]) is assigned to ch[i] and below[i] (None: everywhere)."""
    flat = ty * px.n_tiles + tx
    hit = tiles[flat] == ch[:, None, None]
    n, y, x = (hit if below is None else hit & below).nonzero(as_tuple=True)
    void[flat[n], y, x] = True


def instance_masks(m, low: Size, pad: Size, img: Size, out: Size, tile: int = 32):
    """For mask logits m [C, h, w] with V = the resampled logits: (mean sigmoid(V) over V > 0 per channel [C],
    paint(ch [N]) -> bool [N, H, W] masks V_ch > 0). Only tiles where V can be positive are resampled."""
    py, px = plans("linear", low, pad, img, out, m, tile)
    (hi,) = window_bounds(m, py, px, ops=(torch.maximum,))
    ch, ty, tx = (hi > 0).nonzero(as_tuple=True)  # elsewhere every resampled logit is <= 0
    count, total, pos = m.new_zeros(m.shape[0]), m.new_zeros(m.shape[0]), []
    for sl in _chunks(len(ch), tile * tile):
        z = stage_a(m, py, px, ch[sl], ty[sl], tx[sl]).flatten(1)  # [n, tile * tile]
        pos.append(z > 0)  # rows outside the output have all-zero weights, so z = 0 there
        n_pos = pos[-1].view(torch.uint8).sum(1, dtype=torch.int32).to(m.dtype)  # summing bytes beats bools on CPU
        # sum over z > 0 of sigmoid(z) = sum(sigmoid(relu(z)) - 1/2) + count/2, and sigmoid(r) - 1/2 = tanh(r/2)/2
        count.index_add_(0, ch[sl], n_pos)
        total.index_add_(0, ch[sl], 0.5 * (z.relu_().mul_(0.5).tanh_().sum(1) + n_pos))
    pos = torch.cat(pos) if pos else torch.zeros(0, tile * tile, dtype=torch.bool, device=m.device)
    paint = functools.partial(_paint, n_ch=m.shape[0], items=(ch, ty, tx), pos=pos.view(-1, tile, tile), out=out)
    return total / (count + 1e-6), paint


def _paint(inst_ch: torch.Tensor, n_ch: int, items, pos: torch.Tensor, out: Size) -> torch.Tensor:
    """bool [N, H, W]: instance n gets channel inst_ch[n]'s positive tiles, written straight into place."""
    ch, ty, tx = items
    t = pos.shape[-1]
    n_ty, n_tx = -(-out[0] // t), -(-out[1] // t)
    masks = torch.zeros(len(inst_ch), n_ty * t, n_tx * t, dtype=torch.bool, device=pos.device)
    per_ch = torch.bincount(inst_ch, minlength=n_ch)  # [C] instances per channel; pair items with those instances
    first = torch.cumsum(per_ch, 0) - per_ch
    reps = per_ch[ch]
    item = torch.repeat_interleave(torch.arange(len(ch), device=ch.device), reps)
    rank = torch.arange(len(item), device=ch.device) - torch.repeat_interleave(torch.cumsum(reps, 0) - reps, reps)
    inst = inst_ch.argsort(stable=True)[first[ch[item]] + rank]
    tiled = masks.view(len(inst_ch), n_ty, t, n_tx, t).permute(0, 1, 3, 2, 4)  # [N, n_ty, n_tx, t, t] view
    tiled[inst, ty[item], tx[item]] = pos[item]
    return masks[:, : out[0], : out[1]]
