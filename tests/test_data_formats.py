"""Every on-disk format: a tiny fixture written in exactly that layout decodes to what was written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _data_fixtures import (
    blocks,
    id_png,
    panoptic_layout,
    rand_image,
    save,
    write_coco_panoptic,
    write_folder,
)

from maskformer.config import DataConfig
from maskformer.data import (
    DatasetError,
    ade20k,
    ade20k_full,
    ade20k_panoptic,
    build_dataset,
    cityscapes,
    coco_panoptic,
    coco_stuff,
    folder,
    mapillary,
)
from maskformer.structures import SegTarget


def _check_semantic(ds, expected: np.ndarray, ignore: int):
    """Item 0 decodes to `expected` and its targets are one mask per class present."""
    image, target, info = ds[0]
    assert image.dtype == torch.uint8 and image.shape[1:] == expected.shape
    np.testing.assert_array_equal(target.sem_seg.numpy(), expected)
    ref = SegTarget.from_semantic(torch.from_numpy(expected.astype(np.int64)), ignore)
    assert target.labels.tolist() == ref.labels.tolist()
    assert torch.equal(target.masks, ref.masks)
    assert (info["height"], info["width"]) == expected.shape
    return target


def test_ade20k_raw_reduces_zero_label(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    raw = blocks(12, 16, [0, 1, 7, 150]).astype(np.uint8)
    save(base / "images" / "validation" / "ADE_val_1.jpg", rand_image(12, 16))
    save(base / "annotations" / "validation" / "ADE_val_1.png", raw)
    ds = ade20k(tmp_path, "validation")
    expected = np.where(raw == 0, 255, raw.astype(int) - 1)
    target = _check_semantic(ds, expected, 255)
    assert target.labels.tolist() == [0, 6, 149] and ds.meta.num_classes == 150


def test_ade20k_prefers_prepared_annotations(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    save(base / "images" / "training" / "x.jpg", rand_image(8, 8))
    save(base / "annotations" / "training" / "x.png", np.full((8, 8), 3, np.uint8))
    prepared = blocks(8, 8, [2, 255]).astype(np.uint8)
    save(base / "annotations_detectron2" / "training" / "x.png", prepared)
    _check_semantic(ade20k(base, "training"), prepared.astype(int), 255)


def test_ade20k_full_uint16_tiff(tmp_path):
    base = tmp_path / "ADE20K_2021_17_01"
    lab = blocks(10, 12, [0, 500, 846, 65535]).astype(np.uint16)
    save(base / "images_detectron2" / "validation" / "ADE_frame_val_1.jpg", rand_image(10, 12))
    save(base / "annotations_detectron2" / "validation" / "ADE_frame_val_1.tif", lab)
    cats = [{"id": 1000 + i, "trainId": i, "name": f"thing{i}"} for i in range(847)]
    (base / "ade20k_full_categories.json").write_text(json.dumps(cats))
    ds = ade20k_full(tmp_path, "validation")
    assert ds.meta.ignore_label == 65535 and ds.meta.class_names[846] == "thing846"
    assert _check_semantic(ds, lab.astype(int), 65535).labels.tolist() == [0, 500, 846]


def test_coco_stuff_prepared_and_split_alias(tmp_path):
    base = tmp_path / "coco" / "coco_stuff_10k"
    lab = blocks(8, 10, [0, 91, 170, 255]).astype(np.uint8)
    save(base / "images_detectron2" / "train" / "COCO_train2014_1.jpg", rand_image(8, 10))
    save(base / "annotations_detectron2" / "train" / "COCO_train2014_1.png", lab)
    ds = coco_stuff(tmp_path, "train2014")  # the preset's split name maps to the prepared "train" folder
    assert ds.meta.num_classes == 171 and ds.meta.dataset_ids[80] == 92 and ds.meta.class_names[80] == "banner"
    _check_semantic(ds, lab.astype(int), 255)


def test_cityscapes_label_train_ids_only(tmp_path):
    lab = blocks(8, 16, [0, 11, 18, 255]).astype(np.uint8)
    stem = "aachen_000000_000019"
    save(tmp_path / "leftImg8bit" / "val" / "aachen" / f"{stem}_leftImg8bit.png", rand_image(8, 16))
    save(tmp_path / "gtFine" / "val" / "aachen" / f"{stem}_gtFine_labelTrainIds.png", lab)
    save(tmp_path / "gtFine" / "val" / "aachen" / f"{stem}_gtFine_labelIds.png", lab + 1)  # ignored
    save(tmp_path / "gtFine" / "val" / "aachen" / f"{stem}_gtFine_color.png", rand_image(8, 16))  # ignored
    ds = cityscapes(tmp_path, "val")
    assert len(ds) == 1 and ds.meta.thing_ids == list(range(11, 19))
    _check_semantic(ds, lab.astype(int), 255)


def test_mapillary_ignore_65(tmp_path):
    lab = blocks(8, 8, [0, 64, 65]).astype(np.uint8)
    save(tmp_path / "mapillary_vistas" / "training" / "images" / "m.jpg", rand_image(8, 8))
    save(tmp_path / "mapillary_vistas" / "training" / "labels" / "m.png", lab)
    ds = mapillary(tmp_path, "training")
    assert _check_semantic(ds, lab.astype(int), 65).labels.tolist() == [0, 64]


def test_coco_panoptic_segments_crowd_and_semantic(tmp_path):
    write_coco_panoptic(tmp_path)
    ds = coco_panoptic(tmp_path, "val2017")
    ids, segs = panoptic_layout()
    assert ds.meta.class_names == ["person", "airplane", "sky"] and ds.meta.thing_ids == [0, 1]
    image, target, info = ds[0]
    # non-crowd segments in JSON order: sky (2), person (0), airplane (1); crowd dropped from targets
    assert target.labels.tolist() == [2, 0, 1]
    for k, seg_id in enumerate([7001, 300, 1234]):
        assert torch.equal(target.masks[k], torch.from_numpy(ids == seg_id))
    expected_sem = np.select([ids == 7001, ids == 300, ids == 70000, ids == 1234], [2, 0, 0, 1], 255)
    np.testing.assert_array_equal(target.sem_seg.numpy(), expected_sem)  # crowd painted, VOID ignored
    assert info["image_id"] == 42 and info["segments_info"] == segs
    assert (info["height"], info["width"]) == ids.shape


def test_coco_panoptic_semantic_target_mode(tmp_path):
    write_coco_panoptic(tmp_path)
    _, target, _ = coco_panoptic(tmp_path, "val2017", target="semantic")[0]
    assert target.labels.tolist() == [0, 1, 2]  # one per class present, crowd people included


def test_ade20k_panoptic_uses_semantic_png(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    ids, _ = panoptic_layout()
    segs = [{"id": 7001, "category_id": 2, "iscrowd": 0}, {"id": 300, "category_id": 12, "iscrowd": 0}]
    ids = np.where(np.isin(ids, [7001, 300]), ids, 0)
    sem = np.where(ids == 300, 12, 2).astype(np.uint8)
    sem[0, 0] = 255
    save(base / "images" / "validation" / "ADE_val_7.jpg", rand_image(*ids.shape))
    save(base / "ade20k_panoptic_val" / "ADE_val_7.png", id_png(ids))
    save(base / "annotations_detectron2" / "validation" / "ADE_val_7.png", sem)
    cats = [{"id": i, "name": f"c{i}", "isthing": int(i == 12)} for i in range(150)]
    data = {
        "images": [{"id": "ADE_val_7", "file_name": "ADE_val_7.jpg"}],
        "annotations": [{"image_id": "ADE_val_7", "file_name": "ADE_val_7.png", "segments_info": segs}],
        "categories": cats,
    }
    (base / "ade20k_panoptic_val.json").write_text(json.dumps(data))
    _, target, info = ade20k_panoptic(tmp_path, "validation")[0]
    assert target.labels.tolist() == [2, 12]
    np.testing.assert_array_equal(target.sem_seg.numpy(), sem)  # the semantic PNG, not the painted map
    assert info["image_id"] == "ADE_val_7"


def test_folder_with_classes_txt_and_flat_layout(tmp_path):
    labels = write_folder(tmp_path / "d", "train")
    ds = folder(tmp_path / "d", "train")
    assert ds.meta.class_names == ["a", "b", "c"] and ds.meta.ignore_label == 255 and len(ds) == 2
    _check_semantic(ds, labels[0].astype(int), 255)
    flat = tmp_path / "flat"
    for sub in ("images", "labels"):
        (flat / sub).mkdir(parents=True)
        for f in (tmp_path / "d" / sub / "train").iterdir():
            f.rename(flat / sub / f.name)
    (flat / "classes.txt").write_text("a\nb\nc\n")
    assert len(folder(flat, "")) == 2


def test_folder_meta_json_ignore_and_reduce_zero_label(tmp_path):
    labels = write_folder(tmp_path, "val", values=(0, 1, 2, 3))
    (tmp_path / "meta.json").write_text(json.dumps({"classes": ["a", "b", "c"], "reduce_zero_label": True}))
    ds = folder(tmp_path, "val")
    expected = np.where(labels[0] == 0, 255, labels[0].astype(int) - 1)
    _check_semantic(ds, expected, 255)
    (tmp_path / "meta.json").write_text(json.dumps({"classes": ["a", "b", "c", "d"], "ignore_label": 0}))
    ds = folder(tmp_path, "val")
    assert ds.meta.ignore_label == 0
    assert _check_semantic(ds, labels[0].astype(int), 0).labels.tolist() == [1, 2, 3]


def test_build_dataset_camvid_layout_and_errors(tmp_path):
    write_folder(tmp_path, "train", values=(0, 1, 2, 3))
    (tmp_path / "meta.json").write_text(json.dumps({"name": "cam", "classes": ["a", "b", "c"], "ignore_label": 3}))
    ds = build_dataset(DataConfig(format="camvid", root=str(tmp_path), ignore_label=3), "train", train=False)
    assert ds.meta.name == "cam" and ds[0][1].sem_seg.max() <= 3
    with pytest.raises(KeyError, match="valid: .*ade20k"):
        build_dataset(DataConfig(format="nope", root=str(tmp_path)), "train", train=False)
    with pytest.raises(DatasetError, match="data.root is empty"):
        build_dataset(DataConfig(format="synthetic", root=""), "train", train=False)


def test_build_dataset_train_recipe_pads_and_test_keeps_original(tmp_path):
    write_coco_panoptic(tmp_path, "val2017")
    cfg = DataConfig(format="coco_panoptic", crop_size=(8, 8), min_size_train=(16,), pad_size=12, recipe="panoptic")
    image, target, info = build_dataset(cfg, "val2017", train=True, root=tmp_path)[(0, 5)]
    assert image.shape == (3, 12, 12) and target.masks.shape[-2:] == (12, 12) and not target.masks[:, 8:].any()
    assert (image[:, 8:] == 128).all() and info["image_size"] == (12, 12)
    ds = build_dataset(cfg, "val2017", train=False, root=tmp_path, test_size=(32, 100))
    image, target, info = ds[0]
    assert image.shape == (3, 32, 48) and target.masks.shape[-2:] == (16, 24) and info["height"] == 16
