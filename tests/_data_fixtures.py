"""Writers of tiny datasets in the exact on-disk formats, shared by the data tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def rand_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def blocks(h: int, w: int, values, seed: int = 0, block: int = 4) -> np.ndarray:
    """A label map of `block`-sized squares drawn from `values` (every value appears at least once)."""
    rng = np.random.default_rng(seed)
    grid = rng.choice(np.asarray(values), size=(-(-h // block), -(-w // block)))
    grid.flat[: len(values)] = values
    return np.kron(grid, np.ones((block, block), grid.dtype))[:h, :w]


def id_png(ids: np.ndarray) -> np.ndarray:
    """Segment ids [h, w] -> COCO RGB (id = R + 256 G + 256^2 B)."""
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)


CATEGORIES = [
    {"id": 1, "name": "person", "isthing": 1, "color": [220, 20, 60]},
    {"id": 5, "name": "airplane", "isthing": 1, "color": [106, 0, 228]},
    {"id": 100, "name": "sky", "isthing": 0, "color": [70, 130, 180]},
]


def panoptic_layout(h: int = 16, w: int = 24) -> tuple[np.ndarray, list[dict]]:
    """Segment ids [h, w] and segments_info (COCO ids): sky stuff, two people (one crowd), one airplane, VOID."""
    ids = np.full((h, w), 7001, np.int64)  # sky
    ids[:6, :6] = 300  # person
    ids[8:, :8] = 70000  # person crowd (id needs the B channel)
    ids[2:10, 12:20] = 1234  # airplane
    ids[-2:, -4:] = 0  # VOID
    segs = [
        {"id": 7001, "category_id": 100, "iscrowd": 0, "area": int((ids == 7001).sum())},
        {"id": 300, "category_id": 1, "iscrowd": 0, "area": 36},
        {"id": 70000, "category_id": 1, "iscrowd": 1, "area": int((ids == 70000).sum())},
        {"id": 1234, "category_id": 5, "iscrowd": 0, "area": 64},
    ]
    return ids, segs


def write_coco_panoptic(root: Path, split: str = "val2017", *, ids=None, segs=None, categories=None) -> Path:
    """ROOT/{split}/a.jpg, ROOT/panoptic_{split}/a.png, ROOT/annotations/panoptic_{split}.json."""
    d_ids, d_segs = panoptic_layout()
    ids = d_ids if ids is None else ids
    segs = d_segs if segs is None else segs
    h, w = ids.shape
    save(root / split / "a.jpg", rand_image(h, w))
    save(root / f"panoptic_{split}" / "a.png", id_png(ids))
    data = {
        "images": [{"id": 42, "file_name": "a.jpg", "height": h, "width": w}],
        "annotations": [{"image_id": 42, "file_name": "a.png", "segments_info": segs}],
        "categories": CATEGORIES if categories is None else categories,
    }
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"panoptic_{split}.json").write_text(json.dumps(data))
    return root


def write_folder(root: Path, split: str = "train", *, classes=("a", "b", "c"), values=(0, 1, 2, 255), n: int = 2):
    """ROOT/images/{split}/iK.png + ROOT/labels/{split}/iK.png + ROOT/classes.txt; returns the label maps."""
    labels = []
    for k in range(n):
        lab = blocks(12, 16, list(values), seed=k).astype(np.uint8)
        save(root / "images" / split / f"i{k}.png", rand_image(12, 16, k))
        save(root / "labels" / split / f"i{k}.png", lab)
        labels.append(lab)
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return labels
