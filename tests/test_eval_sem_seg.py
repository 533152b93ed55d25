"""SemSegEvaluator against a float64 per-class-mask reference, a hand example, and panopticapi for PQ^St."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _eval_data import panopticapi_stats, same_results, write_panoptic
from _eval_data import semantic_reference as reference

from maskformer.evaluation import SemSegEvaluator

K = 7


def random_pairs(seed: int, n: int = 6, k: int = K, ignore: int = 255):
    """(pred, gt) pairs of mixed sizes; class k-1 is only ever predicted, class k-2 never appears at all."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        h, w = rng.integers(5, 40, 2)
        gt = rng.integers(0, k - 2, (h, w))
        gt[rng.random((h, w)) < 0.15] = ignore
        pred = np.where(rng.random((h, w)) < 0.6, gt, rng.integers(0, k, (h, w)))
        pred[pred == ignore] = 0
        pred[pred == k - 2] = 0
        pairs.append((pred.astype(np.uint8), gt.astype(np.uint8)))
    return pairs


def assert_matches_reference(res: dict, ref: dict) -> None:
    for key in ("mIoU", "mIoU_gt", "mACC", "pACC", "fwIoU"):
        assert abs(res[key] - ref[key]) < 1e-12, key
    for c, row in enumerate(res["per_class"]):
        for m in ("iou", "acc"):
            assert (math.isnan(row[m]) and math.isnan(ref[m][c])) or abs(row[m] - ref[m][c]) < 1e-12, (c, m)


def test_matches_per_class_mask_reference():
    pairs = random_pairs(0)
    ev = SemSegEvaluator(K, 255)
    for i, (pred, gt) in enumerate(pairs):  # numpy uint8, and torch int64 for half of them
        if i % 2:
            pred, gt = torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(gt.astype(np.int64))
        ev.update(pred, gt)
    res, ref = ev.compute(), reference(pairs, K, 255)
    assert_matches_reference(res, ref)
    assert res["per_class"][K - 1]["iou"] == 0.0 and math.isnan(res["per_class"][K - 2]["iou"])
    assert res["mIoU"] < res["mIoU_gt"]  # the predicted-only class counts in mIoU, not in mIoU_gt


def test_hand_example_two_miou_conventions():
    gt = np.array([[0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 255, 255]])
    pred = np.array([[0, 0, 0, 0, 2, 1, 1, 1, 2, 2, 3, 2]])  # class 3 only on ignore: absent, not 0
    ev = SemSegEvaluator(4, 255, ["a", "b", "c", "d"])
    ev.update(pred, gt)
    r = ev.compute()
    assert [row["iou"] for row in r["per_class"][:3]] == pytest.approx([0.8, 0.6, 0.0])
    assert math.isnan(r["per_class"][3]["iou"]) and math.isnan(r["per_class"][2]["acc"])
    assert r["mIoU"] == pytest.approx(1.4 / 3) and r["mIoU_gt"] == pytest.approx(0.7)
    assert (r["mACC"], r["pACC"], r["fwIoU"]) == pytest.approx((0.7, 0.7, 0.7))


def test_reduce_zero_label_equals_pre_reduced():
    rng = np.random.default_rng(1)
    raw = [rng.integers(0, K + 1, (20, 30)).astype(np.uint8) for _ in range(4)]
    for r in raw:
        r[rng.random(r.shape) < 0.05] = 255  # mmseg keeps a raw 255 ignored
    preds = [rng.integers(0, K, r.shape).astype(np.uint8) for r in raw]
    reduced = [np.where((r == 0) | (r == 255), 255, r.astype(np.int64) - 1).astype(np.uint8) for r in raw]
    a, b = SemSegEvaluator(K, 255, reduce_zero_label=True), SemSegEvaluator(K, 255)
    for p, r, d in zip(preds, raw, reduced):
        a.update(p, r)
        b.update(p, d)
    assert same_results(a.compute(), b.compute())
    assert_matches_reference(b.compute(), reference(list(zip(preds, reduced)), K, 255))


@pytest.mark.parametrize("dtype,ignore", [(np.uint16, 65535), (np.int64, -1), (np.int32, 255)])
def test_wide_and_signed_label_maps(dtype, ignore):
    pairs = random_pairs(2, ignore=255)
    ev = SemSegEvaluator(K, ignore)
    for pred, gt in pairs:
        ev.update(pred.astype(np.int64), np.where(gt == 255, ignore, gt.astype(np.int64)).astype(dtype))
    assert_matches_reference(ev.compute(), reference(pairs, K, 255))


def test_pq_stuff_equals_panopticapi(tmp_path):
    """PQ^St: each class one segment per image (id = class + 1), GT ignore = VOID; checked with panopticapi."""
    pairs = random_pairs(3, n=8)
    for pred, gt in pairs[:3]:  # make matches likely in some images
        pred[:] = np.where(gt == 255, pred, gt)
        pred[:2] = 1
    ev = SemSegEvaluator(K, 255)
    gts, preds = [], []
    for i, (pred, gt) in enumerate(pairs):
        ev.update(pred, gt)
        g = np.where(gt == 255, 0, gt.astype(np.int64) + 1)
        gts.append(
            (
                i,
                g,
                [
                    {"id": int(c), "category_id": int(c), "iscrowd": 0, "area": int((g == c).sum())}
                    for c in np.unique(g)
                    if c
                ],
            )
        )
        p = pred.astype(np.int64) + 1
        preds.append((i, p, [{"id": int(c), "category_id": int(c)} for c in np.unique(p)]))
    cats = [{"id": c + 1, "isthing": 0, "name": str(c)} for c in range(K)]
    oracle, counts = panopticapi_stats(
        write_panoptic(tmp_path, "gt", gts, cats), write_panoptic(tmp_path, "pred", preds, cats)
    )
    r = ev.compute()
    assert sum(v[0] for v in counts.values()) > 5 and sum(v[1] for v in counts.values()) > 5
    for ours, theirs in (("PQ_St", "pq"), ("SQ_St", "sq"), ("RQ_St", "rq")):
        assert abs(r[ours] - oracle["All"][theirs]) < 1e-9
    for c in range(K):
        for m in ("pq", "sq", "rq"):
            assert abs(r["per_class"][c][m] - oracle["per_class"][c + 1][m]) < 1e-9


def test_bad_input_is_a_clear_error():
    ev = SemSegEvaluator(K, 255)
    gt = np.zeros((4, 5), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"image a\.png: predicted labels span \[7, 7\], outside the classes \[0, 7\)"):
        ev.update(np.full((4, 5), K), gt, name="a.png")
    with pytest.raises(ValueError, match=r"image b: prediction size \(4, 4\) != ground-truth size \(4, 5\)"):
        ev.update(np.zeros((4, 4), dtype=np.uint8), gt, name="b")
    with pytest.raises(ValueError, match=r"image c: ground-truth values \[9\] are neither classes 0\.\.6 nor ignore"):
        ev.update(np.zeros((4, 5), dtype=np.uint8), np.full((4, 5), 9, dtype=np.uint8), name="c")
    with pytest.raises(ValueError, match=r"image d: ground-truth values \[-3\]"):
        ev.update(np.zeros((4, 5), dtype=np.uint8), np.full((4, 5), -3), name="d")
    with pytest.raises(ValueError, match=r"image e: prediction must be integer"):
        ev.update(np.zeros((4, 5)), gt, name="e")
    assert ev.num_images == 0 and ev.confusion.sum() == 0


def test_run_length_and_per_pixel_counts_agree():
    from maskformer.evaluation.sem_seg import ConfusionCounter

    rng = np.random.default_rng(4)
    gt = np.repeat(rng.integers(0, K, (30, 8)), 5, axis=1)  # piecewise-constant rows: long runs
    gt[rng.random(gt.shape) < 0.05] = 255
    pred = np.repeat(rng.integers(0, K, (30, 10)), 4, axis=1)
    dense = ConfusionCounter(K, 255, run_fraction=0).counts(pred, gt)
    runs = ConfusionCounter(K, 255, run_fraction=1).counts(pred, gt)
    assert dense.dtype == runs.dtype == np.int64 and np.array_equal(dense, runs) and dense.sum() == gt.size
