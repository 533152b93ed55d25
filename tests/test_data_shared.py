"""The real samples in ../shared/data load with the expected classes and segments (skipped when absent)."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from maskformer.config import get_preset
from maskformer.data import ade20k, build_dataset, coco_panoptic
from maskformer.data.meta import ADE20K_150_NAMES, coco_panoptic_133


def test_ade20k_sample_classes(shared_data):
    ds = ade20k(shared_data / "ade20k-sample", "validation")
    assert len(ds) == 3
    counts = []
    for i in range(3):
        raw = np.asarray(Image.open(ds.records[i].sem_seg))
        expected = [v - 1 for v in np.unique(raw).tolist() if v != 0]  # README: class = value - 1, 0 ignored
        image, target, info = ds[i]
        assert target.labels.tolist() == expected
        assert image.shape[1:] == raw.shape == (info["height"], info["width"])
        assert int(target.masks.sum()) == int((raw != 0).sum())
        counts.append(len(expected))
    assert counts == [7, 6, 12]


def test_ade20k_names_match_object_info_csv(shared_data):
    rows = (shared_data / "ade20k-sample" / "objectInfo150.csv").read_text().splitlines()[1:]
    assert len(rows) == len(ADE20K_150_NAMES) == 150
    for row, name in zip(rows, ADE20K_150_NAMES):
        tokens = row.split(",")[-1].split(";")
        assert set(name.split()) <= set(tokens), (name, row)


def test_builtin_coco_panoptic_meta_matches_the_official_categories(shared_data):
    cats = json.loads((shared_data / "coco_panoptic_categories.json").read_text())
    meta = coco_panoptic_133()
    assert meta.class_names == [c["name"] for c in cats]
    assert meta.dataset_ids == [c["id"] for c in cats]
    assert meta.is_thing == [c["isthing"] == 1 for c in cats]


def test_coco_panoptic_sample_segments(shared_data):
    root = shared_data / "coco-panoptic-sample"
    ds = coco_panoptic(root, "val2017")
    cats = json.loads((shared_data / "coco_panoptic_categories.json").read_text())
    assert ds.meta.class_names == [c["name"] for c in cats] and len(ds.meta.thing_ids) == 80
    gt = json.loads((root / "annotations" / "panoptic_val2017.json").read_text())["annotations"]
    for i, ann in enumerate(gt):
        _, target, info = ds[i]
        kept = [s for s in ann["segments_info"] if not s["iscrowd"]]
        assert len(target.labels) == len(kept) and len(info["segments_info"]) == len(ann["segments_info"])
        # mask areas from the decoded PNG equal the JSON areas computed by the COCO tools
        assert target.masks.sum(dim=(1, 2)).tolist() == [s["area"] for s in kept]
        assert target.labels.tolist() == [ds.meta.contiguous_id(s["category_id"]) for s in kept]
    assert [len(a["segments_info"]) for a in gt] == [18, 32]


def test_camvid_through_the_preset(shared_data):
    cfg = get_preset("maskformer_r18_camvid", [f"data.root={shared_data / 'camvid'}"])
    val = build_dataset(cfg.data, cfg.data.val_split, train=False)
    assert len(val) == 101 and val.meta.num_classes == 11 and val.meta.ignore_label == 11
    train = build_dataset(cfg.data, cfg.data.train_split, train=True)
    image, target, _ = train[(0, 1)]
    assert (
        len(train) == 367
        and image.shape[1:] == target.sem_seg.shape
        and image.shape[1] <= 240
        and image.shape[2] <= 320
    )
    assert set(target.labels.tolist()) <= set(range(11)) and set(target.sem_seg.unique().tolist()) <= set(range(12))
