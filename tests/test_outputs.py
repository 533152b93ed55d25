"""Prediction file formats: semantic PNGs, COCO panoptic PNG + JSON, COCO RLE (numpy, no pycocotools)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskformer import outputs as fmt
from maskformer.data.io import read_label, read_panoptic
from maskformer.inference import Instances
from maskformer.structures import DatasetMeta


def test_rle_hand_computed_strings():
    """Column-major runs starting with 0s; COCO's 5-bit chars, differences from the third count on."""
    mask = np.array([[0, 1], [1, 1]], dtype=bool)  # column-major: 0, 1, 1, 1 -> counts [1, 3]
    assert fmt.rle_counts(mask).tolist() == [1, 3]
    assert fmt.rle_encode(mask) == {"size": [2, 2], "counts": "13"}
    counts = np.array([0, 100, 5, 7])  # 100 -> "T3"; 7 - 100 = -93 -> "SM"
    assert fmt._encode_counts(counts) == "0T35SM"
    assert fmt._decode_string("0T35SM") == [0, 100, 5, 7]


@pytest.mark.parametrize("kind", ["random", "empty", "full", "first_set", "wide"])
def test_rle_round_trip(kind):
    rng = np.random.default_rng(0)
    shape = (37, 500) if kind == "wide" else (13, 17)
    mask = {
        "random": rng.random(shape) > 0.6,
        "empty": np.zeros(shape, bool),
        "full": np.ones(shape, bool),
        "first_set": np.eye(*shape, dtype=bool),
        "wide": rng.random(shape) > 0.01,
    }[kind]
    rle = fmt.rle_encode(mask)
    assert rle["size"] == list(shape) and isinstance(rle["counts"], str)
    np.testing.assert_array_equal(fmt.rle_decode(rle), mask)
    counts = fmt.rle_counts(mask)
    assert counts.sum() == mask.size and (counts[1:] > 0).all()
    np.testing.assert_array_equal(fmt.rle_decode({"size": list(shape), "counts": counts.tolist()}), mask)


def test_rle_decode_rejects_wrong_size():
    with pytest.raises(ValueError, match="expected 3 x 3"):
        fmt.rle_decode({"size": [3, 3], "counts": [4, 1]})


META = DatasetMeta(name="t", class_names=["car", "person", "sky"], is_thing=[True, True, False], dataset_ids=[3, 1, 27])


def test_panoptic_png_and_json_follow_coco_rules(tmp_path):
    ids = np.zeros((6, 8), dtype=np.int32)
    ids[1:3, 2:5] = 1
    ids[4:, :] = 2
    ids[0, 7] = 300  # an id needing the G channel
    segments = [
        {"id": 1, "category_id": 0, "dataset_category_id": 3, "isthing": True},
        {"id": 2, "category_id": 2, "dataset_category_id": 27, "isthing": False},
        {"id": 300, "category_id": 1, "dataset_category_id": 1, "isthing": True},
    ]
    fmt.write_panoptic_png(tmp_path / "a.png", torch.from_numpy(ids))
    np.testing.assert_array_equal(read_panoptic(tmp_path / "a.png"), ids)
    ann = fmt.panoptic_annotation(ids, segments, image_id="a", file_name="a.png")
    fmt.write_panoptic_json(tmp_path / "p.json", [ann], META)
    import json

    doc = json.loads((tmp_path / "p.json").read_text())
    info = doc["annotations"][0]["segments_info"]
    assert [s["id"] for s in info] == [1, 2, 300]
    assert [s["category_id"] for s in info] == [3, 27, 1]
    assert [s["area"] for s in info] == [6, 16, 1]
    assert [s["bbox"] for s in info] == [[2, 1, 3, 2], [0, 4, 8, 2], [7, 0, 1, 1]]
    assert all(s["iscrowd"] == 0 for s in info)
    present = set(np.unique(ids)) - {0}
    assert present == {s["id"] for s in info}  # every painted id is described, every described id is painted
    cats = {c["id"]: c for c in doc["categories"]}
    assert {s["category_id"] for s in info} <= set(cats) and cats[27]["isthing"] == 0 and cats[3]["name"] == "car"


def test_semantic_png_round_trip(tmp_path):
    labels = torch.randint(0, 3, (5, 7))
    fmt.write_semantic(tmp_path / "s.png", labels)
    np.testing.assert_array_equal(read_label(tmp_path / "s.png"), labels.numpy())
    fmt.write_semantic(tmp_path / "d.png", labels, META, dataset_ids=True)
    np.testing.assert_array_equal(read_label(tmp_path / "d.png"), np.array([3, 1, 27])[labels.numpy()])
    big = torch.full((2, 2), 700)  # more than 256 classes -> 16-bit PNG
    fmt.write_semantic(tmp_path / "b.png", big)
    np.testing.assert_array_equal(read_label(tmp_path / "b.png"), big.numpy())
    with pytest.raises(ValueError, match="DatasetMeta"):
        fmt.write_semantic(tmp_path / "x.png", labels, dataset_ids=True)


def test_instance_results_decode_to_the_masks():
    masks = torch.zeros(2, 6, 9, dtype=torch.bool)
    masks[0, 1:4, 2:6] = True
    masks[1, 5, 8] = True
    inst = Instances(masks, torch.tensor([0.9, 0.4]), torch.tensor([1, 0]))
    res = fmt.instance_results(inst, image_id=7, meta=META)
    assert [r["category_id"] for r in res] == [1, 3] and [r["image_id"] for r in res] == [7, 7]
    assert [r["bbox"] for r in res] == [[2, 1, 4, 3], [8, 5, 1, 1]] and [r["area"] for r in res] == [12, 1]
    assert res[0]["score"] == pytest.approx(0.9)
    for r, m in zip(res, masks):
        np.testing.assert_array_equal(fmt.rle_decode(r["segmentation"]), m.numpy())
