"""Semantic label maps in the official order without building Q or K full-size maps.

The official scores are O_k = B( sum_q p_qk * sigmoid(A(m_q)) ) where A upsamples the mask logits to the padded size
and crops the padding, B resizes to the output (reference section 5.2; before_inference=True: A = the whole chain,
B = identity). Per output tile, bounds of A(m_q) over the tile's low-resolution window give
- class bounds L_k <= O_k <= U_k (sums of p_qk * sigmoid(bound)): classes with U_k below max L cannot win;
- "inactive" queries, whose sigmoid barely moves in the tile (p_max * (sigmoid(hi) - sigmoid(lo)) <= delta): their
  part of O_k lies in a known interval [a_k, b_k].
Only the active queries are resampled, for the candidate classes only. A pixel is decided when the winner's lower
value beats every other candidate's upper value; the few undecided pixels are computed exactly from all queries.
"""

from __future__ import annotations

import functools

import torch

from maskformer import resample as rs

Size = tuple[int, int]
DELTA = 1e-5  # an inactive query moves a class score by at most this much inside a tile
MARGIN = 1e-5  # relative slack on every comparison of bounds (they are float32 sums of up to Q terms)
GROUP = 128  # tiles decided together


def official_labels(
    probs: torch.Tensor,
    masks: torch.Tensor,
    low: Size,
    pad: Size,
    img: Size,
    out: Size,
    before_inference: bool,
    tile: int = 8,
) -> torch.Tensor:
    """argmax_k of the official semantic scores: probs [Q, K], masks [Q, h, w] logits -> int64 [H, W]."""
    kind = "linear" if before_inference else "two_stage"
    py, px = rs.plans(kind, low, pad, img, out, masks, tile)
    lo, hi = rs.window_bounds(masks, py, px)  # [Q, n_ty, n_tx]
    sl, sh = lo.sigmoid().flatten(1).T, hi.sigmoid().flatten(1).T  # [n_tiles, Q]
    lower, upper = sl @ probs, sh @ probs  # [n_tiles, K]
    best = lower.amax(1, keepdim=True)
    cand = upper >= best - MARGIN * (1 + best)
    t = py.tile
    labels = cand.float().argmax(1)[:, None, None].expand(-1, t, t).clone()  # tiles with one candidate
    count = cand.sum(1)
    multi = (count >= 2).nonzero()[:, 0]
    multi = multi[count[multi].argsort(stable=True)]  # groups of similar candidate counts: little padding
    undecided = []
    if len(multi):
        per_group = max(1, min(GROUP, rs.ITEM_BUDGET // (t * t * 16)))
        for g0 in range(0, len(multi), per_group):
            tiles = multi[g0 : g0 + per_group]
            kmat, cvalid = _slot_matrix(cand[tiles])  # [g, n_c] candidate classes per tile
            p_cand = (probs[:, kmat] * cvalid).amax(2).T  # [g, Q] a query's largest probability among candidates
            active = p_cand * (sh[tiles] - sl[tiles]) > DELTA
            a, b = (sl[tiles] * ~active) @ probs, (sh[tiles] * ~active) @ probs  # [g, K] the inactive parts
            undecided.append(_decide_tiles(probs, masks, py, px, tiles, kmat, cvalid, active, a, b, labels))
    labels = rs.untile(labels.view(py.n_tiles, px.n_tiles, t, t), py, px)
    pix = torch.cat(undecided) if undecided else labels.new_zeros(0)
    if len(pix):
        ys, xs = pix // labels.shape[1], pix % labels.shape[1]
        labels[ys, xs] = exact_pixels(probs, masks, ys, xs, low, pad, img, out, before_inference)
    return labels


def _slots(sel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """sel [g, n] bool -> (row, col, slot, n_slots): the True entries, each with its rank within its row."""
    row, col = sel.nonzero(as_tuple=True)
    start = torch.zeros(sel.shape[0] + 1, dtype=torch.long, device=sel.device)
    start[1:] = sel.sum(1).cumsum(0)
    slot = torch.arange(len(row), device=sel.device) - start[row]
    return row, col, slot, int(sel.sum(1).max()) if len(row) else 0


def _slot_matrix(sel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sel [g, n] bool -> (ids [g, m], valid [g, m]): each row's True columns packed to the left."""
    row, col, slot, m = _slots(sel)
    ids = col.new_zeros(sel.shape[0], m)
    ids[row, slot] = col
    valid = torch.zeros(sel.shape[0], m, dtype=torch.bool, device=sel.device)
    valid[row, slot] = True
    return ids, valid


def _decide_tiles(probs, masks, py, px, tiles, kmat, cvalid, active, a, b, labels) -> torch.Tensor:
    """Label the pixels of `tiles` (candidate classes kmat [g, n_c]) in place; returns undecided flat pixel ids."""
    g, t = len(tiles), py.tile
    ty, tx = tiles // px.n_tiles, tiles % px.n_tiles
    q_row, q_id, q_slot, n_q = _slots(active)  # active queries per tile
    scores = _active_scores(probs, masks, py, px, ty, tx, kmat, q_row, q_id, q_slot, n_q)  # [g, n_c, t, t]
    scores = scores.permute(0, 2, 3, 1)  # [g, t, t, n_c]: candidates last for fast reductions
    off = ~cvalid[:, None, None, :]
    low_v = (scores + a.gather(1, kmat)[:, None, None, :]).masked_fill(off, float("-inf"))
    up_v = (scores + b.gather(1, kmat)[:, None, None, :]).masked_fill(off, float("-inf"))
    win = low_v.argmax(-1, keepdim=True)  # [g, t, t, 1]
    best = low_v.gather(-1, win)
    rival = up_v.scatter(-1, win, float("-inf")).amax(-1, keepdim=True)
    decided = (best > rival + MARGIN * (1 + best.abs()))[..., 0]  # [g, t, t]
    labels[tiles] = kmat.gather(1, win.flatten(1)).view(g, t, t)
    lt, yy, xx = (~decided).nonzero(as_tuple=True)
    gy, gx = ty[lt] * t + yy, tx[lt] * t + xx
    inside = (gy < py.n_out) & (gx < px.n_out)
    return gy[inside] * px.n_out + gx[inside]


def _active_scores(probs, masks, py, px, ty, tx, kmat, q_row, q_id, q_slot, n_q) -> torch.Tensor:
    """sum over active queries of p_qk * sigmoid(A(m_q)), through B: [g, n_c, t, t] for the classes in kmat."""
    g, n_c = kmat.shape
    if n_q == 0:
        return probs.new_zeros(g, n_c, py.tile, py.tile)
    z = rs.stage_a(masks, py, px, q_id, ty[q_row], tx[q_row]).sigmoid()  # [Nq, Ry, Rx]
    ry, rx = z.shape[-2:]
    zbuf = z.new_zeros(g, n_q, ry * rx)
    zbuf[q_row, q_slot] = z.flatten(1)
    qmat = q_id.new_zeros(g, n_q)
    qmat[q_row, q_slot] = q_id
    qvalid = torch.zeros(g, n_q, dtype=probs.dtype, device=probs.device)
    qvalid[q_row, q_slot] = 1
    weights = probs[qmat[:, None, :], kmat[:, :, None]] * qvalid[:, None, :]  # [g, n_c, n_q]
    mid = (weights @ zbuf).view(g, n_c, ry, rx)
    if py.mid_w is None:
        return mid
    return torch.einsum("gyr,gcrs,gxs->gcyx", py.mid_w[ty], mid, px.mid_w[tx])


@functools.lru_cache(maxsize=32)
def _taps(kind: str, n_low: int, n_pad: int, n_crop: int, n_out: int):
    """Per output index: stage-B taps (idx, w) [n_out, 2] into the intermediate grid and stage-A taps [n_mid, P]."""
    stage_a, stage_b = rs.chain_weights(n_low, n_pad, n_crop, n_out)
    if kind == "linear":
        stage_a, stage_b = rs.compose(stage_a, stage_b), None
    if stage_b is None:
        n = stage_a.shape[0]
        b_idx, b_w = torch.arange(n)[:, None], torch.ones(n, 1)
    else:
        b_w, b_idx = stage_b.topk(2, dim=1)
    a_w, a_idx = stage_a.topk(min(4, stage_a.shape[1]), dim=1)
    return b_idx, b_w, a_idx, a_w


def exact_pixels(probs, masks, ys, xs, low: Size, pad: Size, img: Size, out: Size, before_inference: bool):
    """The official score argmax at output pixels (ys, xs) [n], from all queries: int64 [n]."""
    kind = "linear" if before_inference else "two_stage"
    ty_ = [t.to(masks.device) for t in _taps(kind, low[0], pad[0], img[0], out[0])]
    tx_ = [t.to(masks.device) for t in _taps(kind, low[1], pad[1], img[1], out[1])]
    result = []
    step = max(1, rs.ITEM_BUDGET // (masks.shape[0] * 64))
    for s in range(0, len(ys), step):
        result.append(_exact_chunk(probs, masks, ys[s : s + step], xs[s : s + step], ty_, tx_))
    return torch.cat(result)


def _exact_chunk(probs, masks, ys, xs, ty_, tx_) -> torch.Tensor:
    (by, bwy, ay, awy), (bx, bwx, ax, awx) = ty_, tx_
    mid_y, mid_x = by[ys], bx[xs]  # [n, 2] intermediate rows / cols
    low_y, low_x = ay[mid_y], ax[mid_x]  # [n, 2, P]
    vals = masks[:, low_y[:, :, None, :, None], low_x[:, None, :, None, :]]  # [Q, n, 2, 2, P, P]
    w = awy[mid_y][:, :, None, :, None] * awx[mid_x][:, None, :, None, :]  # [n, 2, 2, P, P]
    u = (vals * w).sum((-2, -1)).sigmoid()  # [Q, n, 2, 2]
    sem = torch.einsum("qk,qnij->nkij", probs, u)  # [n, K, 2, 2]
    wb = bwy[ys][:, :, None] * bwx[xs][:, None, :]  # [n, 2, 2]
    return torch.einsum("nkij,nij->nk", sem, wb).argmax(1)
