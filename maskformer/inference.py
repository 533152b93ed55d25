"""Post-processing: model outputs -> semantic scores / label maps, panoptic segments, instances (reference section 5).

Inputs are the model's outputs for a batch: {"pred_logits" [B, Q, K+1], "pred_masks" [B, Q, h, w]} (mask
classification) or {"sem_seg" [B, K, h, w]} (per-pixel baselines), with h, w = 1/4 of the padded input
(`padded_size`, default 4 x (h, w)), the unpadded `image_sizes` [(h_i, w_i)] and the wanted `output_sizes` (default:
the image sizes). Every map goes through the official chain: bilinear upsample to the padded size, crop to the image,
bilinear resize to the output size (align_corners=False).

- `semantic_inference`: [K, H, W] scores. order="official": upsample the Q mask logits, sigmoid, marginalize
  sum_q softmax(class)[:K] * sigmoid(mask) (over chunks of queries, so memory stays bounded), crop, resize.
  before_inference=True resizes the mask logits to the output first (official SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE).
  order="fast" (memory-saving, not the official numbers): marginalize at 1/4 and resample the K-map once, straight to
  the output size (what transformers does, but with the padding cropped); never holds Q full-size maps.
  Per-pixel baselines: the logits through the chain.
- `semantic_labels`: the argmax of the above as int64 [H, W] without building the K full-size maps (tiled, sparse).
- `panoptic_inference`, `instance_inference`: see their docstrings (maskformer/resample.py does the tiling).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from maskformer import resample as rs
from maskformer.marginal_argmax import official_labels
from maskformer.structures import DatasetMeta

Size = tuple[int, int]
CHUNK_ELEMS = 1 << 25  # full-size mask values held at once by the dense official path


# ------------------------------------------------------------------------------------------------ input checks
def _sizes(outputs: dict, image_sizes, output_sizes, padded_size) -> tuple[list[Size], list[Size], Size, Size]:
    """Validated (image_sizes, output_sizes, low-res size, padded size); errors name the argument and the problem."""
    if not isinstance(outputs, dict) or not ({"pred_logits", "pred_masks"} <= outputs.keys() or "sem_seg" in outputs):
        keys = sorted(outputs) if isinstance(outputs, dict) else type(outputs).__name__
        raise ValueError(f"outputs must hold 'pred_logits' and 'pred_masks' (or 'sem_seg'); got {keys}")
    maps = outputs["sem_seg"] if "sem_seg" in outputs else outputs["pred_masks"]
    if maps.dim() != 4:
        raise ValueError(f"mask outputs must be [B, C, h, w]; got shape {tuple(maps.shape)}")
    if "pred_logits" in outputs and "sem_seg" not in outputs:
        logits = outputs["pred_logits"]
        if logits.dim() != 3 or logits.shape[:2] != maps.shape[:2]:
            raise ValueError(
                f"pred_logits {tuple(logits.shape)} must be [B, Q, K+1] with B, Q of pred_masks {tuple(maps.shape)}"
            )
    low = (int(maps.shape[-2]), int(maps.shape[-1]))
    pad = tuple(padded_size) if padded_size is not None else (4 * low[0], 4 * low[1])
    images = [(int(h), int(w)) for h, w in image_sizes]
    outs = images if output_sizes is None else [(int(h), int(w)) for h, w in output_sizes]
    if len(images) != maps.shape[0] or len(outs) != maps.shape[0]:
        raise ValueError(f"batch of {maps.shape[0]} outputs but {len(images)} image_sizes and {len(outs)} output_sizes")
    for (h, w), (oh, ow) in zip(images, outs):
        if not (0 < h <= pad[0] and 0 < w <= pad[1]):
            raise ValueError(f"image size {(h, w)} does not fit the padded input {pad}")
        if oh <= 0 or ow <= 0:
            raise ValueError(f"output size {(oh, ow)} must be positive")
    return images, outs, low, pad


def _resize(x: torch.Tensor, size: Size) -> torch.Tensor:
    """Bilinear resize of [C, h, w] (align_corners=False); no-op when the size already matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]


def postprocess_maps(x: torch.Tensor, pad: Size, image_size: Size, output_size: Size) -> torch.Tensor:
    """The official chain on [C, h, w] low-res maps: upsample to `pad`, crop to `image_size`, resize -> [C, H, W]."""
    up = _resize(x, pad)[:, : image_size[0], : image_size[1]]
    return _resize(up, output_size)


def _one_thread(fn):
    """Run a tiled post-processor on one intra-op CPU thread (see resample.one_thread)."""

    @functools.wraps(fn)
    def wrapper(outputs, *args, **kwargs):
        ref = next((v for v in outputs.values() if torch.is_tensor(v)), None) if isinstance(outputs, dict) else None
        with rs.one_thread(ref if ref is not None else torch.empty(0)):
            return fn(outputs, *args, **kwargs)

    return wrapper


def class_probs(pred_logits: torch.Tensor) -> torch.Tensor:
    """softmax over K+1 with the no-object column dropped: [..., Q, K+1] -> [..., Q, K]."""
    return pred_logits.softmax(-1)[..., :-1]


# ------------------------------------------------------------------------------------------------ semantic
def semantic_inference(
    outputs: dict,
    image_sizes: Sequence[Size],
    output_sizes: Sequence[Size] | None = None,
    *,
    before_inference: bool = False,
    order: str = "official",
    padded_size: Size | None = None,
) -> list[torch.Tensor]:
    """Per image the class scores [K, H, W] (not normalized; argmax gives the label). See the module docstring."""
    images, outs, low, pad = _sizes(outputs, image_sizes, output_sizes, padded_size)
    _check_order(order)
    results = []
    for i, (img, out) in enumerate(zip(images, outs)):
        if "sem_seg" in outputs:
            maps = outputs["sem_seg"][i]
            results.append(
                _fast_resample(maps, pad, img, out) if order == "fast" else postprocess_maps(maps, pad, img, out)
            )
            continue
        probs, masks = class_probs(outputs["pred_logits"][i]), outputs["pred_masks"][i]
        if order == "fast":
            results.append(_fast_resample(torch.einsum("qk,qhw->khw", probs, masks.sigmoid()), pad, img, out))
        else:
            results.append(_official_semantic(probs, masks, pad, img, out, before_inference))
    return results


def _check_order(order: str) -> None:
    if order not in ("official", "fast"):
        raise ValueError(f"order={order!r}; choose 'official' or 'fast'")


def _fast_resample(x: torch.Tensor, pad: Size, img: Size, out: Size) -> torch.Tensor:
    """[K, h, w] low-res maps straight to [K, H, W] with the padding cropped (one bilinear step)."""
    if img == pad:
        return _resize(x, out)  # exactly F.interpolate(size=out)
    (keep_h, sy), (keep_w, sx) = (rs.fast_geometry(x.shape[-2 + a], pad[a], img[a], out[a]) for a in (0, 1))
    up = F.interpolate(
        x[None, :, :keep_h, :keep_w], scale_factor=(sy, sx), mode="bilinear", align_corners=False,
        recompute_scale_factor=False,
    )  # fmt: skip
    return up[0, :, : out[0], : out[1]]  # (same weights as resample.fast_weights)


def _official_semantic(probs, masks, pad: Size, img: Size, out: Size, before_inference: bool) -> torch.Tensor:
    """sum_q probs[q] * sigmoid(mask_q) in the official order, accumulated over chunks of queries: [K, H, W]."""
    step = max(1, CHUNK_ELEMS // (pad[0] * pad[1]))
    sem = None
    for q0 in range(0, masks.shape[0], step):
        m = (
            postprocess_maps(masks[q0 : q0 + step], pad, img, out)
            if before_inference
            else _resize(masks[q0 : q0 + step], pad)[:, : img[0], : img[1]]
        )
        part = torch.einsum("qk,qhw->khw", probs[q0 : q0 + step], m.sigmoid())
        sem = part if sem is None else sem + part
    return sem if before_inference else _resize(sem, out)


@_one_thread
def semantic_labels(
    outputs: dict,
    image_sizes: Sequence[Size],
    output_sizes: Sequence[Size] | None = None,
    *,
    before_inference: bool = False,
    order: str = "official",
    padded_size: Size | None = None,
) -> list[torch.Tensor]:
    """argmax over classes of `semantic_inference(...)`, int64 [H, W] per image, computed tile by tile.

    Only classes whose bounds (min/max over the tile's low-res window) allow them to win are evaluated; ties go to
    the lowest class id. Equal to the dense argmax up to float rounding (pixels whose top two scores differ by ~1e-6).
    """
    images, outs, low, pad = _sizes(outputs, image_sizes, output_sizes, padded_size)
    _check_order(order)
    results = []
    for i, (img, out) in enumerate(zip(images, outs)):
        if "sem_seg" in outputs:
            kind = "fast" if order == "fast" else "linear"
            results.append(_bounded_argmax(outputs["sem_seg"][i], kind, low, pad, img, out))
            continue
        probs, masks = class_probs(outputs["pred_logits"][i]), outputs["pred_masks"][i]
        if order == "fast":
            classes, sem = marginal_pruned(probs, masks.sigmoid())  # [C'], [C', h, w]
            results.append(classes[_bounded_argmax(sem, "fast", low, pad, img, out)])
        else:
            results.append(official_labels(probs, masks, low, pad, img, out, before_inference))
    return results


def marginal_pruned(probs: torch.Tensor, sig: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The marginal sum_q probs[q, k] sig[q] for the classes that can win somewhere: (classes [C'], maps [C', h, w]).

    Any resampling of the maps is a convex combination, so class k never exceeds its mass sum_q probs[q, k], while the
    best class at a pixel is at least the mean over any class set S, which is at least min_pixels mean_S. Classes
    whose mass is below that bound are dropped before the (K x Q x h x w) marginalization.
    """
    mass = probs.sum(0)  # [K]
    dominant = (mass >= 0.5) | (mass == mass.max())
    sel = dominant.nonzero()[:, 0]  # S: classes holding at least half a query's probability
    sem_s = torch.einsum("qk,qhw->khw", probs[:, sel], sig)  # [|S|, h, w]
    bound = float(sem_s.mean(0).amin())
    extra = ((mass >= bound - 1e-5 * (1 + bound)) & ~dominant).nonzero()[:, 0]  # slack for float32 sums
    if len(extra) == 0:
        return sel, sem_s
    sem_e = torch.einsum("qk,qhw->khw", probs[:, extra], sig)
    classes, order = torch.cat([sel, extra]).sort()
    return classes, torch.cat([sem_s, sem_e])[order]


def _bounded_argmax(x: torch.Tensor, kind: str, low: Size, pad: Size, img: Size, out: Size) -> torch.Tensor:
    """argmax over channels of the resampled x [C, h, w] -> int64 [H, W] (linear resampling, tiled)."""
    py, px = rs.plans(kind, low, pad, img, out, x)
    lo, hi = rs.window_bounds(x, py, px)  # [C, n_ty, n_tx]
    best_lo = torch.maximum(lo.amax(0), rs.mean_lower_bound(x, hi, py, px))
    cand = hi >= best_lo - 1e-6 * (1 + best_lo.abs())
    return rs.candidate_argmax(x, cand, py, px)


# ------------------------------------------------------------------------------------------------ panoptic
@_one_thread
def panoptic_inference(
    outputs: dict,
    image_sizes: Sequence[Size],
    output_sizes: Sequence[Size] | None = None,
    *,
    thing_ids: Iterable[int],
    object_mask_threshold: float = 0.8,
    overlap_threshold: float = 0.8,
    meta: DatasetMeta | None = None,
    padded_size: Size | None = None,
    tile: int = 16,
) -> list[tuple[torch.Tensor, list[dict]]]:
    """Official general/panoptic inference (reference section 5.3) -> per image (ids int32 [H, W], segments_info).

    Mask logits are upsampled, cropped and resized to the output size before the sigmoid. Queries are kept when
    their best class is not no-object and its probability > object_mask_threshold (strict). Each pixel goes to the
    kept query with the largest score * sigmoid(mask) (ties: lowest query index). In query order, a query whose
    assigned area / area(sigmoid >= 0.5) < overlap_threshold is dropped (its pixels stay 0); stuff queries of a class
    already emitted join that segment; others get the next id (from 1). segments_info: {"id", "isthing",
    "category_id" (contiguous), "dataset_category_id" (meta.dataset_ids, else the contiguous id), "area" (pixels in
    the final map), "score" (the probability of the query that opened the segment)}.
    """
    if "pred_logits" not in outputs:
        raise ValueError("panoptic inference needs mask-classification outputs ('pred_logits', 'pred_masks')")
    images, outs, low, pad = _sizes(outputs, image_sizes, output_sizes, padded_size)
    things = {int(t) for t in thing_ids}
    results = []
    for i, (img, out) in enumerate(zip(images, outs)):
        probs = outputs["pred_logits"][i].softmax(-1)
        scores, labels = probs.max(-1)
        keep = (labels != probs.shape[-1] - 1) & (scores > object_mask_threshold)
        if not keep.any():
            results.append((torch.zeros(out, dtype=torch.int32, device=probs.device), []))
            continue
        s, c, m = scores[keep], labels[keep], outputs["pred_masks"][i][keep]
        assign, orig_area = _panoptic_assign(m, s, low, pad, img, out, tile)
        area = torch.bincount(assign.flatten(), minlength=len(s))
        lut, segments = _segments(c.tolist(), s.tolist(), area.tolist(), orig_area.tolist(), things, overlap_threshold)
        ids = torch.tensor(lut, dtype=torch.int32, device=assign.device)[assign]
        _finish_segments(segments, ids, meta)
        results.append((ids, segments))
    return results


def _panoptic_assign(m, s, low: Size, pad: Size, img: Size, out: Size, tile: int):
    """(argmax_q s_q * sigmoid(V_q) int64 [H, W], #pixels with sigmoid(V_q) >= 0.5 [Qk]); V = the resampled logits."""
    py, px = rs.plans("linear", low, pad, img, out, m, tile)
    lo, hi = rs.window_bounds(m, py, px)  # [Qk, n_ty, n_tx] logit bounds
    s3 = s[:, None, None]
    v_lo, v_hi = s3 * lo.sigmoid(), s3 * hi.sigmoid()
    cand = v_hi >= v_lo.amax(0) - 1e-6
    assign = rs.candidate_argmax(m, cand, py, px, value_fn=lambda z, ch: s[ch][:, None, None] * z.sigmoid())
    return assign, _area_at_half(m, lo, hi, py, px)


def _area_at_half(m, lo, hi, py, px) -> torch.Tensor:
    """Per channel, the number of output pixels with sigmoid(resampled logit) >= 0.5: int64 [C]."""
    full = lo > 1e-6  # the whole tile is >= 0.5
    area = (full * rs.tile_pixels(py, px)).sum((1, 2))
    ch, ty, tx = ((hi >= -1e-6) & ~full).nonzero(as_tuple=True)  # tiles crossing 0.5
    t2 = py.tile * py.tile
    for sl in rs.chunks(len(ch), t2):
        z = rs.stage_a(m, py, px, ch[sl], ty[sl], tx[sl])
        inside = (z.sigmoid() >= 0.5) & rs.valid_mask(py, px, ty[sl], tx[sl])
        area.index_add_(0, ch[sl], inside.sum((1, 2)))
    return area


def _segments(classes, scores, areas, orig_areas, things, overlap_threshold) -> tuple[list[int], list[dict]]:
    """The official per-query rule on scalars: (segment id per kept query, 0 = dropped; segments_info)."""
    lut, segments, stuff_seen = [0] * len(classes), [], {}
    for k, (c, score, area, orig) in enumerate(zip(classes, scores, areas, orig_areas)):
        if area == 0 or orig == 0 or area / orig < overlap_threshold:
            continue
        isthing = c in things
        if not isthing and c in stuff_seen:
            lut[k] = stuff_seen[c]
            continue
        lut[k] = len(segments) + 1
        if not isthing:
            stuff_seen[c] = lut[k]
        segments.append({"id": lut[k], "isthing": isthing, "category_id": c, "score": score})
    return lut, segments


def _finish_segments(segments: list[dict], ids: torch.Tensor, meta: DatasetMeta | None) -> None:
    """Add "area" (pixels of each id in the final map) and "dataset_category_id" to each segment, in place."""
    areas = torch.bincount(ids.flatten().long(), minlength=len(segments) + 1).tolist()
    for seg in segments:
        seg["area"] = areas[seg["id"]]
        c = seg["category_id"]
        seg["dataset_category_id"] = int(meta.dataset_ids[c]) if meta is not None else c


# ------------------------------------------------------------------------------------------------ instance
@dataclass
class Instances:
    """Instances of one image, best first: masks bool [N, H, W], scores float [N], labels int64 [N] (contiguous)."""

    masks: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.scores)


@_one_thread
def instance_inference(
    outputs: dict,
    image_sizes: Sequence[Size],
    output_sizes: Sequence[Size] | None = None,
    *,
    thing_ids: Iterable[int] | None = None,
    topk: int = 100,
    padded_size: Size | None = None,
    tile: int = 32,
) -> list[Instances]:
    """Mask2Former's instance rule (reference section 11.8) -> per image `Instances`.

    The top-k (query, class) pairs of the flattened Q x K class probabilities (no-object excluded); with thing_ids,
    pairs of other classes are then dropped (as in panoptic models). Mask = resampled logit > 0 (upsampled, cropped
    and resized bilinearly); score = class probability x mean sigmoid inside the mask (sum / (area + 1e-6)).
    """
    if "pred_logits" not in outputs:
        raise ValueError("instance inference needs mask-classification outputs ('pred_logits', 'pred_masks')")
    images, outs, low, pad = _sizes(outputs, image_sizes, output_sizes, padded_size)
    results = []
    for i, (img, out) in enumerate(zip(images, outs)):
        probs = class_probs(outputs["pred_logits"][i])  # [Q, K]
        n_cls = probs.shape[1]
        scores, idx = probs.flatten().topk(min(topk, probs.numel()))
        labels, queries = idx % n_cls, idx // n_cls
        if thing_ids is not None:
            is_thing = torch.isin(labels, torch.as_tensor(list(thing_ids), dtype=labels.dtype, device=labels.device))
            scores, labels, queries = scores[is_thing], labels[is_thing], queries[is_thing]
        uq, inv = torch.unique(queries, return_inverse=True)
        items, pos, mean_prob = _instance_tiles(outputs["pred_masks"][i][uq], low, pad, img, out, tile)
        scores = scores * mean_prob[inv]
        order = scores.argsort(descending=True, stable=True)
        masks = _paint_instances(inv[order], len(uq), items, pos, out)
        results.append(Instances(masks, scores[order], labels[order]))
    return results


def _instance_tiles(m, low: Size, pad: Size, img: Size, out: Size, tile: int):
    """Resampled logit > 0 on every tile where it can be positive, for low-res logits m [C, h, w].

    Returns ((ch, ty, tx) [N] x 3, pos bool [N, tile, tile], mean sigmoid inside each channel's mask [C]).
    """
    py, px = rs.plans("linear", low, pad, img, out, m, tile)
    hi = rs.window_reduce(m, py, px, torch.maximum)
    ch, ty, tx = (hi > 0).nonzero(as_tuple=True)  # elsewhere every resampled logit is <= 0
    count, total, pos = m.new_zeros(m.shape[0]), m.new_zeros(m.shape[0]), []
    for sl in rs.chunks(len(ch), tile * tile):
        z = rs.stage_a(m, py, px, ch[sl], ty[sl], tx[sl]).flatten(1)  # [n, tile * tile]
        pos.append(z > 0)  # padded rows have all-zero weights, so z = 0 there
        n_pos = _count(pos[-1]).to(m.dtype)
        # sum over z > 0 of sigmoid(z) = sum(sigmoid(relu(z)) - 1/2) + count/2, and sigmoid(r) - 1/2 = tanh(r/2)/2
        half_tanh = z.relu_().mul_(0.5).tanh_().sum(1)
        count.index_add_(0, ch[sl], n_pos)
        total.index_add_(0, ch[sl], 0.5 * (half_tanh + n_pos))
    pos = torch.cat(pos) if pos else torch.zeros(0, tile * tile, dtype=torch.bool, device=m.device)
    return (ch, ty, tx), pos.view(-1, tile, tile), total / (count + 1e-6)


def _count(mask: torch.Tensor) -> torch.Tensor:
    """Number of True per row of bool [N, M] (int32; summing the bytes is much faster than summing bools on CPU)."""
    return mask.view(torch.uint8).sum(1, dtype=torch.int32)


def _paint_instances(inst_ch: torch.Tensor, n_ch: int, items, pos: torch.Tensor, out: Size) -> torch.Tensor:
    """bool [N, H, W] masks: instance n gets channel inst_ch[n]'s positive tiles, written straight into place."""
    ch, ty, tx = items
    t = pos.shape[-1]
    n_ty, n_tx = -(-out[0] // t), -(-out[1] // t)
    masks = torch.zeros(len(inst_ch), n_ty * t, n_tx * t, dtype=torch.bool, device=pos.device)
    # pair every item with every instance of its channel
    per_ch = torch.bincount(inst_ch, minlength=n_ch)  # [C] instances per channel
    inst_sorted = inst_ch.argsort(stable=True)
    first = torch.cumsum(per_ch, 0) - per_ch
    reps = per_ch[ch]
    item_id = torch.repeat_interleave(torch.arange(len(ch), device=ch.device), reps)
    rank = torch.arange(len(item_id), device=ch.device) - torch.repeat_interleave(torch.cumsum(reps, 0) - reps, reps)
    inst = inst_sorted[first[ch[item_id]] + rank]
    tiled = masks.view(len(inst_ch), n_ty, t, n_tx, t).permute(0, 1, 3, 2, 4)  # [N, n_ty, n_tx, t, t] view
    tiled[inst, ty[item_id], tx[item_id]] = pos[item_id]
    return masks[:, : out[0], : out[1]]
