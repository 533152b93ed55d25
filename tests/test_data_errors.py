"""Bad input: every error names the offending file (or folder) and says what is wrong."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from _data_fixtures import panoptic_layout, rand_image, save, write_coco_panoptic, write_folder

from maskformer.data import DatasetError, coco_panoptic, folder


def _raises(match: str, path, fn, *args, **kw):
    """fn(*args) raises DatasetError whose message contains `path` and matches `match`."""
    with pytest.raises(DatasetError, match=match) as e:
        fn(*args, **kw)
    assert str(path) in str(e.value), str(e.value)


def test_missing_label(tmp_path):
    write_folder(tmp_path)
    extra = save(tmp_path / "images" / "train" / "extra.png", rand_image(12, 16))
    _raises("no label map", extra, folder, tmp_path, "train")


def test_missing_image(tmp_path):
    write_folder(tmp_path)
    orphan = save(tmp_path / "labels" / "train" / "orphan.png", np.zeros((12, 16), np.uint8))
    _raises("no matching image", orphan, folder, tmp_path, "train")


def test_image_label_size_mismatch(tmp_path):
    write_folder(tmp_path)
    lab = save(tmp_path / "labels" / "train" / "i1.png", np.zeros((10, 16), np.uint8))
    ds = folder(tmp_path, "train")
    _raises(re.escape("size 10x16 does not match"), lab, ds.__getitem__, 1)


def test_label_values_outside_classes(tmp_path):
    write_folder(tmp_path, values=(0, 1, 2, 255))
    lab = save(tmp_path / "labels" / "train" / "i1.png", np.full((12, 16), 5, np.uint8))
    ds = folder(tmp_path, "train", reduce_zero_label=False)
    _raises(r"label values \[5\] are outside the 3 classes", lab, ds.__getitem__, 1)
    ds[0]  # values 0..2 and the ignore value are fine


def test_corrupt_and_truncated_images(tmp_path):
    write_folder(tmp_path)
    bad = tmp_path / "images" / "train" / "i0.png"
    bad.write_bytes(b"this is not an image")
    ds = folder(tmp_path, "train")
    _raises("corrupt or truncated", bad, ds.__getitem__, 0)
    good = save(tmp_path / "images" / "train" / "i1.jpg", rand_image(12, 16))
    (tmp_path / "images" / "train" / "i1.png").unlink()
    good.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    _raises("corrupt or truncated", good, folder(tmp_path, "train").__getitem__, 1)


def test_colour_label_png(tmp_path):
    write_folder(tmp_path)
    lab = save(tmp_path / "labels" / "train" / "i0.png", rand_image(12, 16))
    _raises("expected one channel", lab, folder(tmp_path, "train", reduce_zero_label=False).__getitem__, 0)


def test_panoptic_png_id_missing_from_json(tmp_path):
    ids, segs = panoptic_layout()
    ids[0, 0] = 999
    write_coco_panoptic(tmp_path, ids=ids, segs=segs)
    ds = coco_panoptic(tmp_path, "val2017")
    _raises(r"segment ids \[999\] appear in the PNG but not in segments_info", "panoptic_val2017/a.png", ds.load, 0)


def test_json_segment_missing_from_png(tmp_path):
    ids, segs = panoptic_layout()
    segs = segs + [{"id": 4242, "category_id": 5, "iscrowd": 0}]
    write_coco_panoptic(tmp_path, ids=ids, segs=segs)
    ds = coco_panoptic(tmp_path, "val2017")
    _raises(r"segments \[4242\] .* absent from the PNG", "panoptic_val2017.json", ds.load, 0)


def test_unknown_category_id(tmp_path):
    ids, segs = panoptic_layout()
    segs[1] = dict(segs[1], category_id=77)
    write_coco_panoptic(tmp_path, ids=ids, segs=segs)
    _raises("unknown category id 77", "panoptic_val2017.json", coco_panoptic, tmp_path, "val2017")


def test_panoptic_image_file_missing(tmp_path):
    write_coco_panoptic(tmp_path)
    (tmp_path / "val2017" / "a.jpg").unlink()
    _raises("image file not found", "val2017/a.jpg", coco_panoptic, tmp_path, "val2017")


def test_empty_dataset(tmp_path):
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "labels" / "train").mkdir(parents=True)
    (tmp_path / "classes.txt").write_text("a\n")
    _raises("empty", tmp_path / "images" / "train", folder, tmp_path, "train")
    write_coco_panoptic(tmp_path / "p")
    data = json.loads((tmp_path / "p" / "annotations" / "panoptic_val2017.json").read_text())
    data["annotations"] = []
    (tmp_path / "p" / "annotations" / "panoptic_val2017.json").write_text(json.dumps(data))
    _raises("empty", "panoptic_val2017.json", coco_panoptic, tmp_path / "p", "val2017")


def test_missing_split_and_classes_file(tmp_path):
    write_folder(tmp_path)
    _raises("images of split 'val' not found", tmp_path / "images" / "val", folder, tmp_path, "val")
    (tmp_path / "classes.txt").unlink()
    _raises("no class-names file", tmp_path, folder, tmp_path, "train")


def test_folder_one_based_labels_are_explained(tmp_path):
    write_folder(tmp_path, classes=("a", "b", "c"), values=(1, 2, 3))
    _raises("set reduce_zero_label", tmp_path / "labels" / "train", folder, tmp_path, "train")
    assert folder(tmp_path, "train", reduce_zero_label=True)[0][1].labels.tolist() == [0, 1, 2]


def test_folder_binary_255_masks_are_explained(tmp_path):
    write_folder(tmp_path, classes=("background", "lesion"), values=(0, 255))
    _raises("only 0 and 255", tmp_path / "labels" / "train", folder, tmp_path, "train")
