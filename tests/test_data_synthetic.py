"""The synthetic dataset: deterministic, valid COCO panoptic + semantic files, readable by the standard readers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from maskformer.cli import main
from maskformer.config import get_preset
from maskformer.data import build_dataset, coco_panoptic
from maskformer.data.synthetic import SynthConfig, write_synthetic
from maskformer.io import rgb2id

SMALL = dict(image_size=(48, 64), num_train=6, num_val=2)


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_files_and_other_seed_differs(tmp_path):
    a = _files(write_synthetic(tmp_path / "a", SynthConfig(**SMALL, seed=1)))
    b = _files(write_synthetic(tmp_path / "b", SynthConfig(**SMALL, seed=1)))
    c = _files(write_synthetic(tmp_path / "c", SynthConfig(**SMALL, seed=2)))
    assert a == b and a.keys() == c.keys() and a != c


def test_files_are_consistent_coco_panoptic(tmp_path):
    root = write_synthetic(tmp_path, SynthConfig(**SMALL))
    data = json.loads((root / "annotations" / "panoptic_train.json").read_text())
    cats = {c["id"]: c for c in data["categories"]}
    assert sum(c["isthing"] for c in cats.values()) >= 4 and sum(not c["isthing"] for c in cats.values()) >= 4
    contiguous = {c["id"]: i for i, c in enumerate(data["categories"])}
    seen = set()
    for img, ann in zip(data["images"], data["annotations"]):
        ids = rgb2id(np.asarray(Image.open(root / "panoptic_train" / ann["file_name"])))
        sem = np.asarray(Image.open(root / "panoptic_semseg_train" / ann["file_name"]))
        assert ids.shape == (img["height"], img["width"]) == (48, 64)
        assert sorted(np.unique(ids).tolist()) == sorted(s["id"] for s in ann["segments_info"])  # no VOID, no strays
        for s in ann["segments_info"]:
            m = ids == s["id"]
            assert s["area"] == m.sum() and (sem[m] == contiguous[s["category_id"]]).all()
            x, y, w, h = s["bbox"]
            assert m[y : y + h, x : x + w].sum() == s["area"] and m[y, x : x + w].any() and m[y : y + h, x].any()
            seen.add(s["category_id"])
    assert seen <= set(cats) and len(seen) >= 6
    meta = json.loads((root / "meta.json").read_text())
    assert meta["class_names"] == [c["name"] for c in data["categories"]] and meta["ignore_label"] == 255


def test_flows_through_the_readers(tmp_path):
    root = write_synthetic(tmp_path, SynthConfig(**SMALL))
    cfg = get_preset("maskformer_r18_synth", [f"data.root={root}"])
    train = build_dataset(cfg.data, "train", train=True)
    image, target, _ = train[(0, 0)]
    assert len(train) == 6 and image.shape == (3, 128, 128) and train.meta.num_classes == cfg.model.num_classes
    val = coco_panoptic(root, "val")
    _, target, info = val[0]
    assert len(val) == 2 and len(target.labels) == len(info["segments_info"])
    assert target.masks.sum(0).eq(1).all()  # segments tile the image


def test_configurable_classes_and_validation(tmp_path):
    cfg = SynthConfig(**SMALL, things=("ellipse", "cross"), stuff=("sand", "sky"))
    ds = coco_panoptic(write_synthetic(tmp_path, cfg), "train")
    assert ds.meta.class_names == ["ellipse", "cross", "sand", "sky"] and ds.meta.thing_ids == [0, 1]
    with pytest.raises(ValueError, match="choose from"):
        SynthConfig(things=("dodecahedron",))


def test_cli(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path), "--train", "3", "--val", "1", "--size", "40x56"]) == 0
    assert "3 train + 1 val" in capsys.readouterr().out
    assert Image.open(tmp_path / "train" / "train_00002.png").size == (56, 40)
    assert main(["synth", "--out", str(tmp_path), "--things", "blob"]) == 2
