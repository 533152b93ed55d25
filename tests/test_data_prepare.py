"""`maskformer prepare`: each conversion on a tiny fixture written in the raw download format."""

from __future__ import annotations

import json
import pickle

import numpy as np
import scipy.io
from _data_fixtures import blocks, id_png, panoptic_layout, rand_image, save, write_coco_panoptic
from PIL import Image

from maskformer.cli import main
from maskformer.data import ade20k, ade20k_full, ade20k_panoptic, coco_stuff
from maskformer.data.meta import ADE20K_PANOPTIC_THING_IDS
from maskformer.data.prepare import ade_full_size, prepare_ade20k_full, prepare_coco_panoptic_semantic

QUIET = dict(log=lambda s: None)


def test_ade20k_reduce_zero_label_with_uint8_wrap(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    raw = blocks(8, 12, [0, 1, 150]).astype(np.uint8)
    save(base / "images" / "training" / "a.jpg", rand_image(8, 12))
    save(base / "annotations" / "training" / "a.png", raw)
    assert main(["prepare", "ade20k", "--root", str(tmp_path)]) == 0
    out = np.asarray(Image.open(base / "annotations_detectron2" / "training" / "a.png"))
    np.testing.assert_array_equal(out, np.where(raw == 0, 255, raw - 1))
    assert ade20k(tmp_path, "training")[0][1].labels.tolist() == [0, 149]


def test_coco_stuff_10k_from_mat(tmp_path):
    base = tmp_path / "coco_stuff_10k"
    for split, names in (("train", ["COCO_train2014_1", "COCO_train2014_2"]), ("test", ["COCO_train2014_3"])):
        (base / "imageLists").mkdir(parents=True, exist_ok=True)
        (base / "imageLists" / f"{split}.txt").write_text("\n".join(names) + "\n")
        for k, name in enumerate(names):
            save(base / "images" / f"{name}.jpg", rand_image(6, 9, k))
            s = blocks(6, 9, [0, 1, 2, 92, 182], seed=k).astype(np.uint8)  # raw: 0 unlabeled, 1 = thing 1 ...
            (base / "annotations").mkdir(exist_ok=True)
            scipy.io.savemat(base / "annotations" / f"{name}.mat", {"S": s})
    assert main(["prepare", "coco_stuff_10k", "--root", str(tmp_path)]) == 0
    s = blocks(6, 9, [0, 1, 2, 92, 182], seed=1).astype(np.uint8)
    out = np.asarray(Image.open(base / "annotations_detectron2" / "train" / "COCO_train2014_2.png"))
    np.testing.assert_array_equal(out, (s.astype(int) - 2) % 256)  # 1 -> 255 (ignore), 0 -> 254 as the script
    assert (base / "images_detectron2" / "test" / "COCO_train2014_3.jpg").is_file()
    assert len(coco_stuff(tmp_path, "test")) == 1


def _ade_full_fixture(tmp_path):
    """Three images; class ids (R // 10) * 256 + G: 300 in train+val, 5 train-only, 700 in train+val (more often)."""
    base = tmp_path / "ADE20K_2021_17_01"
    names, folders, labels = [], [], []
    layout = [("ADE_train_00000001.jpg", (520, 530), [300, 700]), ("ADE_train_00000002.jpg", (8, 10), [5, 700]),
              ("ADE_val_00000001.jpg", (6, 8), [300, 700, 0])]  # fmt: skip
    for name, (h, w), classes in layout:
        cls = blocks(h, w, classes, block=2)
        seg = np.zeros((h, w, 3), np.uint8)
        seg[..., 0], seg[..., 1] = cls // 256 * 10 + 3, cls % 256  # R / 10 truncates the + 3
        save(base / "images" / "x" / name, rand_image(h, w))
        save(base / "images" / "x" / name.replace(".jpg", "_seg.png"), seg)
        names.append(name)
        folders.append("ADE20K_2021_17_01/images/x")
        labels.append(cls)
    index = {"filename": names, "folder": folders, "objectnames": [f"obj{i}" for i in range(1, 1001)]}
    with open(base / "index_ade20k.pkl", "wb") as f:
        pickle.dump(index, f)
    return base, labels


def test_ade20k_full_derived_classes_resize_and_tiff(tmp_path):
    base, labels = _ade_full_fixture(tmp_path)
    prepare_ade20k_full(tmp_path, **QUIET)
    cats = json.loads((base / "ade20k_full_categories.json").read_text())
    assert [(c["id"], c["trainId"], c["name"]) for c in cats] == [(700, 0, "obj700"), (300, 1, "obj300")]
    small = np.asarray(Image.open(base / "annotations_detectron2" / "training" / "ADE_train_00000002.tif"))
    assert small.dtype == np.uint16
    np.testing.assert_array_equal(small, np.where(labels[1] == 700, 0, 65535))  # class 5 is train-only -> ignore
    big = np.asarray(Image.open(base / "annotations_detectron2" / "training" / "ADE_train_00000001.tif"))
    assert big.shape == ade_full_size(520, 530) == (512, 522)
    assert set(np.unique(big).tolist()) == {0, 1}
    img = Image.open(base / "images_detectron2" / "training" / "ADE_train_00000001.jpg")
    assert img.size == (522, 512)
    ds = ade20k_full(tmp_path, "validation")
    assert ds.meta.class_names[:2] == ["obj700", "obj300"] and ds[0][1].labels.tolist() == [0, 1]


def test_ade20k_full_with_official_categories_file(tmp_path):
    base, labels = _ade_full_fixture(tmp_path)
    cats = tmp_path / "cats.json"
    cats.write_text(json.dumps([{"id": 5, "trainId": 0, "name": "five"}, {"id": 300, "trainId": 1, "name": "x"}]))
    assert main(["prepare", "ade20k_full", "--root", str(tmp_path), "--categories", str(cats)]) == 0
    out = np.asarray(Image.open(base / "annotations_detectron2" / "training" / "ADE_train_00000002.tif"))
    np.testing.assert_array_equal(out, np.where(labels[1] == 5, 0, 65535))


def test_ade20k_panoptic_things_over_stuff(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    sem = np.full((12, 16), 1, np.uint8)  # wall (stuff)
    sem[:, 8:] = 3  # sky (stuff)
    sem[0, 0] = 0  # unlabeled
    ins = np.zeros((12, 16, 3), np.uint8)
    person = ADE20K_PANOPTIC_THING_IDS.index(13) + 1  # instance class of "person" (SceneParse150 id 13)
    ins[2:6, 2:6] = (person, 1, 0)
    ins[6:10, 10:14] = (person, 2, 0)
    save(base / "images" / "validation" / "ADE_val_1.jpg", rand_image(12, 16))
    save(base / "annotations" / "validation" / "ADE_val_1.png", sem)
    save(base / "annotations_instance" / "validation" / "ADE_val_1.png", ins)
    assert main(["prepare", "ade20k_panoptic", "--root", str(tmp_path)]) == 0
    ds = ade20k_panoptic(tmp_path, "validation", target="panoptic")
    _, target, info = ds[0]
    assert target.labels.tolist() == [0, 2, 12, 12]  # wall, sky, then the two person instances
    assert target.masks.sum(dim=(1, 2)).tolist() == [8 * 12 - 1 - 16, 8 * 12 - 16, 16, 16]
    assert [s["area"] for s in info["segments_info"]] == target.masks.sum(dim=(1, 2)).tolist()
    assert len({s["id"] for s in info["segments_info"]}) == 4 and ds.meta.num_classes == 150
    assert len(ds.meta.thing_ids) == 100 and ds.meta.is_thing[12]


def test_coco_panoptic_to_semantic(tmp_path):
    write_coco_panoptic(tmp_path, "val2017")
    prepare_coco_panoptic_semantic(tmp_path, splits=("val2017",), **QUIET)
    ids, _ = panoptic_layout()
    out = np.asarray(Image.open(tmp_path / "panoptic_semseg_val2017" / "a.png"))
    np.testing.assert_array_equal(
        out, np.select([ids == 7001, ids == 300, ids == 70000, ids == 1234], [2, 0, 0, 1], 255)
    )
    assert id_png(ids).shape[:2] == out.shape


def test_prepare_reports_missing_root(tmp_path, capsys):
    assert main(["prepare", "ade20k", "--root", str(tmp_path / "nowhere")]) == 1
    assert "not found" in capsys.readouterr().err
