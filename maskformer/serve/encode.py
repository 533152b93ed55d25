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
import io as bytes_io
import json
from dataclasses import dataclass

import numpy as np
from PIL import Image

from maskformer.io import id2rgb, mask_bbox, rle_encode, to_numpy
from maskformer.pipeline import Prediction
from maskformer.structures import DatasetMeta

FORMATS = ("segments", "pipeline", "png")


@dataclass
class Segment:
    """One region of a prediction: mask bool [h, w]."""

    id: int
    label_id: int
    score: float | None
    mask: np.ndarray


def segments_of(pred: Prediction, threshold: float) -> list[Segment]:
    """The regions of a prediction in the order transformers' pipeline lists them (classes ascending, panoptic
    segments in order, instances best first with score >= threshold)."""
    if pred.semantic is not None:
        labels = to_numpy(pred.semantic)
        return [Segment(int(c), int(c), None, labels == c) for c in np.unique(labels)]
    if pred.panoptic is not None:
        ids = to_numpy(pred.panoptic)
        return [Segment(int(s["id"]), int(s["category_id"]), float(s["score"]), ids == s["id"]) for s in pred.segments]
    inst = pred.instances
    keep = [i for i, s in enumerate(to_numpy(inst.scores)) if s >= threshold]
    masks, scores, labels = to_numpy(inst.masks), to_numpy(inst.scores), to_numpy(inst.labels)
    return [Segment(r + 1, int(labels[i]), float(scores[i]), masks[i].astype(bool)) for r, i in enumerate(keep)]


def segments_json(pred: Prediction, task: str, meta: DatasetMeta, threshold: float) -> dict:
    h, w = pred.image_size
    segments = [
        {
            "id": s.id,
            "label": meta.class_names[s.label_id],
            "label_id": s.label_id,
            "score": s.score,
            "area": int(s.mask.sum()),
            "bbox": mask_bbox(s.mask),
            "rle": rle_encode(s.mask),
        }
        for s in segments_of(pred, threshold)
    ]
    return {"task": task, "height": int(h), "width": int(w), "segments": segments}


def pipeline_json(pred: Prediction, meta: DatasetMeta, threshold: float, masks: bool) -> list[dict]:
    out = []
    for s in segments_of(pred, threshold):
        entry = {"label": meta.class_names[s.label_id], "score": s.score}
        if masks:
            entry["mask"] = base64.b64encode(png_bytes(s.mask.astype(np.uint8) * 255)).decode("ascii")
        out.append(entry)
    return out


def prediction_png(pred: Prediction, threshold: float) -> tuple[bytes, list[dict]]:
    """(PNG bytes, [{id, label_id, score}]) of the "png" format."""
    segments = segments_of(pred, threshold)
    listed = [{"id": s.id, "label_id": s.label_id, "score": s.score} for s in segments]
    if pred.semantic is not None:
        labels = to_numpy(pred.semantic)
        return png_bytes(labels.astype(np.uint16 if labels.max(initial=0) > 255 else np.uint8)), listed
    if pred.panoptic is not None:
        return png_bytes(id2rgb(pred.panoptic)), listed
    ids = np.zeros(pred.image_size, dtype=np.uint16 if len(segments) > 255 else np.uint8)
    for s in reversed(segments):  # lowest score first, so better instances end up on top
        ids[s.mask] = s.id
    return png_bytes(ids), listed


def png_bytes(array: np.ndarray) -> bytes:
    """uint8 [h, w] / [h, w, 3] or uint16 [h, w] -> PNG file bytes (fast compression: it is sent, not stored)."""
    buf = bytes_io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


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
