"""Post-processing of one image's exported (ONNX) outputs, numpy in and out: pred_logits [Q, K+1], pred_masks
[Q, Hp/4, Wp/4] through the same code as `maskformer.inference` (identical results)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from maskformer import inference

Size = tuple[int, int]


def resize_bilinear(x: np.ndarray, size: Size) -> np.ndarray:
    """x [..., h, w] -> float32 [..., H, W], bilinear (align_corners=False) as F.interpolate, computed in float64."""
    t = torch.from_numpy(np.asarray(x, dtype=np.float64))
    return inference._resize(t.reshape(-1, *t.shape[-2:]), tuple(size)).reshape(*t.shape[:-2], *size).float().numpy()


def _batch(pred_logits: np.ndarray, pred_masks: np.ndarray) -> dict:
    """One image's arrays -> a float32 torch batch of one."""
    arrays = {"pred_logits": pred_logits, "pred_masks": pred_masks}
    return {k: torch.from_numpy(np.asarray(a, dtype=np.float32))[None] for k, a in arrays.items()}


def semantic_inference(
    pred_logits: np.ndarray, pred_masks: np.ndarray, image_size: Size, output_size: Size | None = None,
    padded_size: Size | None = None,
) -> np.ndarray:  # fmt: skip
    """One image -> official class scores [K, H, W] (argmax(0) = labels); padded_size defaults to 4 x the mask size,
    output_size to image_size."""
    out = None if output_size is None else [output_size]
    batch = _batch(pred_logits, pred_masks)
    return inference.semantic_inference(batch, [image_size], out, padded_size=padded_size)[0].numpy()


def panoptic_inference(
    pred_logits: np.ndarray, pred_masks: np.ndarray, image_size: Size, is_thing: Sequence[bool], *,
    output_size: Size | None = None, padded_size: Size | None = None, object_mask_threshold: float = 0.8,
    overlap_threshold: float = 0.8, dataset_ids: Sequence[int] | None = None, fast: bool = False,
    rule: str = "maskformer",
) -> tuple[np.ndarray, list[dict]]:  # fmt: skip
    """One image -> (segment id map int32 [H, W], 0 = void; segments_info as `maskformer.inference.panoptic_inference`
    with "dataset_category_id" = `dataset_ids[c]`, else c). rule: the exported model's architecture."""
    ids, segments = inference.panoptic_inference(
        _batch(pred_logits, pred_masks), [image_size], None if output_size is None else [output_size],
        thing_ids=[c for c, thing in enumerate(is_thing) if thing], object_mask_threshold=object_mask_threshold,
        overlap_threshold=overlap_threshold, padded_size=padded_size, fast=fast, rule=rule,
    )[0]  # fmt: skip
    for s in segments:
        s["dataset_category_id"] = int(dataset_ids[s["category_id"]]) if dataset_ids is not None else s["category_id"]
    return ids.numpy(), segments
