"""PanopticEvaluator against hand-computed cases (one per panopticapi rule) and against panopticapi itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _eval_data import CATEGORIES, panopticapi_stats, random_panoptic_image, write_panoptic

from maskformer.evaluation import PanopticEvaluator, score_panoptic

pytest.importorskip("panopticapi.evaluation", reason="panopticapi-lite (dev oracle) is not installed")


def strip(*runs: tuple[int, int]) -> np.ndarray:
    """A 1 x N id map from (id, length) runs."""
    return np.concatenate([np.full(n, i, dtype=np.int64) for i, n in runs])[None]


def seg(i, c, area=None, crowd=0):
    d = {"id": i, "category_id": c, "iscrowd": crowd}
    return d if area is None else {**d, "area": area}


def gt_segs(ids: np.ndarray, *specs):
    """GT segments (id, category[, crowd]) with the PNG area."""
    return [seg(s[0], s[1], int((ids == s[0]).sum()), s[2] if len(s) > 2 else 0) for s in specs]


# (name, gt ids, gt segments, pred ids, pred segments, expected {category: (tp, fp, fn, iou_sum)})
def rule_cases():
    cases = []
    g = strip((5, 100))
    p = strip((7, 60), (0, 40))
    cases.append(
        ("asymmetric union: pred VOID inside g stays", g, gt_segs(g, (5, 1)), p, [seg(7, 1)], {1: (1, 0, 0, 0.6)})
    )
    g = strip((5, 60), (6, 40))
    p = strip((0, 20), (7, 60), (0, 20))
    cases.append(
        (
            "IoU exactly 0.5 is no match",
            g,
            gt_segs(g, (5, 1), (6, 3)),
            p,
            [seg(7, 1)],
            {1: (0, 1, 1, 0), 3: (0, 0, 1, 0)},
        )
    )
    for void, fp in ((100, 1), (101, 0)):
        g = strip((0, void), (5, 300 - void))
        p = strip((7, 200), (0, 100))
        exp = {1: (0, fp, 0, 0), 20: (0, 0, 1, 0)}
        cases.append((f"{void} of 200 predicted pixels on VOID", g, gt_segs(g, (5, 20)), p, [seg(7, 1)], exp))
    g = strip((0, 60), (9, 50), (5, 90))
    p = strip((7, 200))
    cases.append(
        ("VOID + same-category crowd add up", g, gt_segs(g, (9, 1, 1), (5, 20)), p, [seg(7, 1)], {20: (0, 0, 1, 0)})
    )
    cases.append(
        (
            "crowd of another category forgives nothing",
            g,
            gt_segs(g, (9, 3, 1), (5, 20)),
            p,
            [seg(7, 1)],
            {1: (0, 1, 0, 0), 20: (0, 0, 1, 0)},
        )
    )
    g = strip((11, 100), (12, 100))
    p = strip((7, 100), (0, 100))
    cases.append(
        (
            "only the last crowd of a category counts (A then B)",
            g,
            gt_segs(g, (11, 1, 1), (12, 1, 1)),
            p,
            [seg(7, 1)],
            {1: (0, 1, 0, 0)},
        )
    )
    cases.append(
        (
            "only the last crowd of a category counts (B then A)",
            g,
            gt_segs(g, (12, 1, 1), (11, 1, 1)),
            p,
            [seg(7, 1)],
            {},
        )
    )
    g = strip((5, 100), (0, 50))
    p = strip((7, 100), (0, 50))
    cases.append(("GT area from JSON", g, [seg(5, 1, area=150)], p, [seg(7, 1)], {1: (1, 0, 0, 100 / 150)}))
    g = strip((5, 100))
    p = strip((0, 100))
    cases.append(("GT left entirely VOID is a FN", g, gt_segs(g, (5, 1)), p, [], {1: (0, 0, 1, 0)}))
    p = strip((7, 70), (8, 30))
    cases.append(
        (
            "two predicted segments of one stuff class",
            g,
            gt_segs(g, (5, 20)),
            p,
            [seg(7, 20), seg(8, 20)],
            {20: (1, 1, 0, 0.7)},
        )
    )
    g = strip((5, 50), (6, 50))
    p = strip((7, 100))
    cases.append(
        ("merged prediction matches neither GT", g, gt_segs(g, (5, 1), (6, 1)), p, [seg(7, 1)], {1: (0, 1, 2, 0)})
    )
    g = strip((5, 100))
    p = strip((7, 50), (8, 50))
    cases.append(
        ("GT split in two halves: IoU .5 each", g, gt_segs(g, (5, 1)), p, [seg(7, 1), seg(8, 1)], {1: (0, 2, 1, 0)})
    )
    g = strip((5, 60), (99, 40))
    p = strip((7, 100))
    cases.append(("unlisted GT id is not VOID", g, gt_segs(g, (5, 1)), p, [seg(7, 1)], {1: (1, 0, 0, 0.6)}))
    g = strip((5, 100))
    p = strip((7, 100))
    cases.append(
        (
            "category only predicted / only in GT",
            g,
            gt_segs(g, (5, 21)),
            p,
            [seg(7, 8)],
            {21: (0, 0, 1, 0), 8: (0, 1, 0, 0)},
        )
    )
    return cases


CASES = rule_cases()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_rule_by_hand_and_panopticapi(case, tmp_path):
    name, g, gs, p, ps, expected = case
    ev = PanopticEvaluator(CATEGORIES)
    ev.update(p, ps, g, gs, image_id=1)
    got = {c["id"]: (int(ev.tp[i]), int(ev.fp[i]), int(ev.fn[i]), float(ev.iou[i])) for i, c in enumerate(CATEGORIES)}
    for cat, (tp, fp, fn, iou) in got.items():
        want = expected.get(cat, (0, 0, 0, 0.0))
        assert (tp, fp, fn) == want[:3], (name, cat)
        assert iou == pytest.approx(want[3], abs=1e-12), (name, cat)
    gt_json = write_panoptic(tmp_path, "gt", [(1, g, gs)])
    pred_json = write_panoptic(tmp_path, "pred", [(1, p, ps)])
    _, oracle = panopticapi_stats(gt_json, pred_json)
    for cat, (tp, fp, fn, iou) in oracle.items():
        assert got[cat][:3] == (tp, fp, fn) and got[cat][3] == pytest.approx(iou, abs=1e-12), (name, cat)


def test_pq_sq_rq_formulas_and_empty_split():
    ev = PanopticEvaluator(CATEGORIES)
    ev.tp[0], ev.iou[0], ev.fp[0], ev.fn[0] = 2, 1.5, 1, 1  # reference example: PQ .5, SQ .75, RQ .667
    ev.fp[1] = 1  # FP-only category: counted with 0
    r = ev.compute()
    assert r["per_class"][1]["pq"] == pytest.approx(0.5) and r["per_class"][1]["sq"] == pytest.approx(0.75)
    assert r["per_class"][1]["rq"] == pytest.approx(2 / 3)
    assert r["Things"] == pytest.approx({"pq": 0.25, "sq": 0.375, "rq": 1 / 3, "n": 2})
    assert r["Stuff"] == {"pq": -1.0, "sq": -1.0, "rq": -1.0, "n": 0}  # documented deviation (hotcoco's convention)
    assert r["PQ"] == r["All"]["pq"] == r["PQ_th"] and r["PQ_st"] == -1.0


def random_dataset(seed: int, n: int):
    rng = np.random.default_rng(seed)
    return [random_panoptic_image(rng, i) for i in range(n)]


def test_equals_panopticapi_on_random_data(tmp_path):
    images = random_dataset(0, 40)
    gt_json = write_panoptic(tmp_path, "gt", [(i, g, gs) for i, g, gs, _, _ in images])
    pred_json = write_panoptic(tmp_path, "pred", [(i, p, ps) for i, _, _, p, ps in images])
    oracle, counts = panopticapi_stats(gt_json, pred_json)
    ev = PanopticEvaluator(CATEGORIES)
    for i, g, gs, p, ps in images:
        ev.update(torch.from_numpy(p) if i % 4 == 0 else p, ps, g, gs, image_id=i)
    mem = ev.compute()
    assert sum(t for t, *_ in counts.values()) > 20 and sum(f for _, f, *_ in counts.values()) > 20  # rules exercised
    for name in ("All", "Things", "Stuff"):
        assert mem[name]["n"] == oracle[name]["n"]
        for m in ("pq", "sq", "rq"):
            assert abs(mem[name][m] - oracle[name][m]) < 1e-9, (name, m)
    for cat, r in oracle["per_class"].items():
        for m in ("pq", "sq", "rq"):
            assert abs(mem["per_class"][cat][m] - r[m]) < 1e-9
        assert (mem["per_class"][cat]["tp"], mem["per_class"][cat]["fp"], mem["per_class"][cat]["fn"]) == counts.get(
            cat, (0, 0, 0, 0)
        )[:3]
    files = score_panoptic(gt_json, pred_json, workers=0)
    files2 = score_panoptic(gt_json, pred_json, workers=2)
    assert files == mem and files2 == mem  # the two ways in agree exactly


def test_bad_input_names_the_image(tmp_path):
    g = strip((5, 10))
    ev = PanopticEvaluator(CATEGORIES)
    with pytest.raises(ValueError, match=r"image 42: .*ids missing from its segments_info"):
        ev.update(strip((7, 5), (9, 5)), [seg(7, 1)], g, gt_segs(g, (5, 1)), image_id=42)
    with pytest.raises(ValueError, match=r"image 42: prediction segment ids \[9\] are in segments_info but not"):
        ev.update(strip((7, 10)), [seg(7, 1), seg(9, 1)], g, gt_segs(g, (5, 1)), image_id=42)
    with pytest.raises(ValueError, match=r"image 42: prediction segments have unknown category_id \[2\]"):
        ev.update(strip((7, 10)), [seg(7, 2)], g, gt_segs(g, (5, 1)), image_id=42)
    with pytest.raises(ValueError, match=r"image 42: prediction size \(1, 9\) != ground-truth size \(1, 10\)"):
        ev.update(strip((7, 9)), [seg(7, 1)], g, gt_segs(g, (5, 1)), image_id=42)
    with pytest.raises(ValueError, match=r"image 42: ground truth segments_info repeats"):
        ev.update(strip((7, 10)), [seg(7, 1)], g, gt_segs(g, (5, 1), (5, 1)), image_id=42)
    assert ev.num_images == 0
    gt_json = write_panoptic(tmp_path, "gt", [(1, g, gt_segs(g, (5, 1))), (2, g, gt_segs(g, (5, 1)))])
    pred_json = write_panoptic(tmp_path, "pred", [(1, strip((7, 10)), [seg(7, 1)])])
    with pytest.raises(ValueError, match=r"no prediction for the ground-truth image\(s\) with image_id \[2\]"):
        score_panoptic(gt_json, pred_json, workers=0)
    pred_json = write_panoptic(tmp_path, "pred", [(1, strip((7, 9)), [seg(7, 1)]), (2, strip((7, 10)), [seg(7, 1)])])
    with pytest.raises(ValueError, match=r"image 1: prediction PNG .*1\.png is \(1, 9\)"):
        score_panoptic(gt_json, pred_json, workers=2)


def test_id_paths_agree():
    """Small ids (direct histogram), colour ids (lookup table) and ids >= 2^24 (np.unique) give the same counts."""
    rng = np.random.default_rng(3)
    _, g, gs, p, ps = random_panoptic_image(rng, 1)
    results = []
    for offset in (0, 1 << 20, 1 << 30):
        ev = PanopticEvaluator(CATEGORIES)
        gs2 = [{**s, "id": s["id"] + offset} for s in gs]
        ps2 = [{**s, "id": s["id"] + offset} for s in ps]
        ev.update(np.where(p > 0, p + offset, 0), ps2, np.where(g > 0, g + offset, 0), gs2)
        results.append(ev.compute())
    assert results[0] == results[1] == results[2]


def test_run_length_and_per_pixel_counts_agree():
    """The joint histogram is the same whether pixels are counted one by one or per run of equal (gt, pred)."""
    from maskformer.evaluation.panoptic import PairCounter, segment_ids

    rng = np.random.default_rng(5)
    for i in range(6):
        _, g, gs, p, ps = random_panoptic_image(rng, i, 40, 50)
        args = (g, p, segment_ids(gs, "gt", i), segment_ids(ps, "pred", i))
        dense, runs = PairCounter(run_fraction=0).counts(*args), PairCounter(run_fraction=1).counts(*args)
        assert dense.dtype == runs.dtype == np.int64 and np.array_equal(dense, runs)
        assert dense.sum() == g.size
