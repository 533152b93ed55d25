"""Scoring from files (`score_semantic`, `score_panoptic`, `maskformer score`) equals the in-memory evaluators."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _eval_data import CATEGORIES, panopticapi_stats, random_panoptic_image, same_results, write_panoptic
from PIL import Image

from maskformer.cli import main
from maskformer.evaluation import PanopticEvaluator, SemSegEvaluator, score_panoptic, score_semantic
from maskformer.io import read_label, read_panoptic

K = 6


def write_semantic(tmp_path, n: int = 5, wide: bool = False):
    """GT and prediction label-map folders (one GT 16-bit when `wide`); returns (gt_dir, pred_dir, pairs)."""
    rng = np.random.default_rng(0)
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    pairs = []
    for i in range(n):
        h, w = rng.integers(8, 30, 2)
        gt = rng.integers(0, K, (h, w)).astype(np.uint8)
        gt[rng.random((h, w)) < 0.1] = 255
        pred = np.where(rng.random((h, w)) < 0.7, gt % K, rng.integers(0, K, (h, w))).astype(np.uint8)
        gt_img = Image.fromarray(gt.astype(np.uint16)) if wide and i == 0 else Image.fromarray(gt)
        gt_img.save(gt_dir / f"img{i}.png")
        Image.fromarray(pred).save(pred_dir / f"img{i}.png")
        pairs.append((pred, gt))
    Image.fromarray(pairs[0][0]).save(pred_dir / "extra.png")  # predictions without GT are ignored
    return gt_dir, pred_dir, pairs


def test_semantic_files_equal_in_memory(tmp_path):
    gt_dir, pred_dir, pairs = write_semantic(tmp_path, wide=True)
    ev = SemSegEvaluator(K, 255)
    for pred, gt in pairs:
        ev.update(pred, gt)
    expected = ev.compute()
    assert same_results(score_semantic(gt_dir, pred_dir, num_classes=K, workers=0), expected)
    assert same_results(score_semantic(gt_dir, pred_dir, num_classes=K, workers=2), expected)


def test_semantic_file_errors_name_the_image(tmp_path):
    gt_dir, pred_dir, _ = write_semantic(tmp_path)
    (pred_dir / "img3.png").unlink()
    with pytest.raises(ValueError, match=r"no prediction in .* for the ground-truth image\(s\) \['img3'\]"):
        score_semantic(gt_dir, pred_dir, num_classes=K, workers=0)
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(pred_dir / "img3.png")
    with pytest.raises(ValueError, match=r"img3\.png: a label map must have one channel"):
        score_semantic(gt_dir, pred_dir, num_classes=K, workers=2)
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(pred_dir / "img3.png")
    with pytest.raises(ValueError, match=r"image img3: prediction size \(8, 8\) != ground-truth size"):
        score_semantic(gt_dir, pred_dir, num_classes=K, workers=0)


def test_cli_score_semantic_writes_json(tmp_path, capsys):
    gt_dir, pred_dir, _ = write_semantic(tmp_path)
    out = tmp_path / "r.json"
    code = main(["score", "--gt", str(gt_dir), "--pred", str(pred_dir), "--num-classes", str(K), "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    expected = score_semantic(gt_dir, pred_dir, num_classes=K, workers=0)
    assert report["task"] == "semantic" and report["mIoU"] == expected["mIoU"] and len(report["per_class"]) == K
    assert f"mIoU {100 * expected['mIoU']:.2f}" in capsys.readouterr().out
    assert main(["score", "--gt", str(gt_dir), "--pred", str(tmp_path / "nope"), "--num-classes", "6"]) == 1
    assert "prediction folder" in capsys.readouterr().err


def shifted_prediction(ids: np.ndarray, segments: list[dict], shift: int) -> tuple[np.ndarray, list[dict]]:
    """A prediction made from a GT: shifted pixels, sequential ids, crowd segments dropped (left VOID)."""
    moved = np.roll(ids, shift, axis=1)
    pred, segs = np.zeros_like(moved), []
    for s in segments:
        if not s["iscrowd"] and (moved == s["id"]).any():
            pred[moved == s["id"]] = len(segs) + 1
            segs.append({"id": len(segs) + 1, "category_id": s["category_id"]})
    return pred, segs


def test_coco_sample_equals_panopticapi_and_in_memory(shared_data, tmp_path):
    root = shared_data / "coco-panoptic-sample"
    gt_json = root / "annotations" / "panoptic_val2017.json"
    gt_folder = root / "panoptic_val2017"
    gt = json.loads(gt_json.read_text())
    ev = PanopticEvaluator(gt["categories"])
    preds = []
    for k, ann in enumerate(gt["annotations"]):
        ids = read_panoptic(gt_folder / ann["file_name"])
        pred, segs = shifted_prediction(ids.astype(np.int64), ann["segments_info"], 9 + 20 * k)
        ev.update(pred, segs, ids, ann["segments_info"], image_id=ann["image_id"])
        preds.append((ann["image_id"], pred, segs))
    pred_json = write_panoptic(tmp_path, "pred", preds, gt["categories"])
    local_gt = tmp_path / "gt.json"  # panopticapi's folder convention: the JSON path without .json
    local_gt.write_text(gt_json.read_text())
    (tmp_path / "gt").symlink_to(gt_folder)
    oracle, _ = panopticapi_stats(local_gt, pred_json)
    files = score_panoptic(gt_json, pred_json, gt_folder=gt_folder, workers=0)
    assert files == ev.compute()
    assert 0.2 < files["PQ"] < 0.95
    for name in ("All", "Things", "Stuff"):
        for m in ("pq", "sq", "rq"):
            assert abs(files[name][m] - oracle[name][m]) < 1e-9


def test_ade_sample_reduce_zero_label_from_files(shared_data, tmp_path):
    ann_dir = shared_data / "ade20k-sample" / "ADEChallengeData2016" / "annotations" / "validation"
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    ev = SemSegEvaluator(150, 255)
    for path in sorted(ann_dir.glob("*.png")):
        raw = np.asarray(Image.open(path))
        pred = (np.roll(raw, 7, axis=0).astype(np.int64) - 1) % 150  # a plausible, imperfect prediction
        Image.fromarray(pred.astype(np.uint8)).save(pred_dir / path.name)
        ev.update(pred, np.where(raw == 0, 255, raw.astype(np.int64) - 1))  # pre-reduced GT
    files = score_semantic(ann_dir, pred_dir, num_classes=150, reduce_zero_label=True, workers=0)
    assert same_results(files, ev.compute()) and 0.2 < files["mIoU"] < 0.95


def test_cli_score_panoptic(tmp_path, capsys):
    cats = [{"id": 1, "isthing": 1, "name": "a"}, {"id": 2, "isthing": 0, "name": "b"}]
    g = np.array([[1, 1, 2, 2, 0]])
    p = np.array([[3, 3, 3, 4, 4]])
    gs = [{"id": 1, "category_id": 1, "iscrowd": 0, "area": 2}, {"id": 2, "category_id": 2, "iscrowd": 0, "area": 2}]
    ps = [{"id": 3, "category_id": 1}, {"id": 4, "category_id": 2}]
    gt_json = write_panoptic(tmp_path, "gt", [(5, g, gs)], cats)
    pred_json = write_panoptic(tmp_path, "pred", [(5, p, ps)], cats)
    out = tmp_path / "pq.json"
    assert main(["score", "--gt", str(gt_json), "--pred", str(pred_json), "--workers", "0", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    # thing: IoU 2 / 3 -> TP; stuff: |p| 2, |g| 2, overlap 1, p on VOID 1 -> IoU 1 / 2 -> no match (FN + FP)
    assert report["PQ_th"] == pytest.approx(2 / 3) and report["PQ_st"] == 0.0 and report["All"]["n"] == 2
    assert report["per_class"]["2"]["fp"] == 1 and report["per_class"]["2"]["fn"] == 1
    assert "Things    |  66.67" in capsys.readouterr().out
    pred_json.write_text(json.dumps({"annotations": [], "categories": cats}))
    assert main(["score", "--gt", str(gt_json), "--pred", str(pred_json)]) == 1
    assert "no prediction for the ground-truth image(s) with image_id [5]" in capsys.readouterr().err


def test_unreadable_png_names_the_file(tmp_path):
    g = np.array([[1, 1, 0]])
    segs = [{"id": 1, "category_id": 1, "iscrowd": 0, "area": 2}]
    cats = [{"id": 1, "isthing": 1, "name": "a"}]
    gt_json = write_panoptic(tmp_path, "gt", [(3, g, segs)], cats)
    pred_json = write_panoptic(tmp_path, "pred", [(3, g, [{"id": 1, "category_id": 1}])], cats)
    (tmp_path / "pred" / "3.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"pred/3\.png: cannot read the image"):
        score_panoptic(gt_json, pred_json, workers=0)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "I;16"])
def test_pixel_reading_equals_pillow_arrays(mode, tmp_path):
    """read_panoptic / read_label equal rgb2id(np.asarray) / np.asarray exactly, as int32 (the maskformer.io rule)."""
    rng = np.random.default_rng(0)
    if mode in ("RGB", "RGBA"):
        rgb = rng.integers(0, 256, (13, 17, len(mode)), dtype=np.uint8)
        Image.fromarray(rgb).save(tmp_path / "x.png")
        expected = rgb[..., 0] + 256 * rgb[..., 1].astype(np.uint32) + 65536 * rgb[..., 2].astype(np.uint32)
        got = read_panoptic(tmp_path / "x.png")
    else:
        arr = rng.integers(0, 60000 if mode == "I;16" else 256, (13, 17)).astype(
            np.uint16 if mode == "I;16" else np.uint8
        )
        img = Image.fromarray(arr)
        img = img.convert("P") if mode == "P" else img
        img.save(tmp_path / "x.png")
        expected = np.asarray(Image.open(tmp_path / "x.png"))
        got = read_label(tmp_path / "x.png")
    assert got.dtype == np.int32
    assert np.array_equal(got, expected)


def test_panoptic_scores_equal_with_threads_and_either_decoder(tmp_path, monkeypatch):
    """workers=0 decodes in threads: with the fast decoders or Pillow, and with the reads done one by one in this
    thread, the results equal the in-memory evaluator's to the last digit."""
    import maskformer.evaluation.files as files
    from maskformer import io as fmt

    rng = np.random.default_rng(3)
    images = [random_panoptic_image(rng, i, 40, 56) for i in range(16)]
    ev = PanopticEvaluator(CATEGORIES)
    for image_id, g, gs, p, ps in images:
        ev.update(p, ps, g, gs, image_id=image_id)
    gt_json = write_panoptic(tmp_path, "gt", [(i, g, gs) for i, g, gs, _, _ in images])
    pred_json = write_panoptic(tmp_path, "pred", [(i, p, ps) for i, _, _, p, ps in images])
    expected = ev.compute()
    assert score_panoptic(gt_json, pred_json, workers=0) == expected
    monkeypatch.setattr(fmt, "png_decoders", lambda: ())
    assert score_panoptic(gt_json, pred_json, workers=0) == expected
    monkeypatch.setattr(files, "threaded_reads", lambda read, tasks: ((t, read(t)) for t in tasks))
    assert score_panoptic(gt_json, pred_json, workers=0) == expected


def test_threaded_reads_keep_order_and_raise_the_first_error_in_order():
    import time

    from maskformer.evaluation.files import threaded_reads

    def read(i):
        time.sleep(0.002 * (10 - i))  # later tasks finish first
        if i == 7:
            raise ValueError("image 7: broken")
        return i * i

    got = []
    with pytest.raises(ValueError, match="image 7"):
        for task, value in threaded_reads(read, range(10), threads=3, ahead=4):
            got.append((task, value))
    assert got == [(i, i * i) for i in range(7)]


def test_score_never_imports_torch(tmp_path):
    """`maskformer score` on files needs numpy and a PNG decoder only: importing it and scoring both tasks leave torch
    unloaded, and (start-up time) the model config and, when libspng decodes, Pillow."""
    import subprocess
    import sys

    (tmp_path / "sem").mkdir()
    gt_dir, pred_dir, _ = write_semantic(tmp_path / "sem")
    cats = [{"id": 1, "isthing": 1, "name": "a"}, {"id": 2, "isthing": 0, "name": "b"}]
    gs = [{"id": 1, "category_id": 1, "iscrowd": 0, "area": 2}, {"id": 2, "category_id": 2, "iscrowd": 0, "area": 2}]
    ps = [{"id": 3, "category_id": 1}, {"id": 4, "category_id": 2}]
    gt_json = write_panoptic(tmp_path, "gt", [(5, np.array([[1, 1, 2, 2, 0]]), gs)], cats)
    pred_json = write_panoptic(tmp_path, "pred", [(5, np.array([[3, 3, 3, 4, 4]]), ps)], cats)
    code = f"""
import sys
from maskformer.commands import score
import maskformer.evaluation, maskformer.evaluation.files, maskformer.evaluation.report
assert 'torch' not in sys.modules, 'importing score imported torch'
from maskformer.cli import main
assert main(['score', '--gt', {str(gt_dir)!r}, '--pred', {str(pred_dir)!r}, '--num-classes', '{K}']) == 0
assert main(['score', '--gt', {str(gt_json)!r}, '--pred', {str(pred_json)!r}, '--workers', '0']) == 0
assert 'torch' not in sys.modules, 'scoring imported torch'
from maskformer.io import png_decoders
assert 'PIL' not in sys.modules or not png_decoders(), 'scoring PNGs that a fast decoder decodes imported Pillow'
assert 'maskformer.config' not in sys.modules, 'scoring imported the model config'
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "mIoU" in done.stdout and "Things    |  66.67" in done.stdout


def test_predict_panoptic_output_scores_against_coco_ground_truth_as_written(tmp_path, capsys):
    """`maskformer predict --task panoptic` (image_id = file stem) scored by `maskformer score` against a COCO
    ground truth (integer image ids) with no edits: predictions matched by file name, numbers as panopticapi's on the
    hand-matched pairs; a prediction for an image the ground truth lacks is one error naming it."""
    import shutil

    import torch

    from maskformer.checkpoint import save_pretrained
    from maskformer.config import get_preset
    from maskformer.data.synthetic import SynthConfig
    from maskformer.modeling import build_model

    data, model_dir, out = tmp_path / "synth", tmp_path / "model", tmp_path / "pred"
    assert main(["synth", "--out", str(data), "--train", "1", "--val", "2", "--size", "64"]) == 0
    tiny = ["model.num_queries=6", "model.hidden_dim=32", "model.nheads=2", "model.dim_feedforward=32",
            "model.dec_layers=1", "model.conv_dim=32", "model.mask_dim=32", "inference.min_size_test=64",
            "inference.max_size_test=64", "inference.object_mask_threshold=0.0"]  # fmt: skip
    torch.manual_seed(0)
    cfg = get_preset("maskformer_r18_synth", tiny)
    save_pretrained(build_model(cfg).eval(), cfg, SynthConfig().meta(), model_dir)  # random weights, synth classes
    predict = ["predict", "--model", str(model_dir), "--task", "panoptic", "--no-overlay", "--out", str(out)]
    assert main([*predict, str(data / "val")]) == 0
    gt_json, gt_folder = data / "annotations" / "panoptic_val.json", data / "panoptic_val"
    gt = json.loads(gt_json.read_text())
    assert {type(a["image_id"]) for a in gt["annotations"]} == {int}  # ids differ from predict's (file stems)
    report = tmp_path / "pq.json"
    score = ["score", "--gt", str(gt_json), "--gt-folder", str(gt_folder), "--workers", "0"]
    assert main([*score, "--pred", str(out / "panoptic.json"), "--json", str(report)]) == 0
    ours = json.loads(report.read_text())

    by_stem = {a["file_name"][:-4]: a["image_id"] for a in gt["annotations"]}  # the hand edit score spares the user
    pred = json.loads((out / "panoptic.json").read_text())
    for ann in pred["annotations"]:
        ann["image_id"] = by_stem[ann["image_id"]]
    (tmp_path / "edited.json").write_text(json.dumps(pred))
    ref, _ = panopticapi_stats(gt_json, tmp_path / "edited.json", gt_folder, out / "panoptic")
    assert ours["num_images"] == 2 and ours["All"]["n"] == ref["All"]["n"] > 0
    for m in ("pq", "sq", "rq"):
        assert ours["All"][m] == ref["All"][m]

    shutil.copy(data / "train" / "train_00000.png", tmp_path / "stray.png")  # an image the ground truth lacks
    assert main([*predict, str(data / "val"), str(tmp_path / "stray.png")]) == 0
    capsys.readouterr()
    assert main([*score, "--pred", str(out / "panoptic.json")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "error: 1 prediction(s) match no ground-truth image by image_id or file name: 'stray' (stray.png)"
