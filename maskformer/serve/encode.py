"""A `Prediction` -> the response body of each output format of POST /predict.

- "segments" (JSON): {"task", "height", "width", "segments": [{id, label, label_id, score, area, bbox, rle}]}
  with COCO RLE masks (pycocotools.mask.decode reads them) and COCO boxes [x, y, w, h]. `id` is the segment's value
  in the "png" output: the class id (semantic), the panoptic segment id, or the instance's rank + 1.
- "pipeline" (JSON): transformers' image-segmentation pipeline output [{label, score, mask?}], the mask a base64 PNG
  (mode L, 255 inside) when asked for.
- "png": the label PNG (semantic, 8-bit, or 16-bit past 255 classes), the COCO panoptic PNG (id = R + 256 G +
  256^2 B), or an instance-id PNG (rank + 1, higher scores painted over lower ones); header X-Segments lists the
  segments as [{id, label_id, score}].
Semantic segments have score null (the label map carries no per-class score); instances below `threshold` are left out.
"""

from __future__ import annotations

import base64
import json

import numpy as np

from maskformer.io import id2rgb, image_bytes, label_pixels, mask_bbox, rle_encode
from maskformer.pipeline import Prediction, regions
from maskformer.structures import DatasetMeta

FORMATS = ("segments", "pipeline", "png")
FAST = 1  # PNG compression level of responses: they are sent, not stored


def segments_json(pred: Prediction, task: str, meta: DatasetMeta, threshold: float) -> dict:
    h, w = pred.image_size
    segments = [
        {"id": r.id, "label": meta.class_names[r.label_id], "label_id": r.label_id, "score": r.score,
         "area": int(r.mask.sum()), "bbox": mask_bbox(r.mask), "rle": rle_encode(r.mask)}
        for r in regions(pred, threshold)
    ]  # fmt: skip
    return {"task": task, "height": int(h), "width": int(w), "segments": segments}


def pipeline_json(pred: Prediction, meta: DatasetMeta, threshold: float, masks: bool) -> list[dict]:
    out = []
    for r in regions(pred, threshold):
        entry = {"label": meta.class_names[r.label_id], "score": r.score}
        if masks:
            entry["mask"] = base64.b64encode(image_bytes(r.mask.astype(np.uint8) * 255, compress_level=FAST)).decode()
        out.append(entry)
    return out


def prediction_png(pred: Prediction, threshold: float) -> tuple[bytes, list[dict]]:
    """(PNG bytes, [{id, label_id, score}]) of the "png" format."""
    found = regions(pred, threshold)
    listed = [{"id": r.id, "label_id": r.label_id, "score": r.score} for r in found]
    if pred.semantic is not None:
        return image_bytes(label_pixels(pred.semantic), compress_level=FAST), listed
    if pred.panoptic is not None:
        return image_bytes(id2rgb(pred.panoptic), compress_level=FAST), listed
    ids = np.zeros(pred.image_size, dtype=np.int32)
    for r in reversed(found):  # lowest score first, so better instances end up on top
        ids[r.mask] = r.id
    return image_bytes(label_pixels(ids), compress_level=FAST), listed


def encode(pred: Prediction, *, task: str, fmt: str, meta: DatasetMeta, threshold: float, masks: bool):
    """-> (body bytes, media type, extra headers)."""
    if fmt == "png":
        body, listed = prediction_png(pred, threshold)
        return body, "image/png", {"X-Segments": json.dumps(listed, separators=(",", ":"))}
    if fmt == "pipeline":
        obj = pipeline_json(pred, meta, threshold, masks)
    else:
        obj = segments_json(pred, task, meta, threshold)
    return json.dumps(obj, allow_nan=False).encode(), "application/json", {}
