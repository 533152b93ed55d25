"""Generated evaluation data for the tests: COCO panoptic PNG + JSON writers, random datasets, panopticapi oracle."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

CATEGORIES = [  # non-contiguous dataset ids; things and stuff mixed
    {"id": 1, "isthing": 1, "name": "person"},
    {"id": 3, "isthing": 1, "name": "car"},
    {"id": 7, "isthing": 1, "name": "dog"},
    {"id": 8, "isthing": 1, "name": "cup"},
    {"id": 20, "isthing": 0, "name": "sky"},
    {"id": 21, "isthing": 0, "name": "road"},
    {"id": 40, "isthing": 0, "name": "wall"},
    {"id": 41, "isthing": 0, "name": "grass"},
]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids, dtype=np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], -1).astype(np.uint8)


def write_panoptic(root: Path, name: str, images: list[tuple], categories=CATEGORIES) -> Path:
    """images: (image_id, id map [h, w], segments_info) -> root/name.json + root/name/<image_id>.png."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    anns = []
    for image_id, ids, segs in images:
        file_name = f"{image_id}.png"
        Image.fromarray(id2rgb(ids)).save(folder / file_name)
        anns.append({"image_id": image_id, "file_name": file_name, "segments_info": [dict(s) for s in segs]})
    path = root / f"{name}.json"
    path.write_text(json.dumps({"annotations": anns, "categories": categories, "images": []}))
    return path


def panopticapi_stats(gt_json: Path, pred_json: Path, gt_folder=None, pred_folder=None) -> tuple[dict, dict]:
    """panopticapi in one process: (pq_compute-like results, None for an n = 0 split; {cat: (tp, fp, fn, iou)})."""
    from panopticapi.evaluation import pq_compute_single_core

    gt, pred = json.loads(gt_json.read_text()), json.loads(pred_json.read_text())
    categories = {c["id"]: c for c in gt["categories"]}
    preds = {a["image_id"]: a for a in pred["annotations"]}
    pairs = [(a, preds[a["image_id"]]) for a in gt["annotations"]]
    with contextlib.redirect_stdout(io.StringIO()):
        folders = (str(gt_folder or str(gt_json)[:-5]), str(pred_folder or str(pred_json)[:-5]))
        stat = pq_compute_single_core(0, pairs, *folders, categories)
    results = {}
    for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
        try:
            results[name], per_class = stat.pq_average(categories, isthing=isthing)
        except ZeroDivisionError:
            results[name], per_class = None, None
        if name == "All":
            results["per_class"] = per_class
    counts = {c: (s.tp, s.fp, s.fn, s.iou) for c, s in stat.pq_per_cat.items()}
    return results, counts


def _paint_rects(rng, canvas: np.ndarray, ids: list[int], min_frac: float, max_frac: float) -> None:
    h, w = canvas.shape
    for i in ids:
        rh, rw = (max(1, int(s * rng.uniform(min_frac, max_frac))) for s in (h, w))
        y, x = rng.integers(0, h - rh + 1), rng.integers(0, w - rw + 1)
        canvas[y : y + rh, x : x + rw] = i


def random_panoptic_image(rng: np.random.Generator, image_id: int, h: int = 24, w: int = 32) -> tuple:
    """One (image_id, gt ids, gt segments, pred ids, pred segments) exercising the rules on random geometry.

    GT: stuff rectangles, thing rectangles, crowd, VOID, an unlisted id, JSON areas sometimes off.
    Prediction: the GT perturbed (pixel noise, VOID holes, merged/split/relabelled segments, spurious segments),
    with small sequential ids or large colour ids.
    """
    things = [c["id"] for c in CATEGORIES if c["isthing"] and c["id"] != 8]  # cup (8) only ever predicted
    stuff = [c["id"] for c in CATEGORIES if not c["isthing"] and c["id"] != 41]  # grass (41) only in GT below
    big = image_id % 2 == 0
    pool = rng.choice((1 << 24) - 1, 40, replace=False) + 1 if big else np.arange(1, 41)
    gt = np.zeros((h, w), dtype=np.int64)
    n_stuff, n_things = rng.integers(1, 4), rng.integers(1, 6)
    ids = [int(v) for v in pool[: n_stuff + n_things + 1]]
    _paint_rects(rng, gt, ids[:n_stuff], 0.4, 1.0)
    _paint_rects(rng, gt, ids[n_stuff:-1], 0.15, 0.5)
    _paint_rects(rng, gt, ids[-1:], 0.1, 0.2)  # the last id stays unlisted (PNG only)
    cats = list(rng.choice(stuff, n_stuff, replace=False)) + list(rng.choice(things, n_things))
    if image_id % 3 == 0:
        cats[0] = 41
    segs = []
    for i, c in zip(ids[:-1], cats):
        area = int((gt == i).sum())
        crowd = int(c in things and rng.random() < 0.25)
        off = int(rng.integers(1, 6)) if rng.random() < 0.1 else 0
        segs.append({"id": i, "category_id": int(c), "iscrowd": crowd, "area": area + off})
    pred, pred_segs = _perturb(rng, gt, segs, image_id)
    return image_id, gt, segs, pred, pred_segs


def _perturb(rng, gt: np.ndarray, segs: list[dict], image_id: int) -> tuple[np.ndarray, list[dict]]:
    h, w = gt.shape
    src = {s["id"]: s["category_id"] for s in segs}
    labels = np.zeros_like(gt)  # prediction label = GT id (0 = VOID), then perturbed
    for i in src:
        labels[gt == i] = i
    noise = rng.random((h, w)) < rng.uniform(0.0, 0.3)
    labels[noise] = np.roll(labels, int(rng.integers(1, 4)), axis=int(rng.integers(0, 2)))[noise]
    hole = rng.random() < 0.5
    if hole:
        _paint_rects(rng, labels, [0], 0.1, 0.4)
    cat = dict(src)
    keys = list(src)
    if len(keys) >= 2 and rng.random() < 0.3:  # merge two segments
        labels[labels == keys[1]] = keys[0]
    if rng.random() < 0.3:  # split one segment in two halves
        half = np.zeros_like(labels, dtype=bool)
        half[:, : w // 2] = True
        labels[(labels == keys[0]) & half] = 10**9
        cat[10**9] = cat[keys[0]]
    if rng.random() < 0.3:  # wrong category
        cat[keys[-1]] = int(rng.choice([c["id"] for c in CATEGORIES]))
    if rng.random() < 0.4:  # spurious segment, sometimes the predicted-only category
        _paint_rects(rng, labels, [10**9 + 1], 0.1, 0.3)
        cat[10**9 + 1] = 8 if rng.random() < 0.5 else int(rng.choice([c["id"] for c in CATEGORIES]))
    present = [int(v) for v in np.unique(labels) if v != 0]
    new_ids = np.arange(1, len(present) + 1) if image_id % 3 else rng.choice((1 << 24) - 1, len(present), False) + 1
    pred = np.zeros_like(labels)
    for old, new in zip(present, new_ids):
        pred[labels == old] = new
    pred_segs = [{"id": int(new), "category_id": int(cat[old])} for old, new in zip(present, new_ids)]
    return pred, pred_segs


def same_results(a: dict, b: dict) -> bool:
    """Exact equality of two result dicts, NaN equal to NaN (floats compared through their repr)."""
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def semantic_reference(pairs, k: int, ignore: int) -> dict:
    """The metrics written from their definitions with one boolean mask per class, in float64."""
    tp, gt_n, pred_n = np.zeros(k), np.zeros(k), np.zeros(k)
    for pred, gt in pairs:
        valid = gt != ignore
        for c in range(k):
            tp[c] += float(np.sum((gt == c) & (pred == c) & valid))
            gt_n[c] += float(np.sum(gt == c))
            pred_n[c] += float(np.sum((pred == c) & valid))
    union = gt_n + pred_n - tp
    iou = [tp[c] / union[c] if union[c] > 0 else math.nan for c in range(k)]
    acc = [tp[c] / gt_n[c] if gt_n[c] > 0 else math.nan for c in range(k)]
    in_union, in_gt = [c for c in range(k) if union[c] > 0], [c for c in range(k) if gt_n[c] > 0]
    return {
        "iou": iou,
        "acc": acc,
        "mIoU": sum(iou[c] for c in in_union) / len(in_union),
        "mIoU_gt": sum(iou[c] for c in in_gt) / len(in_gt),
        "mACC": sum(acc[c] for c in in_gt) / len(in_gt),
        "pACC": tp.sum() / gt_n.sum(),
        "fwIoU": sum(iou[c] * gt_n[c] for c in in_gt) / gt_n.sum(),
    }
