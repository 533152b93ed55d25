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

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from maskformer import resample as rs
from maskformer.marginal_argmax import official_labels

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
            results.append(_fast_resample(maps, pad, img, out) if order == "fast" else postprocess_maps(maps, pad, img, out))
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
    low = x.shape[-2:]
    wy = rs.fast_weights(low[0], pad[0], img[0], out[0]).to(x)  # [H, h]
    wx = rs.fast_weights(low[1], pad[1], img[1], out[1]).to(x)  # [W, w]
    if img == pad:
        return _resize(x, out)  # exactly F.interpolate(size=out)
    return torch.einsum("yh,khw,xw->kyx", wy, x, wx)


def _official_semantic(probs, masks, pad: Size, img: Size, out: Size, before_inference: bool) -> torch.Tensor:
    """sum_q probs[q] * sigmoid(mask_q) in the official order, accumulated over chunks of queries: [K, H, W]."""
    size = out if before_inference else img
    step = max(1, CHUNK_ELEMS // (pad[0] * pad[1]))
    sem = None
    for q0 in range(0, masks.shape[0], step):
        m = postprocess_maps(masks[q0 : q0 + step], pad, img, out) if before_inference else _resize(
            masks[q0 : q0 + step], pad
        )[:, : img[0], : img[1]]
        part = torch.einsum("qk,qhw->khw", probs[q0 : q0 + step], m.sigmoid())
        sem = part if sem is None else sem + part
    assert sem is not None and tuple(sem.shape[-2:]) == size
    return sem if before_inference else _resize(sem, out)


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
    extra = ((mass >= bound * (1 - 1e-5) - 1e-7) & ~dominant).nonzero()[:, 0]
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
