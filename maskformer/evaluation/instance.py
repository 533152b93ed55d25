"""Instance-segmentation mask AP (COCO protocol) through pycocotools, an optional dependency ("coco" extra).

Masks are run-length encoded per image as they arrive, so memory stays small; compute() runs COCOeval(iouType="segm")
and returns AP, AP50, AP75, APs, APm, APl as fractions (-1 where COCO leaves a value undefined) plus per-class AP.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import numpy as np

from maskformer.io import to_numpy

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _pycocotools():
    try:
        from pycocotools import coco, cocoeval, mask
    except ImportError:
        raise ImportError(
            "instance mask AP needs pycocotools: pip install 'maskformer[coco]' (or pip install pycocotools)"
        ) from None
    return coco, cocoeval, mask


class InstanceEvaluator:
    """Streaming COCO mask AP.

    categories: dicts {"id", "name"} (dataset category ids; the ones predictions and GT use).
    update(...): per image, pred_masks bool [N, h, w], pred_scores float [N], pred_labels int [N] (category ids);
    gt_masks bool [T, h, w], gt_labels int [T], gt_iscrowd [T] (optional).
    """

    def __init__(self, categories: Sequence[dict]) -> None:
        self._coco, self._cocoeval, self._mask = _pycocotools()
        self.categories = [dict(c) for c in categories]
        self._known = {int(c["id"]) for c in self.categories}
        self.reset()

    def reset(self) -> None:
        self._images: list[dict] = []
        self._gts: list[dict] = []
        self._dets: list[dict] = []

    def update(
        self, *, pred_masks, pred_scores, pred_labels, gt_masks, gt_labels, gt_iscrowd=None, image_id=None
    ) -> None:
        """Add one image (numpy arrays or tensors); image_id defaults to a running index."""
        image_id = len(self._images) if image_id is None else image_id
        pm, gm = _masks(pred_masks, image_id, "prediction"), _masks(gt_masks, image_id, "ground truth")
        if pm.shape[1:] != gm.shape[1:] and len(pm) and len(gm):
            raise ValueError(f"image {image_id}: predicted masks {pm.shape[1:]} != ground-truth masks {gm.shape[1:]}")
        h, w = gm.shape[1:] if len(gm) else pm.shape[1:]
        g_labels, p_labels = self._labels(gt_labels, len(gm), image_id), self._labels(pred_labels, len(pm), image_id)
        crowd = np.zeros(len(gm), dtype=bool) if gt_iscrowd is None else to_numpy(gt_iscrowd).astype(bool).reshape(-1)
        scores = to_numpy(pred_scores).astype(np.float64).reshape(-1)
        if len(crowd) != len(gm) or len(scores) != len(pm):
            raise ValueError(
                f"image {image_id}: {len(crowd)} iscrowd flags / {len(scores)} scores for {len(gm)} / {len(pm)} masks"
            )
        self._images.append({"id": image_id, "height": int(h), "width": int(w)})
        for rle, label, c in zip(self._encode(gm), g_labels, crowd):
            self._gts.append({"image_id": image_id, "category_id": label, "iscrowd": int(c), **rle})
        for rle, label, s in zip(self._encode(pm), p_labels, scores):
            self._dets.append({"image_id": image_id, "category_id": label, "score": float(s), **rle})

    def _labels(self, labels, n: int, image_id) -> list[int]:
        out = [int(v) for v in to_numpy(labels).reshape(-1)]
        if len(out) != n:
            raise ValueError(f"image {image_id}: {len(out)} labels for {n} masks")
        unknown = sorted(set(out) - self._known)
        if unknown:
            raise ValueError(f"image {image_id}: unknown category ids {unknown}")
        return out

    def _encode(self, masks: np.ndarray) -> list[dict]:
        """bool [N, h, w] -> [{"segmentation": RLE, "area", "bbox"}] (COCO's fields for a mask annotation)."""
        if len(masks) == 0:
            return []
        rles = self._mask.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))  # [h, w, N] F-order
        areas, boxes = self._mask.area(rles), self._mask.toBbox(rles)
        return [{"segmentation": r, "area": float(a), "bbox": b.tolist()} for r, a, b in zip(rles, areas, boxes)]

    def record_additions(self) -> None:
        """Nothing to do: the state is the per-image lists themselves (the semantic / panoptic evaluators' API)."""

    def state(self) -> dict:
        """The images, ground-truth and detection entries so far, for `merge_state` in another process."""
        return {"images": list(self._images), "gts": list(self._gts), "dets": list(self._dets)}

    def merge_state(self, state: dict) -> None:
        """Append a `state()`: merging consecutive blocks of a dataset in block order gives one pass's lists."""
        self._images.extend(state["images"])
        self._gts.extend(state["gts"])
        self._dets.extend(state["dets"])

    def compute(self) -> dict:
        """{"AP", "AP50", "AP75", "APs", "APm", "APl", "per_class": {cat_id: {name, ap}}} as fractions."""
        ev = self._cocoeval.COCOeval(self._dataset(self._gts), self._dataset(self._dets), iouType="segm")
        with contextlib.redirect_stdout(io.StringIO()):
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        out = {name: float(v) for name, v in zip(STAT_NAMES, ev.stats[:6])}
        precision = ev.eval["precision"][:, :, :, 0, -1]  # [T iou, R recall, K class] (all areas, 100 detections)
        aps = [float(p[p > -1].mean()) if (p > -1).any() else -1.0 for p in precision.transpose(2, 0, 1)]  # per class
        names = {int(c["id"]): c.get("name", str(c["id"])) for c in self.categories}
        out["per_class"] = {cat_id: {"name": names[cat_id], "ap": ap} for cat_id, ap in zip(ev.params.catIds, aps)}
        out["num_images"] = len(self._images)
        return out

    def _dataset(self, anns: list[dict]):
        """A pycocotools COCO object holding `anns` (ids from 1), built without its prints."""
        coco = self._coco.COCO()
        annotations = [{**a, "id": i + 1} for i, a in enumerate(anns)]
        coco.dataset = {"images": self._images, "categories": self.categories, "annotations": annotations}
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco


def _masks(masks, image_id, what: str) -> np.ndarray:
    m = to_numpy(masks)
    if m.ndim != 3:
        raise ValueError(f"image {image_id}: {what} masks must be [N, h, w], got shape {m.shape}")
    return m.astype(bool, copy=False)
