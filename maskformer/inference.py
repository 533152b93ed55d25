"""Post-processing: model outputs -> class scores / label maps, panoptic segments, instances. The plain reference.

The official rules (official-maskformer.md and mask2former.md, section 5) on a batch {"pred_logits" [B, Q, K+1],
"pred_masks" [B, Q, h, w]} or, for per-pixel baselines, {"sem_seg" [B, K, h, w]}; h, w = 1/4 of the padded input
(`padded_size`, default 4 x (h, w)); `image_sizes` unpadded; `output_sizes` default to the image sizes. Every map goes
through the official chain: bilinear upsample to the padded size, crop to the image, resize to the output size.
Panoptic painting differs by architecture (`rule`, see panoptic_inference); semantic and instance do not.
fast=True gives the same results (up to float rounding at near-ties) from `maskformer.fast_postprocess`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from maskformer import fast_postprocess as fp
from maskformer.structures import DatasetMeta

Size = tuple[int, int]
RULES = ("maskformer", "mask2former")  # panoptic painting rule, by architecture
CHUNK_ELEMS = 1 << 25  # full-size mask values held at once while marginalizing


def _sizes(outputs: dict, image_sizes, output_sizes, padded_size, order="official", task=None):
    """Validated (image_sizes, output_sizes, low-res size, padded size); errors name the argument and the problem.
    task: the inference ("panoptic", "instance") that needs mask-classification outputs."""
    if task is not None and "pred_logits" not in outputs:
        raise ValueError(f"{task} inference needs mask-classification outputs ('pred_logits', 'pred_masks')")
    if order not in ("official", "fast"):
        raise ValueError(f"order={order!r}; choose 'official' or 'fast'")
    if not isinstance(outputs, dict) or not ({"pred_logits", "pred_masks"} <= outputs.keys() or "sem_seg" in outputs):
        keys = sorted(outputs) if isinstance(outputs, dict) else type(outputs).__name__
        raise ValueError(f"outputs must hold 'pred_logits' and 'pred_masks' (or 'sem_seg'); got {keys}")
    maps = outputs["sem_seg"] if "sem_seg" in outputs else outputs["pred_masks"]
    if maps.dim() != 4:
        raise ValueError(f"mask outputs must be [B, C, h, w]; got shape {tuple(maps.shape)}")
    logits = outputs.get("pred_logits")
    if "sem_seg" not in outputs and (logits.dim() != 3 or logits.shape[:2] != maps.shape[:2]):
        raise ValueError(f"pred_logits {tuple(logits.shape)} must be [B, Q, K+1] (pred_masks: {tuple(maps.shape)})")
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
    return _resize(_resize(x, pad)[:, : image_size[0], : image_size[1]], output_size)


def class_probs(pred_logits: torch.Tensor) -> torch.Tensor:
    """softmax over K+1 with the no-object column dropped: [..., Q, K+1] -> [..., Q, K]."""
    return pred_logits.softmax(-1)[..., :-1]


def semantic_inference(
    outputs: dict, image_sizes: Sequence[Size], output_sizes: Sequence[Size] | None = None, *,
    before_inference: bool = False, order: str = "official", padded_size: Size | None = None,
) -> list[torch.Tensor]:  # fmt: skip
    """Per image the class scores [K, H, W] (not normalized; the argmax is the label).

    order="official": upsample the Q mask logits, sigmoid, marginalize sum_q softmax(class)[:K] * sigmoid(mask)
    (over chunks of queries, so memory stays bounded), crop, resize. before_inference=True resizes the mask logits
    to the output first (official SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE). Per-pixel baselines: logits, chained.
    order="fast" (not the official numbers; what transformers does, with the padding cropped): marginalize at 1/4,
    then one bilinear resampling of the image's low-res cells straight to the output size.
    """
    images, outs, low, pad = _sizes(outputs, image_sizes, output_sizes, padded_size, order)
    results = []
    for i, (img, out) in enumerate(zip(images, outs)):
        if "sem_seg" in outputs:
            resample = _fast_order if order == "fast" else postprocess_maps
            results.append(resample(outputs["sem_seg"][i], pad, img, out))
            continue
        probs = class_probs(outputs["pred_logits"][i])
        masks = outputs["pred_masks"][i]
        if order == "fast":
            results.append(_fast_order(torch.einsum("qk,qhw->khw", probs, masks.sigmoid()), pad, img, out))
            continue
        sem = 0
        step = max(1, CHUNK_ELEMS // (pad[0] * pad[1]))
        for q in range(0, masks.shape[0], step):
            m = masks[q : q + step]
            m = postprocess_maps(m, pad, img, out) if before_inference else _resize(m, pad)[:, : img[0], : img[1]]
            sem = sem + torch.einsum("qk,qhw->khw", probs[q : q + step], m.sigmoid())
        results.append(sem if before_inference else _resize(sem, out))
    return results


def _fast_order(x: torch.Tensor, pad: Size, img: Size, out: Size) -> torch.Tensor:
    """[K, h, w] low-res maps straight to [K, H, W], padding cropped, in one bilinear step (fp.fast_geometry)."""
    if img == pad:
        return _resize(x, out)
    (keep_h, sy), (keep_w, sx) = (fp.fast_geometry(x.shape[1 + a], pad[a], img[a], out[a]) for a in (0, 1))
    x = x[None, :, :keep_h, :keep_w]
    up = F.interpolate(x, scale_factor=(sy, sx), mode="bilinear", align_corners=False, recompute_scale_factor=False)
    return up[0, :, : out[0], : out[1]]


def semantic_labels(
    outputs: dict, image_sizes: Sequence[Size], output_sizes: Sequence[Size] | None = None, *,
    before_inference: bool = False, order: str = "official", padded_size: Size | None = None, fast: bool = False,
) -> list[torch.Tensor]:  # fmt: skip
    """argmax over classes of `semantic_inference(...)`: int64 [H, W] per image (ties: the lowest class id)."""
    if not fast:
        kw = {"before_inference": before_inference, "order": order, "padded_size": padded_size}
        return [scores.argmax(0) for scores in semantic_inference(outputs, image_sizes, output_sizes, **kw)]
    images, outs, low, pad = _sizes(outputs, image_sizes, output_sizes, padded_size, order)
    per_pixel = "sem_seg" in outputs
    maps = outputs["sem_seg" if per_pixel else "pred_masks"]
    probs = [None] * len(maps) if per_pixel else class_probs(outputs["pred_logits"])
    kw = {"order": order, "before_inference": before_inference}
    return [fp.semantic_labels(p, m, low, pad, img, out, **kw) for p, m, img, out in zip(probs, maps, images, outs)]


def panoptic_inference(
    outputs: dict, image_sizes: Sequence[Size], output_sizes: Sequence[Size] | None = None, *,
    thing_ids: Iterable[int], object_mask_threshold: float = 0.8, overlap_threshold: float = 0.8,
    meta: DatasetMeta | None = None, padded_size: Size | None = None, tile: int = 16, fast: bool = False,
    rule: str = "maskformer",
) -> list[tuple[torch.Tensor, list[dict]]]:  # fmt: skip
    """Official general/panoptic inference -> per image (ids int32 [H, W], segments_info).

    Mask logits are upsampled, cropped and resized to the output size before the sigmoid. Queries are kept when
    their best class is not no-object and its probability > object_mask_threshold (strict). Each pixel goes to the
    kept query with the largest score * sigmoid(mask) (ties: lowest query index). In query order, a query whose
    assigned area / area(sigmoid >= 0.5) < overlap_threshold is dropped (its pixels stay 0); stuff queries of a class
    already emitted join that segment; others get the next id (from 1). segments_info: {"id", "isthing",
    "category_id" (contiguous), "dataset_category_id" (meta.dataset_ids, else the contiguous id), "area" (pixels in
    the final map), "score" (the probability of the query that opened the segment)}. tile: fast path only.
    rule="maskformer" (the model's cfg.model.arch) paints every assigned pixel; rule="mask2former" (mask2former.md 5.4)
    only those where the query's sigmoid >= 0.5 (others stay 0), and drops a query with no such pixel.
    """
    if rule not in RULES:
        raise ValueError(f"rule={rule!r}; choose one of {', '.join(RULES)} (the model's architecture)")
    images, outs, low, pad = _sizes(outputs, image_sizes, output_sizes, padded_size, task="panoptic")
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
        m2f = rule == "mask2former"
        if fast:
            assign, orig_area, void = fp.panoptic_assign(m, s, low, pad, img, out, tile, find_void=m2f)
        else:
            sig = postprocess_maps(m, pad, img, out).sigmoid()  # [Qk, H, W]
            assign = (s[:, None, None] * sig).argmax(0)
            orig_area = (sig >= 0.5).sum((1, 2))
            void = sig.gather(0, assign[None])[0] < 0.5 if m2f else None  # assigned query's sigmoid < 0.5
        area = torch.bincount(assign.flatten(), minlength=len(s))
        painted = area if void is None else torch.bincount(assign[~void], minlength=len(s))
        counts = [t.tolist() for t in (c, s, area, orig_area, painted)]
        lut, segments = _segments(*counts, things, overlap_threshold)
        ids = torch.tensor(lut, dtype=torch.int32, device=assign.device)[assign]
        if void is not None:
            ids.masked_fill_(void, 0)
        areas = torch.bincount(ids.flatten().long(), minlength=len(segments) + 1).tolist()
        for seg in segments:
            seg["area"] = areas[seg["id"]]
            seg["dataset_category_id"] = int(meta.dataset_ids[seg["category_id"]]) if meta else seg["category_id"]
        results.append((ids, segments))
    return results


def _segments(classes, scores, areas, orig_areas, painted, things, overlap_threshold) -> tuple[list[int], list[dict]]:
    """The official per-query loop on scalars -> (segment id per kept query, 0 = dropped; segments_info). Per query:
    areas assigned pixels, orig_areas sigmoid >= 0.5, painted what it would paint (Mask2Former: both, else = areas)."""
    lut, segments, stuff_seen = [0] * len(classes), [], {}
    for k, (c, score, area, orig, paint) in enumerate(zip(classes, scores, areas, orig_areas, painted)):
        if area == 0 or orig == 0 or paint == 0 or area / orig < overlap_threshold:
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


@dataclass
class Instances:
    """Instances of one image, best first: masks bool [N, H, W], scores float [N], labels int64 [N] (contiguous)."""

    masks: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.scores)


def instance_inference(
    outputs: dict, image_sizes: Sequence[Size], output_sizes: Sequence[Size] | None = None, *,
    thing_ids: Iterable[int] | None = None, topk: int = 100, padded_size: Size | None = None, tile: int = 32,
    fast: bool = False,
) -> list[Instances]:  # fmt: skip
    """Mask2Former's instance rule -> per image `Instances`, best first (stable sort by score); tile: fast path only.

    The top-k (query, class) pairs of the flattened Q x K class probabilities (no-object excluded); with thing_ids,
    pairs of other classes are then dropped (as in panoptic models). Mask = resampled logit > 0 (upsampled, cropped
    and resized bilinearly); score = class probability x mean sigmoid inside the mask (sum / (area + 1e-6)).
    """
    images, outs, low, pad = _sizes(outputs, image_sizes, output_sizes, padded_size, task="instance")
    results = []
    for i, (img, out) in enumerate(zip(images, outs)):
        probs = class_probs(outputs["pred_logits"][i])  # [Q, K]
        scores, idx = probs.flatten().topk(min(topk, probs.numel()))
        labels, queries = idx % probs.shape[1], idx // probs.shape[1]
        if thing_ids is not None:
            is_thing = torch.isin(labels, torch.as_tensor(list(thing_ids), dtype=labels.dtype, device=labels.device))
            scores, labels, queries = scores[is_thing], labels[is_thing], queries[is_thing]
        uq, inv = torch.unique(queries, return_inverse=True)  # masks are computed once per query
        m = outputs["pred_masks"][i][uq]
        if fast:
            mean_sigmoid, paint = fp.instance_masks(m, low, pad, img, out, tile)
        else:
            logit = postprocess_maps(m, pad, img, out)  # [U, H, W]
            binary = logit > 0
            mean_sigmoid = (logit.sigmoid() * binary).sum((1, 2)) / (binary.sum((1, 2)) + 1e-6)
            paint = binary.__getitem__
        scores = scores * mean_sigmoid[inv]
        order = scores.argsort(descending=True, stable=True)
        results.append(Instances(paint(inv[order]), scores[order], labels[order]))
    return results
