"""Predictor, image conversion, test-time resizing, TTA / sliding windows and `maskformer predict`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from maskformer import inference as inf
from maskformer import io as fmt
from maskformer import pipeline
from maskformer.cli import main
from maskformer.config import get_preset
from maskformer.data.transforms import resize_image, shortest_edge_size
from maskformer.io import read_label, read_panoptic
from maskformer.modeling import build_model
from maskformer.predict import ImageError, Predictor, load_image
from maskformer.structures import DatasetMeta

TINY = [
    "model.num_classes=4",
    "model.num_queries=6",
    "model.hidden_dim=32",
    "model.nheads=2",
    "model.dim_feedforward=32",
    "model.dec_layers=1",
    "model.conv_dim=32",
    "model.mask_dim=32",
    "inference.min_size_test=48",
    "inference.max_size_test=96",
    "inference.object_mask_threshold=0.0",
]
META = DatasetMeta(name="t", class_names=["a", "b", "c", "d"], is_thing=[True, True, False, False])


class TinyBackbone(nn.Module):
    """Four strided convs meeting the backbone contract (res2..res5 at strides 4..32)."""

    def __init__(self):
        super().__init__()
        self.out_channels = {"res2": 8, "res3": 8, "res4": 16, "res5": 16}
        self.strides = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
        self.size_divisibility = 32
        self.stem = nn.Conv2d(3, 8, 4, stride=4)
        self.convs = nn.ModuleList([nn.Conv2d(8, 8, 2, 2), nn.Conv2d(8, 16, 2, 2), nn.Conv2d(16, 16, 2, 2)])

    def forward(self, x):
        feats, y = {}, self.stem(x)
        feats["res2"] = y
        for name, conv in zip(("res3", "res4", "res5"), self.convs):
            y = conv(y)
            feats[name] = y
        return feats


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = get_preset("maskformer_r18_synth", TINY)
    model = build_model(cfg, backbone=TinyBackbone()).eval()
    with torch.no_grad():  # spread the classes so the post-processors keep a mix of segments
        model.sem_seg_head.predictor.class_embed.weight.mul_(20)
    return model, cfg


def rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------------------ image input
def test_load_image_conversions(tmp_path):
    gray = rgb(5, 6)[..., 0]
    np.testing.assert_array_equal(load_image(gray), np.repeat(gray[..., None], 3, -1))
    rgba = np.dstack([rgb(5, 6), np.zeros((5, 6), np.uint8)])
    np.testing.assert_array_equal(load_image(rgba), rgba[..., :3])
    chw = torch.from_numpy(rgb(5, 6)).permute(2, 0, 1)
    np.testing.assert_array_equal(load_image(chw), rgb(5, 6))
    np.testing.assert_array_equal(load_image(np.full((2, 2, 3), 0.5)), np.full((2, 2, 3), 128))
    sixteen = (np.arange(30, dtype=np.uint16).reshape(5, 6) * 2000).astype(np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "16.png")
    np.testing.assert_array_equal(load_image(tmp_path / "16.png")[..., 1], sixteen >> 8)
    pal = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), mode="P")
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    np.testing.assert_array_equal(load_image(pal)[0, 1], [0, 0, 255])


def test_load_image_errors_name_the_input(tmp_path):
    with pytest.raises(ImageError, match="missing.jpg: image file not found"):
        load_image(tmp_path / "missing.jpg")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ImageError, match="bad.png: cannot read"):
        load_image(tmp_path / "bad.png")
    with pytest.raises(ImageError, match="shape"):
        load_image(np.zeros((5, 5, 2)))
    with pytest.raises(ImageError, match="outside 0..65535"):
        load_image(np.full((2, 2), -1))


def test_shortest_edge_size_rule():
    assert shortest_edge_size(480, 640, 512, 2048) == (512, 683)
    assert shortest_edge_size(640, 480, 512, 2048) == (683, 512)
    assert shortest_edge_size(100, 1000, 512, 2048) == (205, 2048)  # long side capped
    assert pipeline.tta_sizes(512, (0.5, 0.75, 1.0, 1.25, 1.5, 1.75), 2048) == ([256, 384, 512, 640, 768, 896], 3584)


# ------------------------------------------------------------------------------------------------ predictor
def manual_outputs(model, image, size):
    """The pipeline written out: resize, pad, forward (independent of Predictor's batching code)."""
    small = np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))
    x = torch.from_numpy(small.copy()).permute(2, 0, 1).float()[None]
    pad = (-(-size[0] // 32) * 32, -(-size[1] // 32) * 32)
    padded = torch.nn.functional.pad(x, (0, pad[1] - size[1], 0, pad[0] - size[0]))
    mean = torch.tensor([123.675, 116.280, 103.530]).view(1, 3, 1, 1)
    padded[..., size[0] :, :] = mean.view(1, 3, 1, 1)
    padded[..., :, size[1] :] = mean.view(1, 3, 1, 1)
    with torch.no_grad():
        return model(padded), pad


def test_predictor_semantic_matches_the_pipeline(tiny):
    model, cfg = tiny
    image = rgb(30, 50)
    pred = Predictor(model, config=cfg, meta=META, task="semantic")(image)
    outputs, pad = manual_outputs(model, image, (48, 80))
    scores = inf.semantic_inference(outputs, [(48, 80)], [(30, 50)], padded_size=pad)[0]
    assert pred.semantic.shape == (30, 50) and pred.semantic.dtype == torch.int64
    srt = scores.sort(0).values
    near_tie = (srt[-1] - srt[-2]) < 1e-5
    assert ((pred.semantic == scores.argmax(0)) | near_tie).all()


def test_predictor_panoptic_instance_and_pipeline_output(tiny):
    model, cfg = tiny
    images = [rgb(30, 50, 1), rgb(64, 40, 2)]
    pan = Predictor(model, config=cfg, meta=META, task="panoptic", batch_size=2)(images)
    for p, im in zip(pan, images):
        assert p.panoptic.shape == im.shape[:2] and p.panoptic.dtype == torch.int32
        assert {s["id"] for s in p.segments} == set(p.panoptic.unique().tolist()) - {0}
    assert sum(len(p.segments) for p in pan) > 0
    single = Predictor(model, config=cfg, meta=META, task="panoptic")  # batch of one: no padding to the other image
    one = single(images[0])
    entries = single.pipeline_output(images[0])
    assert len(entries) > 0 and [e["label"] for e in entries] == [
        META.class_names[s["category_id"]] for s in one.segments
    ]
    for e, s in zip(entries, one.segments):
        assert e["mask"].mode == "L" and (np.asarray(e["mask"]) == 255).sum() == s["area"]
    ins = Predictor(model, config=cfg, meta=META, task="instance")
    res = ins(images[1]).instances
    assert res.masks.shape[1:] == (64, 40) and (res.labels < 2).all()  # thing classes only
    assert (res.scores[:-1] >= res.scores[1:]).all()
    listed = ins.pipeline_output([images[1]], threshold=0.0)[0]
    assert len(listed) == len(res) and all(e["label"] in ("a", "b") for e in listed)


def test_predictor_rejects_a_mismatched_label_space(tiny):
    model, cfg = tiny
    wrong = DatasetMeta(name="w", class_names=["x", "y"])
    with pytest.raises(ValueError, match="4 classes"):
        Predictor(model, config=cfg, meta=wrong)(rgb(20, 20))
    with pytest.raises(ValueError, match="task"):
        Predictor(model, config=cfg, task="depth")


# ------------------------------------------------------------------------------------------------ TTA / windows
def test_tta_single_scale_equals_one_pass_and_flip_averages(tiny):
    model, _ = tiny
    image = rgb(30, 50, 3)
    one = pipeline.semantic_tta(model, image, min_sizes=[48], max_size=96, flip=False)
    x = pipeline.to_tensor(resize_image(image, (48, 80)), "cpu")
    direct = pipeline.forward_scores(model, [x], [(30, 50)])[0]
    torch.testing.assert_close(one, direct)
    both = pipeline.semantic_tta(model, image, min_sizes=[48], max_size=96, flip=True)
    flipped = pipeline.forward_scores(model, [x.flip(-1)], [(30, 50)])[0].flip(-1)
    torch.testing.assert_close(both, (direct + flipped) / 2)


def test_window_starts_cover_the_image():
    for length, window, stride in [(100, 32, 21), (32, 32, 21), (20, 32, 21), (65, 32, 32)]:
        starts = pipeline.window_starts(length, window, stride)
        covered = np.zeros(length, bool)
        for s in starts:
            covered[s : s + window] = True
        assert covered.all() and starts[-1] + min(window, length) == length and starts[0] == 0


class ConstantScores(nn.Module):
    """A per-pixel model scoring 1 for class 0 everywhere (to check the window averaging)."""

    size_divisibility = 32

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, batch):
        b, _, h, w = batch.tensor.shape
        sem = torch.zeros(b, 2, h // 4, w // 4)
        sem[:, 0] = 1
        return {"sem_seg": sem}


def test_sliding_window_averages_overlaps(tiny):
    image = torch.rand(3, 70, 90) * 255
    out = pipeline.sliding_window_semantic(ConstantScores(), image, window=(32, 32), output_size=(35, 45))
    torch.testing.assert_close(out[0], torch.ones(35, 45))
    model, _ = tiny
    whole = pipeline.sliding_window_semantic(model, image, window=(96, 96))  # one window = the image
    torch.testing.assert_close(whole, pipeline.forward_scores(model, [image], [(70, 90)])[0])


# ------------------------------------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from maskformer.checkpoint import save_pretrained
    from maskformer.convert import load_model

    model, cfg, _ = load_model("maskformer_r18_synth", overrides=TINY)
    with torch.no_grad():
        model.sem_seg_head.predictor.class_embed.weight.mul_(20)
    path = tmp_path_factory.mktemp("model")
    save_pretrained(model, cfg, META, path)
    return path


@pytest.fixture
def inputs(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(rgb(30, 50, 4)).save(folder / "one.png")
    Image.fromarray(rgb(40, 36, 5)[..., 0]).save(folder / "two.png")  # grayscale
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    return folder, tmp_path / "broken.jpg", tmp_path / "missing.png"


def test_cli_semantic_writes_pngs_and_reports_bad_files(model_dir, inputs, tmp_path, capsys):
    folder, broken, missing = inputs
    out = tmp_path / "out"
    code = main(["predict", "--model", str(model_dir), str(folder), str(broken), str(missing), "--out", str(out)])
    assert code == 1
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "missing.png" in err
    pred = Predictor(str(model_dir), task="semantic")(folder / "one.png")
    np.testing.assert_array_equal(read_label(out / "semantic" / "one.png"), pred.semantic.numpy())
    assert (out / "semantic" / "two.png").is_file() and (out / "overlay" / "one.png").is_file()


def test_cli_panoptic_and_instance_files(model_dir, inputs, tmp_path):
    folder, _, _ = inputs
    out = tmp_path / "pan"
    assert (
        main(["predict", "--model", str(model_dir), str(folder / "*.png"), "--task", "panoptic", "--out", str(out)])
        == 0
    )
    doc = json.loads((out / "panoptic.json").read_text())
    assert [a["file_name"] for a in doc["annotations"]] == ["one.png", "two.png"]
    for ann in doc["annotations"]:
        ids = read_panoptic(out / "panoptic" / ann["file_name"])
        assert {s["id"] for s in ann["segments_info"]} == set(np.unique(ids).tolist()) - {0}
        for s in ann["segments_info"]:
            assert s["area"] == int((ids == s["id"]).sum())
    out = tmp_path / "ins"
    assert (
        main(
            ["predict", "--model", str(model_dir), str(folder), "--task", "instance", "--out", str(out), "--no-overlay"]
        )
        == 0
    )
    results = json.loads((out / "instances.json").read_text())
    pred = Predictor(str(model_dir), task="instance")(folder / "one.png").instances
    mine = [r for r in results if r["image_id"] == "one"]
    assert len(mine) == len(pred) and not (out / "overlay").exists()
    for r, m in zip(mine, pred.masks):
        np.testing.assert_array_equal(fmt.rle_decode(r["segmentation"]), m.numpy())


def test_cli_empty_folder_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["predict", "--model", "x", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "holds no images" in capsys.readouterr().err


def test_cli_outputs_name_their_input_when_stems_collide(model_dir, tmp_path):
    for folder, seed in (("a", 1), ("b", 2)):
        (tmp_path / folder).mkdir()
        Image.fromarray(rgb(30, 40, seed)).save(tmp_path / folder / "photo.png")
    first, second = str(tmp_path / "a" / "photo.png"), str(tmp_path / "b" / "photo.png")
    for task in ("semantic", "panoptic", "instance"):
        out = tmp_path / task
        assert main(["predict", "--model", str(model_dir), first, second, "--task", task, "--out", str(out)]) == 0
        images = json.loads((out / "inputs.json").read_text())["images"]
        assert [(i["input_file"], i["image_id"]) for i in images] == [(first, "photo"), (second, "photo_1")]
        for image in images:
            assert image["files"] and all((out / f).is_file() for f in image["files"])
        assert images[1]["files"][-1] == "overlay/photo_1.png"
        if task == "semantic":  # each label file is the prediction of the input it is named after
            for image in images:
                expected = Predictor(str(model_dir), task="semantic")(image["input_file"]).semantic.numpy()
                np.testing.assert_array_equal(read_label(out / image["files"][0]), expected)
        elif task == "panoptic":
            anns = json.loads((out / "panoptic.json").read_text())["annotations"]
            assert [(a["file_name"], a["input_file"]) for a in anns] == [("photo.png", first), ("photo_1.png", second)]
        else:
            results = json.loads((out / "instances.json").read_text())
            pairs = {(r["image_id"], r["input_file"]) for r in results}
            assert pairs == {("photo", first), ("photo_1", second)}
