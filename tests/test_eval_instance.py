"""InstanceEvaluator (COCO mask AP via pycocotools) on hand-made cases with known AP."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pycocotools", reason="pycocotools (the 'coco' extra) is not installed")

from maskformer.evaluation import InstanceEvaluator  # noqa: E402

CATS = [{"id": 1, "name": "a"}, {"id": 5, "name": "b"}]


def box_mask(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def test_perfect_predictions_give_ap_one():
    gt = np.stack([box_mask(64, 64, 0, 20, 0, 20), box_mask(64, 64, 30, 60, 30, 60)])
    ev = InstanceEvaluator(CATS)
    ev.update(pred_masks=gt, pred_scores=[0.9, 0.8], pred_labels=[1, 5], gt_masks=gt, gt_labels=[1, 5], image_id=3)
    r = ev.compute()
    assert r["AP"] == pytest.approx(1.0) and r["AP50"] == pytest.approx(1.0)
    assert r["per_class"][1]["ap"] == pytest.approx(1.0) and r["per_class"][5]["ap"] == pytest.approx(1.0)


def test_one_hit_one_false_positive_one_miss():
    """Two GT of class 1; the top-scored detection is exact, the second misses: precision 1 up to recall .5.

    COCO interpolates at 101 recall points, so AP = 51 / 101 at every IoU threshold.
    """
    a, b = box_mask(64, 64, 0, 20, 0, 20), box_mask(64, 64, 30, 60, 30, 60)
    ev = InstanceEvaluator(CATS)
    fp = box_mask(64, 64, 40, 64, 0, 20)
    ev.update(
        pred_masks=np.stack([a, fp]),
        pred_scores=[0.9, 0.5],
        pred_labels=[1, 1],
        gt_masks=np.stack([a, b]),
        gt_labels=[1, 1],
    )
    r = ev.compute()
    assert r["AP"] == pytest.approx(51 / 101) and r["AP75"] == pytest.approx(51 / 101)
    assert r["per_class"][5]["ap"] == -1.0  # no GT of class 5: undefined


def test_bad_input():
    ev = InstanceEvaluator(CATS)
    m = np.zeros((1, 8, 8), dtype=bool)
    with pytest.raises(ValueError, match=r"image 7: unknown category ids \[2\]"):
        ev.update(pred_masks=m, pred_scores=[1.0], pred_labels=[2], gt_masks=m, gt_labels=[1], image_id=7)
    with pytest.raises(ValueError, match=r"image 7: predicted masks \(8, 9\) != ground-truth masks \(8, 8\)"):
        ev.update(
            pred_masks=np.zeros((1, 8, 9), bool),
            pred_scores=[1.0],
            pred_labels=[1],
            gt_masks=m,
            gt_labels=[1],
            image_id=7,
        )
