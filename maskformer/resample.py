"""Tiled, sparse evaluation of bilinearly resampled maps, for post-processing that needs only an argmax or a sign.

The official post-processing upsamples every mask logit map x4 to the padded input, crops the padding and resizes to
the original image (bilinear, align_corners=False), then takes an argmax or a threshold at full resolution. Bilinear
resampling is a convex combination of a small window of low-resolution values, so the min/max of that window bounds
every output pixel of a tile. With trained masks most tiles are decided by the bounds alone (one candidate, or a mask
surely on/off); only the few (tile, channel) pairs that remain are evaluated, as small batched matrix products.

Each image axis is described by an `AxisPlan`: the output axis cut into tiles of `tile` pixels, and per tile the
window of low-resolution indices it reads with the matching weights. Weights are exactly those of
`F.interpolate(mode="bilinear", align_corners=False)` (taken from F.interpolate itself); a chain of resamplings is
either composed into one matrix (linear chain) or kept as two stages (a nonlinearity between them).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

DEFAULT_TILE = 32
ITEM_BUDGET = 1 << 22  # max evaluated pixels held at once (items x tile x tile)


@contextlib.contextmanager
def one_thread(ref: torch.Tensor):
    """Run CPU work on one intra-op thread, then restore the setting.

    The tiled post-processing issues many mid-sized ops; each multi-threaded op pays a fork/join, which costs more
    than it saves at these sizes and becomes very expensive when the cores are shared with other processes.
    Process-wide (torch.set_num_threads); a no-op for tensors on accelerators.
    """
    n = torch.get_num_threads()
    if ref.device.type != "cpu" or n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def linear_weights(n_in: int, n_out: int, scale: float | None = None) -> torch.Tensor:
    """Weights [n_out, n_in] of 1-D linear resampling (align_corners=False), exactly as F.interpolate computes them.

    scale: F.interpolate's scale_factor (coordinates src = (dst + 0.5) / scale - 0.5); None: size mode (n_in / n_out).
    """
    eye = torch.eye(n_in, dtype=torch.float32).unsqueeze(0)  # [1, n_in channels, n_in length]
    if scale is None:
        out = F.interpolate(eye, size=n_out, mode="linear", align_corners=False)
    else:
        out = F.interpolate(eye, scale_factor=scale, mode="linear", align_corners=False, recompute_scale_factor=False)
        if out.shape[-1] < n_out:
            raise ValueError(f"scale {scale} gives {out.shape[-1]} < {n_out} outputs")
        out = out[..., :n_out]
    return out[0].T.contiguous()  # [n_out, n_in]


def chain_weights(n_low: int, n_pad: int, n_crop: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The official chain on one axis: upsample n_low -> n_pad, keep the first n_crop, resize n_crop -> n_out.

    Returns (stage A [n_crop, n_low], stage B [n_out, n_crop] or None when n_out == n_crop).
    """
    if not 0 < n_crop <= n_pad:
        raise ValueError(f"image size {n_crop} must lie in 1..{n_pad} (the padded size)")
    stage_a = linear_weights(n_low, n_pad)[:n_crop]
    stage_b = None if n_out == n_crop else linear_weights(n_crop, n_out)
    return stage_a, stage_b


def fast_weights(n_low: int, n_pad: int, n_crop: int, n_out: int) -> torch.Tensor:
    """One resampling straight from the low-resolution grid to the output, padding cropped: [n_out, n_low].

    The image covers n_crop * n_low / n_pad low-resolution cells; output pixel y reads low-resolution coordinate
    (y + 0.5) * n_crop * n_low / (n_pad * n_out) - 0.5. Equal to F.interpolate(size=n_out) when nothing is cropped.
    """
    if n_crop == n_pad:
        return linear_weights(n_low, n_out)
    keep, scale = fast_geometry(n_low, n_pad, n_crop, n_out)
    return F.pad(linear_weights(keep, n_out, scale=scale), (0, n_low - keep))


def fast_geometry(n_low: int, n_pad: int, n_crop: int, n_out: int) -> tuple[int, float]:
    """(low-res cells the image touches + 1 for the right neighbour, output pixels per low-res cell)."""
    return min(n_low, -(-n_crop * n_low // n_pad) + 1), n_out * n_pad / (n_crop * n_low)


def compose(stage_a: torch.Tensor, stage_b: torch.Tensor | None) -> torch.Tensor:
    """stage_b @ stage_a in float64, rounded to float32: one matrix for a linear chain [n_out, n_low]."""
    if stage_b is None:
        return stage_a
    return (stage_b.double() @ stage_a.double()).float()


@dataclass
class AxisPlan:
    """One axis cut into output tiles of `tile` pixels.

    low_idx [n_tiles, wl]: low-resolution indices each tile reads (a window, repeated at its end to a common width).
    low_w [n_tiles, R, wl]: stage-A weights from those indices to the R grid rows of the tile (R = tile, or the width
    of the intermediate window when there is a stage B). mid_w [n_tiles, tile, wm]: stage-B weights, or None.
    valid [n_tiles, tile]: True for pixels inside the output (the last tile may stick out).
    """

    n_out: int
    tile: int
    low_idx: torch.Tensor
    low_w: torch.Tensor
    mid_w: torch.Tensor | None
    valid: torch.Tensor

    @property
    def n_tiles(self) -> int:
        return self.low_idx.shape[0]

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> AxisPlan:
        mid = None if self.mid_w is None else self.mid_w.to(device, dtype)
        return AxisPlan(
            self.n_out, self.tile, self.low_idx.to(device), self.low_w.to(device, dtype), mid, self.valid.to(device)
        )


def _windows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """rows [n_t, R, n_cols] -> (idx [n_t, w], sub [n_t, R, w]): the window of columns with nonzero weight per tile."""
    n_cols = rows.shape[-1]
    used = (rows != 0).any(1)  # [n_t, n_cols]
    first = used.float().argmax(1)
    last = n_cols - 1 - used.flip(1).float().argmax(1)
    width = int((last - first).max()) + 1
    idx = first[:, None] + torch.arange(width)  # [n_t, w]
    inside = idx <= last[:, None]
    idx = torch.minimum(idx, last[:, None])
    sub = rows.gather(2, idx[:, None, :].expand(-1, rows.shape[1], -1)) * inside[:, None, :]
    return idx, sub


def _tiled_rows(m: torch.Tensor, tile: int) -> torch.Tensor:
    """[n, k] -> [n_t, tile, k], zero rows appended to fill the last tile."""
    n_t = -(-m.shape[0] // tile)
    return F.pad(m, (0, 0, 0, n_t * tile - m.shape[0])).reshape(n_t, tile, m.shape[1])


def build_plan(stage_a: torch.Tensor, stage_b: torch.Tensor | None, tile: int = DEFAULT_TILE) -> AxisPlan:
    """Plan for output rows = stage_b @ f(stage_a @ low) (stage_b None: output = stage_a @ low)."""
    n_out = (stage_a if stage_b is None else stage_b).shape[0]
    valid = _tiled_rows(torch.ones(n_out, 1), tile)[..., 0].bool()  # [n_t, tile]
    if stage_b is None:
        low_idx, low_w = _windows(_tiled_rows(stage_a, tile))
        return AxisPlan(n_out, tile, low_idx, low_w, None, valid)
    mid_idx, mid_w = _windows(_tiled_rows(stage_b, tile))  # [n_t, wm], [n_t, tile, wm]
    low_idx, low_w = _windows(stage_a[mid_idx])  # stage-A rows of each tile's intermediate window
    return AxisPlan(n_out, tile, low_idx, low_w, mid_w, valid)


@functools.lru_cache(maxsize=64)
def cached_plan(kind: str, n_low: int, n_pad: int, n_crop: int, n_out: int, tile: int = DEFAULT_TILE) -> AxisPlan:
    """Plans by kind: "linear" (the official chain composed), "two_stage" (chain with a step between the stages),
    "fast" (one resampling from the low-resolution grid)."""
    if kind == "fast":
        return build_plan(fast_weights(n_low, n_pad, n_crop, n_out), None, tile)
    stage_a, stage_b = chain_weights(n_low, n_pad, n_crop, n_out)
    if kind == "linear":
        return build_plan(compose(stage_a, stage_b), None, tile)
    if kind == "two_stage":
        return build_plan(stage_a, stage_b, tile)
    raise ValueError(f"unknown plan kind {kind!r}")


def plans(
    kind: str,
    low: tuple[int, int],
    pad: tuple[int, int],
    crop: tuple[int, int],
    out: tuple[int, int],
    ref: torch.Tensor,
    tile: int = DEFAULT_TILE,
) -> tuple[AxisPlan, AxisPlan]:
    """(rows plan, cols plan) on ref's device and dtype."""
    py = cached_plan(kind, low[0], pad[0], crop[0], out[0], tile)
    px = cached_plan(kind, low[1], pad[1], crop[1], out[1], tile)
    return py.to(ref.device, ref.dtype), px.to(ref.device, ref.dtype)


def window_bounds(x: torch.Tensor, py: AxisPlan, px: AxisPlan) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max of each channel over each tile's low-resolution window: x [C, h, w] -> ([C, n_ty, n_tx]) x 2."""
    return window_reduce(x, py, px, torch.minimum), window_reduce(x, py, px, torch.maximum)


def window_reduce(x: torch.Tensor, py: AxisPlan, px: AxisPlan, op) -> torch.Tensor:
    """op (torch.minimum / torch.maximum) of each channel over each tile's window: x [C, h, w] -> [C, n_ty, n_tx]."""
    rows = range_reduce(x, 1, py.low_idx[:, 0], py.low_idx[:, -1], op)  # [C, n_ty, w]
    return range_reduce(rows, 2, px.low_idx[:, 0], px.low_idx[:, -1], op)


def range_reduce(x: torch.Tensor, dim: int, first: torch.Tensor, last: torch.Tensor, op) -> torch.Tensor:
    """op (torch.maximum / torch.minimum) of x over the index ranges [first_i, last_i] of `dim` -> size n there.

    Sparse-table style: with 2^k <= every width <= 2^(k+1), level k (op over 2^k neighbours, k passes over x)
    covers each range by two overlapping entries. Narrower ranges are first widened to 2^k (a superset, so the
    result still bounds the range). The last dim is handled through a transposed copy (row gathers are faster).
    """
    if dim == x.dim() - 1:
        return range_reduce(x.transpose(-1, -2).contiguous(), dim - 1, first, last, op).transpose(-1, -2)
    n = x.shape[dim]
    k = int((last - first + 1).max()).bit_length() - 1
    span = 1 << k
    last = torch.maximum(last, (first + span - 1).clamp(max=n - 1))
    first = torch.minimum(first, last - span + 1)
    level = x
    for j in range(k):
        step = 1 << j
        m = level.shape[dim] - step
        level = op(level.narrow(dim, 0, m), level.narrow(dim, step, m))  # entry r: op over [r, r + 2^(j+1) - 1]
    return op(level.index_select(dim, first), level.index_select(dim, last - span + 1))


def mean_lower_bound(x: torch.Tensor, hi: torch.Tensor, py: AxisPlan, px: AxisPlan, m: int = 4) -> torch.Tensor:
    """A lower bound of max_c of the linearly resampled x over each tile: [n_ty, n_tx].

    For any set S of channels, max_c I_c(p) >= mean_{c in S} I_c(p) >= min over the window of mean_{c in S} x_c,
    because resampling is a convex combination. S = the top-1..m channels by `hi` [C, n_ty, n_tx]; the best is kept.
    Much tighter than max_c min_window x_c where the winning channel changes inside the tile.
    """
    m = min(m, x.shape[0])
    top = hi.topk(m, dim=0).indices.permute(1, 2, 0)  # [n_ty, n_tx, m]
    rows = py.low_idx[:, None, None, :, None]  # [n_ty, 1, 1, wly, 1]
    cols = px.low_idx[None, :, None, None, :]  # [1, n_tx, 1, 1, wlx]
    vals = x[top[..., None, None], rows, cols]  # [n_ty, n_tx, m, wly, wlx]
    means = vals.cumsum(2) / torch.arange(1, m + 1, device=x.device, dtype=x.dtype)[:, None, None]
    return means.amin((3, 4)).amax(2)


def stage_a(x: torch.Tensor, py: AxisPlan, px: AxisPlan, ch: torch.Tensor, ty: torch.Tensor, tx: torch.Tensor):
    """Resample channel ch[i] on tile (ty[i], tx[i]) through stage A: x [C, h, w] -> [N, Ry, Rx]."""
    patch = x[ch[:, None, None], py.low_idx[ty][:, :, None], px.low_idx[tx][:, None, :]]  # [N, wly, wlx]
    return py.low_w[ty] @ patch @ px.low_w[tx].transpose(1, 2)


def stage_b(z: torch.Tensor, py: AxisPlan, px: AxisPlan, ty: torch.Tensor, tx: torch.Tensor) -> torch.Tensor:
    """Stage B of a two-stage plan: [N, wmy, wmx] -> [N, tile, tile] (identity for one-stage plans)."""
    if py.mid_w is None:
        return z
    return py.mid_w[ty] @ z @ px.mid_w[tx].transpose(1, 2)


def valid_mask(py: AxisPlan, px: AxisPlan, ty: torch.Tensor, tx: torch.Tensor) -> torch.Tensor:
    """[N, tile, tile] True inside the output."""
    return py.valid[ty][:, :, None] & px.valid[tx][:, None, :]


def tile_pixels(py: AxisPlan, px: AxisPlan) -> torch.Tensor:
    """Number of output pixels inside each tile: [n_ty, n_tx]."""
    return py.valid.sum(1)[:, None] * px.valid.sum(1)[None, :]


def chunks(n: int, per_item: int) -> Iterator[slice]:
    """Slices of range(n) holding at most ITEM_BUDGET // per_item items."""
    step = max(1, ITEM_BUDGET // max(1, per_item))
    for s in range(0, n, step):
        yield slice(s, min(n, s + step))


def untile(tiles: torch.Tensor, py: AxisPlan, px: AxisPlan) -> torch.Tensor:
    """[..., n_ty, n_tx, tile, tile] -> [..., H, W] (the part inside the output)."""
    *lead, n_ty, n_tx, t, _ = tiles.shape
    img = tiles.transpose(-3, -2).reshape(*lead, n_ty * t, n_tx * t)  # [..., n_ty*t, n_tx*t]
    return img[..., : py.n_out, : px.n_out]


def candidate_argmax(
    x: torch.Tensor,
    cand: torch.Tensor,
    py: AxisPlan,
    px: AxisPlan,
    value_fn=None,
) -> torch.Tensor:
    """Per output pixel, the channel with the largest resampled value, given candidates per tile.

    x [C, h, w]: low-resolution maps. cand [C, n_ty, n_tx] bool: channels that may win somewhere in the tile (at least
    one per tile; every channel that can win must be there). value_fn(z [N, Ry, Rx], ch [N]) -> [N, Ry, Rx]: applied
    after stage A (default identity); stage B follows. Ties go to the lowest channel index, as torch.argmax.
    Returns int64 [H, W].
    """
    n_ty, n_tx, t = py.n_tiles, px.n_tiles, py.tile
    count = cand.sum(0)  # [n_ty, n_tx]
    out = cand.float().argmax(0)[:, :, None, None].expand(-1, -1, t, t).clone()  # single-candidate tiles
    tile_id, ch = cand.permute(1, 2, 0).reshape(-1, cand.shape[0]).nonzero(as_tuple=True)  # tile-major, channel-minor
    n_items = count.flatten()[tile_id]
    for lo, hi in _buckets(int(count.max())):
        sel = (n_items >= lo) & (n_items <= hi)
        if sel.any():
            _bucket_argmax(x, py, px, tile_id[sel], ch[sel], hi, out.view(n_ty * n_tx, t, t), value_fn)
    return untile(out, py, px)


def _buckets(cmax: int) -> Iterator[tuple[int, int]]:
    """Candidate-count ranges 2, 3-4, 5-8, ... up to cmax."""
    lo = 2
    while lo <= cmax:
        hi = 2 if lo == 2 else 2 * (lo - 1)
        yield lo, hi
        lo = hi + 1


def _bucket_argmax(x, py, px, tile_id, ch, cmax, out_flat, value_fn) -> None:
    """Argmax over the items of tiles holding 2..cmax candidates each (items sorted by tile, then channel)."""
    t = py.tile
    tiles, local = torch.unique_consecutive(tile_id, return_inverse=True)
    start = torch.zeros(len(tiles) + 1, dtype=torch.long, device=ch.device)
    start[1:] = torch.bincount(local, minlength=len(tiles)).cumsum(0)
    slot = torch.arange(len(ch), device=ch.device) - start[local]
    per_group = max(1, ITEM_BUDGET // (cmax * t * t))
    for g0 in range(0, len(tiles), per_group):
        g1 = min(len(tiles), g0 + per_group)
        i0, i1 = int(start[g0]), int(start[g1])
        tid, c, lt, sl = tile_id[i0:i1], ch[i0:i1], local[i0:i1] - g0, slot[i0:i1]
        ty, tx = tid // px.n_tiles, tid % px.n_tiles
        z = stage_a(x, py, px, c, ty, tx)
        if value_fn is not None:
            z = value_fn(z, c)
        v = stage_b(z, py, px, ty, tx)  # [n, t, t]
        buf = v.new_full((g1 - g0, t * t, cmax), float("-inf"))  # slots last: argmax over a contiguous dim
        buf[lt, :, sl] = v.flatten(1)
        chan = ch.new_zeros((g1 - g0, cmax))
        chan[lt, sl] = c
        win = buf.argmax(2)  # [g, t*t] slot of the winner
        out_flat[tiles[g0:g1]] = chan.gather(1, win).view(-1, t, t)
