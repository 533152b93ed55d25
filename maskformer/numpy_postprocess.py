"""Post-processing in plain numpy, for users of the exported (ONNX) graph who do not want torch at run time.

The exported graph returns, per image, `pred_logits` [Q, K+1] and `pred_masks` [Q, Hp/4, Wp/4] (mask logits at a quarter
of the padded input). These functions apply the official rules (reference notes section 5), identical to
`maskformer.inference`:
- semantic: upsample the mask logits x4 to the padded size, marginalize softmax(class)[:, :K] x sigmoid(mask) over
  the queries, crop the padding, resize to the output size -> scores [K, H, W];
- panoptic: upsample, crop and resize the mask logits first, then keep queries whose best class is not "no object"
  with score > object_mask_threshold, assign each pixel to argmax_q score_q * sigmoid(mask_q), drop segments whose
  visible area is < overlap_threshold of their own (mask >= 0.5) area, and merge stuff of one class -> id map + info.
Bilinear resizing matches `torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _source_index(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i0, i1, frac) for 1-D linear resampling in_size -> out_size with half-pixel centres (align_corners=False)."""
    scale = in_size / out_size
    src = np.maximum((np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(src.astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    return i0, i1, (src - i0).astype(np.float32)


def resize_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """x [..., h, w] -> [..., H, W] by bilinear interpolation (align_corners=False), float32."""
    x = np.asarray(x, dtype=np.float32)
    (h, w), (H, W) = x.shape[-2:], size
    if (h, w) == (H, W):
        return x
    i0, i1, f = _source_index(H, h)
    x = x[..., i0, :] * (1 - f)[:, None] + x[..., i1, :] * f[:, None]  # [..., H, w]
    j0, j1, g = _source_index(W, w)
    return x[..., j0] * (1 - g) + x[..., j1] * g  # [..., H, W]


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp(-x) = inf for x << 0 gives the right limit, 0
        return 1.0 / (1.0 + np.exp(-x))


def postprocess_masks(
    masks: np.ndarray, padded_size: tuple[int, int], image_size: tuple[int, int], output_size: tuple[int, int]
) -> np.ndarray:
    """masks [C, h, w] at 1/4 -> [C, *output_size]: upsample to the padded size, crop to image_size, resize."""
    x = resize_bilinear(masks, padded_size)
    x = x[:, : image_size[0], : image_size[1]]
    return resize_bilinear(x, output_size)


def semantic_inference(
    pred_logits: np.ndarray,
    pred_masks: np.ndarray,
    image_size: tuple[int, int],
    output_size: tuple[int, int] | None = None,
    padded_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """One image: pred_logits [Q, K+1], pred_masks [Q, h, w] -> class scores [K, H, W] (argmax(0) = label map).

    padded_size defaults to 4 x the mask size; output_size to image_size.
    """
    padded_size = padded_size or (4 * pred_masks.shape[-2], 4 * pred_masks.shape[-1])
    output_size = output_size or image_size
    masks = sigmoid(resize_bilinear(pred_masks, padded_size))  # [Q, Hp, Wp]
    probs = softmax(pred_logits.astype(np.float32))[:, :-1]  # [Q, K]
    scores = np.einsum("qk,qhw->khw", probs, masks, optimize=True)  # [K, Hp, Wp]
    scores = scores[:, : image_size[0], : image_size[1]]
    return resize_bilinear(scores, output_size)


def panoptic_inference(
    pred_logits: np.ndarray,
    pred_masks: np.ndarray,
    image_size: tuple[int, int],
    is_thing: Sequence[bool],
    *,
    output_size: tuple[int, int] | None = None,
    padded_size: tuple[int, int] | None = None,
    object_mask_threshold: float = 0.8,
    overlap_threshold: float = 0.8,
    dataset_ids: Sequence[int] | None = None,
) -> tuple[np.ndarray, list[dict]]:
    """One image -> (segment id map int32 [H, W] with 0 = void, segments_info).

    `is_thing[c]` says whether contiguous class c is a thing. Ids start at 1, in query order. segments_info entries:
    {"id", "isthing", "category_id" (contiguous), "dataset_category_id" (`dataset_ids[c]`, else c), "area" (pixels
    in the map), "score" (probability of the query that opened the segment)}, as `maskformer.inference`.
    """
    padded_size = padded_size or (4 * pred_masks.shape[-2], 4 * pred_masks.shape[-1])
    output_size = output_size or image_size
    num_classes = pred_logits.shape[-1] - 1
    probs = softmax(pred_logits.astype(np.float32))
    scores, labels = probs.max(-1), probs.argmax(-1)
    keep = (labels != num_classes) & (scores > object_mask_threshold)
    seg = np.zeros(output_size, dtype=np.int32)
    if not keep.any():
        return seg, []
    masks = sigmoid(postprocess_masks(pred_masks[keep], padded_size, image_size, output_size))  # [N, H, W]
    scores, labels = scores[keep], labels[keep]
    owner = (scores[:, None, None] * masks).argmax(0)  # [H, W], index into the kept queries
    segments: list[dict] = []
    stuff_ids: dict[int, int] = {}
    for k, (score, label) in enumerate(zip(scores.tolist(), labels.tolist())):
        mask = owner == k
        area, original = int(mask.sum()), int((masks[k] >= 0.5).sum())
        if area == 0 or original == 0 or area / original < overlap_threshold:
            continue
        thing = bool(is_thing[label])
        if not thing and label in stuff_ids:
            seg[mask] = stuff_ids[label]
            continue
        new_id = len(segments) + 1
        seg[mask] = new_id
        if not thing:
            stuff_ids[label] = new_id
        segments.append({"id": new_id, "isthing": thing, "category_id": int(label), "score": float(score)})
    areas = np.bincount(seg.ravel(), minlength=len(segments) + 1)
    for s in segments:
        s["area"] = int(areas[s["id"]])
        s["dataset_category_id"] = int(dataset_ids[s["category_id"]]) if dataset_ids is not None else s["category_id"]
    return seg, segments
