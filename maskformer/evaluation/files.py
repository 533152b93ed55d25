"""Scoring prediction files against ground-truth files (formats: maskformer.io): folders of label maps matched by
file stem (semantic), or COCO panoptic JSON + PNG folders matched by image_id, categories from the GT JSON (panoptic).

Worker processes decode the PNGs and reduce each image to a small histogram (panoptic: [2+n_gt, 2+n_pred];
semantic: the non-zero entries of the [K+1, K] confusion counts); the main process only accumulates, in image order,
so the numbers equal the in-memory evaluators' exactly.
"""

from __future__ import annotations

import functools
import itertools
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from maskformer.evaluation.panoptic import PairCounter, PanopticEvaluator, segment_ids
from maskformer.evaluation.sem_seg import ConfusionCounter, SemSegEvaluator
from maskformer.io import LABEL_EXTS, FormatError, list_files, load_json, read_label, read_panoptic

# this process's reusable counters (lookup tables and buffers), built once per worker process and arguments
_pair_counter = functools.cache(PairCounter)
_confusion_counter = functools.cache(ConfusionCounter)


# ---------------------------------------------------------------------------------------------------- reading
def check_panoptic_json(data, path, what: str, keys=("annotations",)) -> None:
    """Clear errors (FormatError naming the file) for a COCO panoptic JSON missing its lists or per-image fields."""
    if not isinstance(data, dict):
        raise FormatError(f"{what} JSON {path} must be an object with an 'annotations' list, got {type(data).__name__}")
    for key in keys:
        if not isinstance(data.get(key), list):
            raise FormatError(f"{what} JSON {path} has no '{key}' list")
    for ann in data["annotations"]:
        if not isinstance(ann, dict):
            raise FormatError(f"{what} JSON {path}: an annotation is a {type(ann).__name__}, not an object")
        for key, kinds in (("image_id", (int, str)), ("file_name", str), ("segments_info", list)):
            if key not in ann:
                raise FormatError(f"{what} JSON {path}: an annotation lacks '{key}' (image_id {ann.get('image_id')})")
            if not isinstance(ann[key], kinds) or isinstance(ann[key], bool):
                raise FormatError(f"{what} JSON {path}: an annotation's '{key}' is {ann[key]!r:.60}")
        if not all(isinstance(seg, dict) for seg in ann["segments_info"]):
            raise FormatError(f"{what} JSON {path}: image {ann['image_id']!r}: segments_info must hold objects")
    for key in keys[1:]:
        if not all(isinstance(c, dict) and isinstance(c.get("id"), int) for c in data[key]):
            raise FormatError(f"{what} JSON {path}: every entry of '{key}' needs an integer 'id'")


def match_panoptic(gt_json: dict, pred_json: dict) -> list[tuple[dict, dict]]:
    """(GT annotation, prediction annotation) per GT image, the image ids being the ground truth's.

    A prediction belongs to the GT image with its image_id; when no GT image has that id (`maskformer predict`
    writes the input's file stem), to the GT image whose file stem (of the annotation's PNG or, in "images", of the
    photo) equals the stem of its file_name or its image_id. A prediction matching no GT image, two predictions for
    one image and a GT image without a prediction are errors naming them."""
    anns = gt_json["annotations"]
    by_id = {ann["image_id"]: ann for ann in anns}
    by_stem = {Path(ann["file_name"]).stem: ann["image_id"] for ann in anns}
    for image in gt_json.get("images", []) if isinstance(gt_json.get("images"), list) else []:
        image_id = image.get("id") if isinstance(image, dict) else None
        if isinstance(image_id, int | str) and image_id in by_id and isinstance(image.get("file_name"), str):
            by_stem.setdefault(Path(image["file_name"]).stem, image_id)
    preds, unmatched = {}, []
    for ann in pred_json["annotations"]:
        image_id = ann["image_id"]
        if image_id not in by_id:
            image_id = by_stem.get(Path(ann["file_name"]).stem, by_stem.get(str(ann["image_id"])))
        if image_id is None:
            unmatched.append(f"{ann['image_id']!r} ({ann['file_name']})")
        elif image_id in preds:
            raise FormatError(f"two predictions for the ground-truth image {image_id!r} (by image_id or file name)")
        else:
            preds[image_id] = ann
    if unmatched:
        shown = ", ".join(unmatched[:5]) + (" ..." if len(unmatched) > 5 else "")
        what = "prediction(s) match no ground-truth image by image_id or file name"
        raise FormatError(f"{len(unmatched)} {what}: {shown}")
    missing = [ann["image_id"] for ann in anns if ann["image_id"] not in preds]
    if missing:
        raise FormatError(f"no prediction for the ground-truth image(s) with image_id {missing[:10]}")
    return [(ann, preds[ann["image_id"]]) for ann in anns]


def _check_folders(gt_dir: Path, pred_dir: Path, kind: str = "") -> None:
    for d, what in ((gt_dir, "ground-truth"), (pred_dir, "prediction")):
        if not d.is_dir():
            raise FileNotFoundError(f"{what} {kind}folder {d} does not exist")


def match_semantic(gt_dir: str | Path, pred_dir: str | Path) -> list[tuple[str, Path, Path]]:
    """(stem, gt path, pred path) for every GT label map, predictions matched by file stem."""
    gt_dir, pred_dir = Path(gt_dir), Path(pred_dir)
    _check_folders(gt_dir, pred_dir)
    gts = list_files(gt_dir, LABEL_EXTS)
    if not gts:
        raise FormatError(f"ground-truth folder {gt_dir} has no label maps ({', '.join(LABEL_EXTS)})")
    preds = {p.stem: p for p in list_files(pred_dir, LABEL_EXTS)}
    missing = [p.stem for p in gts if p.stem not in preds]
    if missing:
        raise FormatError(f"no prediction in {pred_dir} for the ground-truth image(s) {missing[:10]}")
    return [(p.stem, p, preds[p.stem]) for p in gts]


def map_pairs(read: Callable, count: Callable, tasks: Iterable, workers: int | None) -> Iterator:
    """count(task, read(task)) over tasks, in order. `workers` > 0 (None: one a CPU, at most 8): that many worker
    processes (fork where available) each decode and count; otherwise this process counts while 2 threads decode
    ahead (threaded_reads)."""
    tasks = list(tasks)
    workers = min(8, os.cpu_count() or 1) if workers is None else workers
    if workers <= 0 or len(tasks) <= 1:
        yield from (count(task, pair) for task, pair in threaded_reads(read, tasks))
        return
    import multiprocessing as mp  # imported here: start-up of the in-process path stays short

    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    with mp.get_context(method).Pool(min(workers, len(tasks))) as pool:
        chunk = max(1, min(8, len(tasks) // (4 * workers)))
        yield from pool.imap(functools.partial(_read_and_count, read, count), tasks, chunksize=chunk)


def threaded_reads(read: Callable, tasks: Iterable, threads: int = 2, ahead: int = 4) -> Iterator[tuple]:
    """(task, read(task)) in order, `read` running up to `ahead` tasks ahead in `threads` threads of this process.

    PNG decoding (wuffs, libspng or Pillow) releases the GIL, so decoding overlaps itself and the caller's counting
    without worker processes (no fork, no pickling); at most `ahead` decoded pairs are held. A read's error is raised
    in order."""
    from concurrent.futures import ThreadPoolExecutor

    it, pending = iter(tasks), deque()
    with ThreadPoolExecutor(threads) as pool:
        for task in itertools.islice(it, ahead):
            pending.append((task, pool.submit(read, task)))
        while pending:
            task, future = pending.popleft()
            for nxt in itertools.islice(it, 1):
                pending.append((nxt, pool.submit(read, nxt)))
            yield task, future.result()


def _read_and_count(read: Callable, count: Callable, task):
    return count(task, read(task))


# ---------------------------------------------------------------------------------------------------- panoptic
def _read_panoptic_pair(task) -> tuple[np.ndarray, np.ndarray]:
    """Decode one GT/prediction PNG pair -> (gt ids, pred ids), int32 [h, w] each."""
    image_id, gt_path, pred_path = task[:3]
    gt, pred = read_panoptic(gt_path), read_panoptic(pred_path)
    if gt.shape != pred.shape:
        raise FormatError(f"image {image_id}: prediction PNG {pred_path} is {pred.shape}, ground truth is {gt.shape}")
    return gt, pred


def _count_panoptic_pair(task, pair: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Joint histogram [2+n_gt, 2+n_pred] of a decoded pair (this process's reusable PairCounter)."""
    image_id, _, _, gt_seg, pred_seg = task
    return _pair_counter().counts(*pair, gt_seg, pred_seg, image_id)


def score_panoptic(gt_json: str | Path, pred_json: str | Path, *, gt_folder: str | Path | None = None,
                   pred_folder: str | Path | None = None, workers: int | None = None) -> dict:  # fmt: skip
    """PQ/SQ/RQ of COCO-format panoptic predictions, as panopticapi's pq_compute (see PanopticEvaluator.compute)."""
    gt, pred = load_json(gt_json), load_json(pred_json)
    check_panoptic_json(gt, gt_json, "ground-truth", ("annotations", "categories"))
    check_panoptic_json(pred, pred_json, "prediction")
    gt_folder = Path(gt_folder) if gt_folder else Path(str(gt_json).replace(".json", ""))
    pred_folder = Path(pred_folder) if pred_folder else Path(str(pred_json).replace(".json", ""))
    _check_folders(gt_folder, pred_folder, "PNG ")
    evaluator = PanopticEvaluator(gt["categories"])
    pairs = match_panoptic(gt, pred)
    tasks = []
    for g, p in pairs:
        gt_seg = segment_ids(g["segments_info"], "ground truth", g["image_id"])
        pred_seg = segment_ids(p["segments_info"], "prediction", g["image_id"])
        tasks.append((g["image_id"], gt_folder / g["file_name"], pred_folder / p["file_name"], gt_seg, pred_seg))
    hists = map_pairs(_read_panoptic_pair, _count_panoptic_pair, tasks, workers)
    for (g, p), hist in zip(pairs, hists):
        evaluator.update_counts(hist, p["segments_info"], g["segments_info"], image_id=g["image_id"])
    return evaluator.compute()


# ---------------------------------------------------------------------------------------------------- semantic
def _read_semantic_pair(task) -> tuple[np.ndarray, np.ndarray]:
    return read_label(task[2]), read_label(task[1])


def _count_semantic_pair(task, pair: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Non-zero confusion entries (flat index int32, count int64) of a decoded pair."""
    name, _, _, k, ignore, reduce_zero = task
    counts = _confusion_counter(k, ignore, reduce_zero_label=reduce_zero).counts(*pair, name).reshape(-1)
    idx = np.flatnonzero(counts)
    return idx.astype(np.int32), counts[idx]


def score_semantic(gt_dir: str | Path, pred_dir: str | Path, *, num_classes: int, ignore_label: int = 255,
                   reduce_zero_label: bool = False, class_names: list[str] | None = None,
                   workers: int | None = None) -> dict:  # fmt: skip
    """mIoU & co. of a folder of predicted label maps against a folder of GT label maps (SemSegEvaluator.compute)."""
    evaluator = SemSegEvaluator(num_classes, ignore_label, class_names, reduce_zero_label=reduce_zero_label)
    pairs = match_semantic(gt_dir, pred_dir)
    tasks = [(stem, g, p, num_classes, ignore_label, reduce_zero_label) for stem, g, p in pairs]
    dense = np.zeros((num_classes + 1) * num_classes, dtype=np.int64)
    for idx, vals in map_pairs(_read_semantic_pair, _count_semantic_pair, tasks, workers):
        dense[idx] = vals
        evaluator.update_counts(dense.reshape(num_classes + 1, num_classes))
        dense[idx] = 0
    return evaluator.compute()
