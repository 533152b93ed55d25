"""Prediction files in the standard formats, in numpy (no pycocotools).

- Semantic: a label PNG per image (contiguous ids, or the dataset's ids), uint8 or uint16.
- Panoptic: COCO panoptic format: a PNG per image with id = R + 256 G + 256^2 B (0 = VOID) and one JSON with
  "annotations" [{"image_id", "file_name", "segments_info": [{"id", "category_id", "area", "bbox", "iscrowd"}]}] and
  "categories" [{"id", "name", "isthing", "color"}]; category ids are the dataset's ids.
- Instance: a COCO results list [{"image_id", "category_id", "segmentation": RLE, "score", "bbox", "area"}] with
  compressed RLE strings (column-major runs starting with 0s, COCO's 5-bit/char encoding); `rle_decode` reads them back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from maskformer.data.io import save_json, write_label, write_panoptic
from maskformer.inference import Instances
from maskformer.structures import DatasetMeta


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


# ------------------------------------------------------------------------------------------------ semantic
def write_semantic(path: str | Path, labels, meta: DatasetMeta | None = None, *, dataset_ids: bool = False) -> None:
    """Label map int [H, W] (contiguous ids) -> PNG; dataset_ids=True writes meta.dataset_ids[label] instead."""
    labels = _np(labels).astype(np.int64)
    if dataset_ids:
        if meta is None:
            raise ValueError(f"{path}: dataset_ids=True needs a DatasetMeta")
        labels = np.asarray(meta.dataset_ids, dtype=np.int64)[labels]
    write_label(path, labels)


# ------------------------------------------------------------------------------------------------ panoptic
def bboxes(ids: np.ndarray, n: int) -> np.ndarray:
    """COCO boxes [x, y, w, h] of ids 0..n in an id map [H, W] (zeros for absent ids): int64 [n + 1, 4]."""
    ids = ids.astype(np.int64)
    y_idx, x_idx = np.indices(ids.shape)
    out = np.zeros((n + 1, 4), dtype=np.int64)
    for coord, lo_col, size_col in ((x_idx, 0, 2), (y_idx, 1, 3)):
        present = np.zeros((n + 1, ids.shape[1] if lo_col == 0 else ids.shape[0]), dtype=bool)
        present[ids, coord] = True  # [n + 1, W or H]: which columns / rows hold each id
        has = present.any(1)
        first = present.argmax(1)
        last = present.shape[1] - 1 - present[:, ::-1].argmax(1)
        out[has, lo_col] = first[has]
        out[has, size_col] = (last - first + 1)[has]
    return out


def panoptic_annotation(ids, segments: list[dict], *, image_id, file_name: str) -> dict:
    """COCO panoptic annotation for one id map int [H, W] and its segments_info (from panoptic_inference)."""
    ids = _np(ids).astype(np.int64)
    n = int(ids.max(initial=0))
    areas = np.bincount(ids.ravel(), minlength=n + 1)
    boxes = bboxes(ids, n)
    info = []
    for seg in segments:
        i = int(seg["id"])
        if i < 1 or i > n or areas[i] == 0:
            continue  # never painted (cannot happen with panoptic_inference's output)
        info.append(
            {
                "id": i,
                "category_id": int(seg.get("dataset_category_id", seg["category_id"])),
                "area": int(areas[i]),
                "bbox": [int(v) for v in boxes[i]],
                "iscrowd": 0,
            }
        )
    return {"image_id": image_id, "file_name": file_name, "segments_info": info}


def write_panoptic_png(path: str | Path, ids) -> None:
    """id map int [H, W] -> COCO panoptic RGB PNG."""
    write_panoptic(path, _np(ids))


def coco_categories(meta: DatasetMeta) -> list[dict]:
    """The "categories" list of a COCO panoptic JSON, with the dataset's ids."""
    return [
        {"id": int(d), "name": name, "isthing": int(t), "color": list(c)}
        for d, name, t, c in zip(meta.dataset_ids, meta.class_names, meta.is_thing, meta.palette)
    ]


def write_panoptic_json(path: str | Path, annotations: list[dict], meta: DatasetMeta) -> None:
    save_json(path, {"annotations": annotations, "categories": coco_categories(meta)})


# ------------------------------------------------------------------------------------------------ RLE
def rle_counts(mask) -> np.ndarray:
    """Column-major run lengths of bool [H, W], starting with a (possibly empty) run of 0s: int64 [R]."""
    flat = _np(mask).astype(bool).T.ravel()  # column-major, as COCO
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds)
    if flat.size and flat[0]:
        counts = np.concatenate([[0], counts])
    return counts


def _encode_counts(counts: np.ndarray) -> str:
    """COCO's compressed string: each count (minus the one two back, from the third on) in 5-bit groups."""
    chars = []
    for i, x in enumerate(counts.tolist()):
        if i > 2:
            x -= int(counts[i - 2])
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            chars.append(chr(c + 48 + (0x20 if more else 0)))
    return "".join(chars)


def rle_encode(mask) -> dict:
    """bool [H, W] -> {"size": [H, W], "counts": compressed string} (COCO RLE)."""
    mask = _np(mask)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": _encode_counts(rle_counts(mask))}


def rle_decode(rle: dict) -> np.ndarray:
    """COCO RLE (compressed string or list of counts) -> bool [H, W]."""
    h, w = rle["size"]
    counts = rle["counts"]
    if isinstance(counts, str | bytes):
        counts = _decode_string(counts.decode() if isinstance(counts, bytes) else counts)
    values = np.arange(len(counts)) % 2 == 1  # runs alternate 0s, 1s, ...
    flat = np.repeat(values, counts)
    if flat.size != h * w:
        raise ValueError(f"RLE covers {flat.size} pixels, expected {h} x {w}")
    return flat.reshape(w, h).T


def _decode_string(s: str) -> list[int]:
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def mask_bbox(mask: np.ndarray) -> list[int]:
    """[x, y, w, h] of a bool mask ([0, 0, 0, 0] when empty)."""
    ys, xs = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if len(ys) == 0:
        return [0, 0, 0, 0]
    return [int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)]


def instance_results(instances: Instances, *, image_id, meta: DatasetMeta | None = None) -> list[dict]:
    """COCO instance results for one image (category ids = meta.dataset_ids, else contiguous)."""
    out = []
    for mask, score, label in zip(_np(instances.masks), _np(instances.scores), _np(instances.labels)):
        c = int(label)
        out.append(
            {
                "image_id": image_id,
                "category_id": int(meta.dataset_ids[c]) if meta is not None else c,
                "segmentation": rle_encode(mask),
                "score": float(score),
                "bbox": mask_bbox(mask),
                "area": int(mask.sum()),
            }
        )
    return out
