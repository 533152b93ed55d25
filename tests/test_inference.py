"""Post-processing against float64 references written straight from the rules (reference sections 5.2, 5.3, 11.8).

Every check of a label map, panoptic or instance result runs on the plain reference (fast=False) and on the tiled
fast path (fast=True).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from maskformer import fast_postprocess as rs
from maskformer import inference as inf
from maskformer.structures import DatasetMeta


# ------------------------------------------------------------------------------------------------ float64 references
def ref_axis(n_in: int, n_out: int, scale: float | None = None):
    """Source taps of 1-D linear resampling, align_corners=False: (i0, i1, l0, l1) for every output index."""
    s = n_in / n_out if scale is None else 1.0 / scale
    src = np.maximum((np.arange(n_out) + 0.5) * s - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    l1 = np.clip(src - i0, 0.0, 1.0)
    return i0, i1, 1.0 - l1, l1


def ref_resize(x: np.ndarray, size, scale=None) -> np.ndarray:
    """Bilinear resize of [C, h, w] float64 (loops over output rows and columns)."""
    (h, w), (H, W) = x.shape[-2:], size
    if (h, w) == (H, W):
        return x
    y0, y1, a0, a1 = ref_axis(h, H, None if scale is None else scale[0])
    x0, x1, b0, b1 = ref_axis(w, W, None if scale is None else scale[1])
    out = np.zeros((x.shape[0], H, W))
    for i in range(H):
        row = a0[i] * x[:, y0[i]] + a1[i] * x[:, y1[i]]  # [C, w]
        for j in range(W):
            out[:, i, j] = b0[j] * row[:, x0[j]] + b1[j] * row[:, x1[j]]
    return out


def ref_chain(x, pad, img, out):
    """Upsample to the padded size, crop to the image, resize to the output."""
    return ref_resize(ref_resize(x, pad)[:, : img[0], : img[1]], out)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def ref_semantic(logits, masks, pad, img, out, before=False):
    p = softmax(logits)[:, :-1]  # [Q, K]
    if before:
        return np.einsum("qk,qhw->khw", p, sigmoid(ref_chain(masks, pad, img, out)))
    up = ref_resize(masks, pad)[:, : img[0], : img[1]]
    return ref_resize(np.einsum("qk,qhw->khw", p, sigmoid(up)), out)


def ref_fast(logits, masks, pad, img, out):
    """Marginalize at 1/4, then one resampling from the image's low-res region straight to the output."""
    sem = np.einsum("qk,qhw->khw", softmax(logits)[:, :-1], sigmoid(masks))
    low = masks.shape[-2:]
    keep = [min(low[a], -(-img[a] * low[a] // pad[a]) + 1) for a in (0, 1)]
    scale = [out[a] * pad[a] / (img[a] * low[a]) for a in (0, 1)]
    if tuple(img) == tuple(pad):
        return ref_resize(sem, out)
    return ref_resize(sem[:, : keep[0], : keep[1]], out, scale)


def ref_panoptic(logits, masks, pad, img, out, things, thr=0.8, overlap=0.8, rule="maskformer"):
    """The official loop (section 5.3; Mask2Former: mask2former.md 5.4) in float64: (ids [H, W], [(id, isthing,
    category)], [H, W] margin of the pixel's decision: top-2 gap, and for Mask2Former also |sigmoid - 0.5|)."""
    probs = softmax(logits)
    scores, labels = probs.max(-1), probs.argmax(-1)
    keep = (labels != probs.shape[1] - 1) & (scores > thr)
    ids = np.zeros(out, dtype=np.int32)
    if not keep.any():
        return ids, [], np.full(out, np.inf)
    m = sigmoid(ref_chain(masks[keep], pad, img, out))
    s, c = scores[keep], labels[keep]
    weighted = s[:, None, None] * m
    assign = weighted.argmax(0)
    srt = np.sort(weighted, 0)
    gap = srt[-1] - srt[-2] if len(s) > 1 else np.full(out, np.inf)
    if rule == "mask2former":
        gap = np.minimum(gap, np.abs(np.take_along_axis(m, assign[None], 0)[0] - 0.5))
    segments, stuff, cur = [], {}, 0
    for k in range(len(s)):
        area, orig = (assign == k).sum(), (m[k] >= 0.5).sum()
        mask = (assign == k) & (m[k] >= 0.5) if rule == "mask2former" else assign == k
        if area > 0 and orig > 0 and mask.sum() > 0:
            if area / orig < overlap:
                continue
            isthing = int(c[k]) in things
            if not isthing and int(c[k]) in stuff:
                ids[mask] = stuff[int(c[k])]
                continue
            cur += 1
            ids[mask] = cur
            segments.append((cur, isthing, int(c[k])))
            if not isthing:
                stuff[int(c[k])] = cur
    return ids, segments, gap


def ref_instance(logits, masks, pad, img, out, topk, things=None):
    """Mask2Former's rule in float64: list of (score, label, mask) and the resampled logits."""
    p = softmax(logits)[:, :-1]
    n_cls = p.shape[1]
    flat = p.flatten()
    idx = np.argsort(-flat, kind="stable")[:topk]
    logit_maps = ref_chain(masks, pad, img, out)
    result = []
    for i in idx:
        q, c = divmod(int(i), n_cls)
        if things is not None and c not in things:
            continue
        binary = logit_maps[q] > 0
        mean = (sigmoid(logit_maps[q]) * binary).sum() / (binary.sum() + 1e-6)
        result.append((flat[i] * mean, c, binary))
    return result, logit_maps


# ------------------------------------------------------------------------------------------------ inputs
def random_outputs(q=7, k=5, h=10, w=12, seed=0, sharp=4.0, batch=1):
    """Class logits with a clear winner for most queries, smooth-ish mask logits (some queries no-object)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, q, k + 1, generator=g)
    win = torch.randint(0, k + 1, (batch, q), generator=g)
    logits.scatter_add_(2, win[..., None], torch.full((batch, q, 1), sharp))
    masks = 3 * torch.randn(batch, q, h, w, generator=g)
    return {"pred_logits": logits, "pred_masks": masks}


def partition_outputs(q=9, k=4, h=10, w=12, seed=0):
    """Trained-like outputs: each query claims a Voronoi cell of the low-res grid (+ noise), most queries confident."""
    o = random_outputs(q, k, h, w, seed, sharp=6.0)
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(q, 2, generator=g) * torch.tensor([h, w])
    grid = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"), -1).float()  # [h, w, 2]
    owner = ((grid[None] - centres[:, None, None]) ** 2).sum(-1).argmin(0)  # [h, w]
    cells = owner[None] == torch.arange(q)[:, None, None]
    o["pred_masks"][0] = torch.where(cells, 4.0, -4.0) + torch.randn(q, h, w, generator=g)
    return o


def np64(t):
    return t.double().numpy()


def labels_agree(labels: torch.Tensor, ref_scores: np.ndarray, tol=1e-5):
    """Label map equals the reference argmax except where the reference's top two scores are within tol."""
    srt = np.sort(ref_scores, 0)
    near_tie = (srt[-1] - srt[-2]) < tol
    bad = (labels.numpy() != ref_scores.argmax(0)) & ~near_tie
    assert not bad.any(), f"{bad.sum()} pixels differ from the reference"


CASES = [  # (padded size, image size, output size): no padding, padding + non-square resize, upscaling (x2, x5)
    ((40, 48), (40, 48), (40, 48)),
    ((40, 48), (37, 41), (29, 53)),
    ((40, 48), (33, 48), (70, 90)),
    ((40, 48), (19, 23), (90, 117)),
]


# ------------------------------------------------------------------------------------------------ resampling engine
def test_linear_weights_are_interpolate_weights():
    x = torch.randn(3, 9, 13)
    wy, wx = rs.linear_weights(9, 31), rs.linear_weights(13, 7)
    ref = F.interpolate(x[None], size=(31, 7), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(wy @ x @ wx.T, ref, atol=1e-6, rtol=0)
    assert torch.allclose(wy.sum(1), torch.ones(31))


def test_window_bounds_hold_every_pixel():
    x = torch.randn(4, 10, 12)
    py, px = rs.plans("linear", (10, 12), (40, 48), (37, 41), (29, 53), x, tile=8)
    lo, hi = rs.window_bounds(x, py, px)
    dense = torch.from_numpy(ref_chain(np64(x), (40, 48), (37, 41), (29, 53))).float()
    for ty in range(py.n_tiles):
        for tx in range(px.n_tiles):
            block = dense[:, ty * 8 : ty * 8 + 8, tx * 8 : tx * 8 + 8]
            assert (block.amax((1, 2)) <= hi[:, ty, tx] + 1e-5).all()
            assert (block.amin((1, 2)) >= lo[:, ty, tx] - 1e-5).all()


# ------------------------------------------------------------------------------------------------ semantic
FAST = pytest.mark.parametrize("fast", [False, True])


@pytest.mark.parametrize("pad,img,out", CASES)
@pytest.mark.parametrize("before", [False, True])
@FAST
def test_semantic_official_matches_reference(pad, img, out, before, fast):
    o = random_outputs()
    got = inf.semantic_inference(o, [img], [out], before_inference=before, padded_size=pad)[0]
    ref = ref_semantic(np64(o["pred_logits"][0]), np64(o["pred_masks"][0]), pad, img, out, before)
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-5)
    labels = inf.semantic_labels(o, [img], [out], before_inference=before, padded_size=pad, fast=fast)[0]
    assert labels.dtype == torch.int64 and tuple(labels.shape) == out
    labels_agree(labels, ref)


@pytest.mark.parametrize("pad,img,out", CASES)
@FAST
def test_semantic_fast_order_matches_reference(pad, img, out, fast):
    o = random_outputs(seed=1)
    got = inf.semantic_inference(o, [img], [out], order="fast", padded_size=pad)[0]
    ref = ref_fast(np64(o["pred_logits"][0]), np64(o["pred_masks"][0]), pad, img, out)
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-5)
    labels_agree(inf.semantic_labels(o, [img], [out], order="fast", padded_size=pad, fast=fast)[0], ref)


@FAST
def test_semantic_labels_many_classes_and_batch(fast):
    """Many near-equal classes (every tile keeps many candidates) and a batch of two different images."""
    o = random_outputs(q=12, k=30, h=16, w=16, seed=2, sharp=0.5, batch=2)
    sizes, outs = [(64, 64), (50, 37)], [(64, 64), (80, 41)]
    got = inf.semantic_labels(o, sizes, outs, fast=fast)
    for b in range(2):
        labels_agree(
            got[b], ref_semantic(np64(o["pred_logits"][b]), np64(o["pred_masks"][b]), (64, 64), *[sizes[b], outs[b]])
        )


@FAST
def test_semantic_labels_many_classes_upscaled(fast):
    """Many near-equal classes, output 4.5 x 6.1 times the image (the fast path marginalizes at the image size)."""
    o = random_outputs(q=12, k=30, h=16, w=16, seed=12, sharp=0.5)
    img, out = (40, 37), (180, 225)
    labels = inf.semantic_labels(o, [img], [out], fast=fast)[0]
    labels_agree(labels, ref_semantic(np64(o["pred_logits"][0]), np64(o["pred_masks"][0]), (64, 64), img, out))


@FAST
def test_semantic_official_labels_decide_close_calls_exactly(fast):
    """Two queries of different classes with almost equal masks: most pixels need the exact fallback."""
    o = random_outputs(q=2, k=2, h=8, w=8, seed=3)
    o["pred_logits"][0] = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    o["pred_masks"][0, 1] = o["pred_masks"][0, 0] + 1e-3 * torch.randn(8, 8)
    ref = ref_semantic(np64(o["pred_logits"][0]), np64(o["pred_masks"][0]), (32, 32), (32, 32), (32, 32))
    labels_agree(inf.semantic_labels(o, [(32, 32)], fast=fast)[0], ref, tol=1e-7)


@FAST
def test_semantic_equals_transformers_where_rules_coincide(fast):
    """No padding: transformers marginalizes at 1/4 and resizes once, which is our fast order."""
    pytest.importorskip("transformers")
    from types import SimpleNamespace

    from transformers.models.maskformer.image_processing_pil_maskformer import MaskFormerImageProcessorPil

    o = random_outputs(q=10, k=8, h=12, w=14, seed=4, batch=2)
    hf_out = SimpleNamespace(class_queries_logits=o["pred_logits"], masks_queries_logits=o["pred_masks"])
    proc = MaskFormerImageProcessorPil()
    targets = [(48, 56), (30, 77)]
    hf = proc.post_process_semantic_segmentation(hf_out, target_sizes=targets, return_segmentation_scores=True)
    ours = inf.semantic_inference(o, [(48, 56)] * 2, targets, order="fast")
    labels = inf.semantic_labels(o, [(48, 56)] * 2, targets, order="fast", fast=fast)
    for b in range(2):
        torch.testing.assert_close(ours[b], hf[b].segmentation_scores, atol=1e-6, rtol=1e-6)
        labels_agree(labels[b], hf[b].segmentation_scores.double().numpy(), tol=1e-6)
    hf_low = proc.post_process_semantic_segmentation(hf_out)  # no target sizes: 1/4 resolution
    ours_low = inf.semantic_labels(o, [(48, 56)] * 2, [(12, 14)] * 2, order="fast", fast=fast)
    assert all(torch.equal(a, b) for a, b in zip(ours_low, hf_low))


@FAST
def test_per_pixel_baseline_outputs(fast):
    sem = torch.randn(1, 5, 10, 12)
    pad, img, out = CASES[1]
    got = inf.semantic_inference({"sem_seg": sem}, [img], [out], padded_size=pad)[0]
    ref = ref_chain(np64(sem[0]), pad, img, out)
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-5)
    labels_agree(inf.semantic_labels({"sem_seg": sem}, [img], [out], padded_size=pad, fast=fast)[0], ref)


# ------------------------------------------------------------------------------------------------ panoptic
THINGS = {0, 1}


def panoptic_agrees(result, ref, out):
    ids, segments = result
    ref_ids, ref_segments, gap = ref
    assert ids.dtype == torch.int32 and tuple(ids.shape) == out
    assert [(s["id"], s["isthing"], s["category_id"]) for s in segments] == ref_segments
    bad = (ids.numpy() != ref_ids) & (gap > 1e-5)
    assert not bad.any(), f"{bad.sum()} pixels differ"
    for s in segments:
        assert s["area"] == int((ids == s["id"]).sum()) > 0


RULES = pytest.mark.parametrize("rule", ["maskformer", "mask2former"])


@pytest.mark.parametrize("pad,img,out", CASES)
@pytest.mark.parametrize("seed", [0, 5])
@RULES
@FAST
def test_panoptic_matches_reference(pad, img, out, seed, rule, fast):
    o = partition_outputs(seed=seed)
    kw = dict(thing_ids=THINGS, padded_size=pad, tile=8, fast=fast, rule=rule)
    got = inf.panoptic_inference(o, [img], [out], **kw)[0]
    ref = ref_panoptic(np64(o["pred_logits"][0]), np64(o["pred_masks"][0]), pad, img, out, THINGS, rule=rule)
    assert len(ref[1]) >= 1  # the case exercises at least one segment
    panoptic_agrees(got, ref, out)


@RULES
def test_panoptic_rules_fast_equals_reference_on_soft_masks(rule):
    """Soft random masks (many pixels whose assigned query is below 0.5, so Mask2Former leaves many voids)."""
    o = random_outputs(q=9, k=4, h=10, w=12, seed=11, sharp=6.0)
    o["pred_masks"] = o["pred_masks"] / 3 - 1.0
    pad, img, out = CASES[1]
    kw = dict(thing_ids=THINGS, padded_size=pad, tile=8, rule=rule, object_mask_threshold=0.5, overlap_threshold=0.3)
    ref = ref_panoptic(np64(o["pred_logits"][0]), np64(o["pred_masks"][0]), pad, img, out, THINGS, 0.5, 0.3, rule)
    assert len(ref[1]) >= 2 and (rule == "maskformer" or (ref[0] == 0).mean() > 0.1)
    for fast in (False, True):
        panoptic_agrees(inf.panoptic_inference(o, [img], [out], fast=fast, **kw)[0], ref, out)


def hand_built(mask_maps, class_logits):
    """Outputs whose masks are already at full resolution: padded = image = output = the map size."""
    masks = torch.tensor(np.array(mask_maps), dtype=torch.float32)[None]
    return {"pred_logits": torch.tensor(class_logits, dtype=torch.float32)[None], "pred_masks": masks}


def run_hand_built(o, **kw):
    """The fast path's result, after checking that the reference gives the very same."""
    size = tuple(o["pred_masks"].shape[-2:])
    ref_ids, ref_segments = inf.panoptic_inference(o, [size], thing_ids=THINGS, padded_size=size, **kw)[0]
    ids, segments = inf.panoptic_inference(o, [size], thing_ids=THINGS, padded_size=size, tile=8, fast=True, **kw)[0]
    assert torch.equal(ids, ref_ids) and segments == ref_segments
    return ids, segments


def block(h, w, r0, r1, c0, c1, inside=8.0, outside=-8.0):
    m = np.full((h, w), outside)
    m[r0:r1, c0:c1] = inside
    return m


CONFIDENT = {0: [9, 0, 0, 0], 1: [0, 9, 0, 0], 2: [0, 0, 9, 0]}  # class logits (K=3 + no-object)


def test_panoptic_nothing_kept():
    for logits in ([[0, 0, 0, 9], [0, 0, 0, 9]], [[1, 0.5, 0, 0], [0.2, 1, 0, 0]]):  # all no-object / all unsure
        ids, segments = run_hand_built(hand_built([block(6, 6, 0, 3, 0, 6)] * 2, logits))
        assert ids.dtype == torch.int32 and not ids.any() and segments == []


def test_panoptic_stuff_merges_things_do_not():
    maps = [block(8, 8, 0, 4, 0, 4), block(8, 8, 4, 8, 4, 8), block(8, 8, 0, 4, 4, 8), block(8, 8, 4, 8, 0, 4)]
    logits = [CONFIDENT[2], CONFIDENT[2], CONFIDENT[0], CONFIDENT[0]]  # two stuff of class 2, two things of class 0
    ids, segments = run_hand_built(hand_built(maps, logits))
    assert [(s["id"], s["category_id"], s["isthing"]) for s in segments] == [(1, 2, False), (2, 0, True), (3, 0, True)]
    assert (ids[:4, :4] == 1).all() and (ids[4:, 4:] == 1).all() and (ids[:4, 4:] == 2).all()
    assert (ids[4:, :4] == 3).all() and segments[0]["area"] == 32


def test_panoptic_overlap_rule():
    """A mask keeping 6 of its 10 pixels (< 0.8) is dropped and its pixels stay 0; 8 of 10 (== 0.8) is kept."""
    big = block(5, 10, 0, 5, 0, 10, inside=9.0)
    loser = block(5, 10, 0, 1, 0, 10, inside=10.0)  # row 0: 10 pixels with sigmoid >= 0.5
    loser[0, :4] = 0.5  # ... of which 4 are won by `big` (same score, larger sigmoid)
    ids, segments = run_hand_built(hand_built([loser, big], [CONFIDENT[0], CONFIDENT[2]]))
    assert [s["category_id"] for s in segments] == [2] and not ids[0, 4:].any() and ids.sum() == 44
    keeper = block(5, 10, 0, 1, 0, 10, inside=10.0)
    keeper[0, :2] = 0.5  # loses 2 of 10: ratio 0.8 is not < 0.8
    ids, segments = run_hand_built(hand_built([keeper, big], [CONFIDENT[0], CONFIDENT[2]]))
    assert [s["category_id"] for s in segments] == [0, 2] and segments[0]["area"] == 8


def test_panoptic_ties_go_to_the_first_query_and_score_is_strict():
    m = block(6, 6, 0, 6, 0, 6)
    ids, segments = run_hand_built(hand_built([m, m], [CONFIDENT[0], CONFIDENT[1]]))
    assert [s["category_id"] for s in segments] == [0] and (ids == 1).all()  # equal scores and masks
    p = torch.tensor(CONFIDENT[0], dtype=torch.float32).softmax(-1).max().item()
    ids, segments = run_hand_built(hand_built([m], [CONFIDENT[0]]), object_mask_threshold=p)
    assert segments == [] and not ids.any()  # score == threshold is not kept


def test_panoptic_mask2former_paints_only_above_one_half():
    """Column 3 goes to query 0 (sigmoid(-2) = 0.12 beats sigmoid(-8)): MaskFormer paints it, Mask2Former leaves 0."""
    q0, q1 = block(4, 6, 0, 4, 0, 3), block(4, 6, 0, 4, 4, 6)
    q0[:, 3] = -2.0
    o = hand_built([q0, q1], [CONFIDENT[0], CONFIDENT[2]])
    ids, segments = run_hand_built(o)
    assert (ids[:, :4] == 1).all() and (ids[:, 4:] == 2).all() and segments[0]["area"] == 16
    ids, segments = run_hand_built(o, rule="mask2former")
    assert (ids[:, :3] == 1).all() and not ids[:, 3].any() and (ids[:, 4:] == 2).all() and segments[0]["area"] == 12
    assert [(s["id"], s["category_id"]) for s in segments] == [(1, 0), (2, 2)]


def test_panoptic_mask2former_drops_a_query_that_paints_nothing():
    """Query 0 wins only columns 2-5, where its sigmoid is 0.27; its sigmoid >= 0.5 columns 0-1 go to query 1.
    Area 16 / original area 8 passes the overlap test, so MaskFormer makes it segment 1 (and query 1 segment 2);
    Mask2Former drops it (nothing to paint): query 1 becomes segment 1 and columns 2-5 stay void."""
    q0, q1 = np.full((4, 6), -1.0), block(4, 6, 0, 4, 0, 2)
    q0[:, :2] = 1.0
    o = hand_built([q0, q1], [CONFIDENT[0], CONFIDENT[2]])
    ids, segments = run_hand_built(o)
    assert [(s["id"], s["category_id"], s["area"]) for s in segments] == [(1, 0, 16), (2, 2, 8)]
    assert (ids[:, 2:] == 1).all() and (ids[:, :2] == 2).all()
    ids, segments = run_hand_built(o, rule="mask2former")
    assert [(s["id"], s["category_id"], s["area"]) for s in segments] == [(1, 2, 8)]
    assert (ids[:, :2] == 1).all() and not ids[:, 2:].any()


def test_panoptic_dataset_ids_and_scores():
    meta = DatasetMeta(name="t", class_names=["a", "b", "c"], is_thing=[True, True, False], dataset_ids=[7, 9, 40])
    o = hand_built([block(4, 4, 0, 2, 0, 4), block(4, 4, 2, 4, 0, 4)], [CONFIDENT[1], CONFIDENT[2]])
    _, segments = run_hand_built(o, meta=meta)
    assert [s["dataset_category_id"] for s in segments] == [9, 40]
    p = o["pred_logits"][0].softmax(-1).max(-1).values
    assert segments[0]["score"] == pytest.approx(float(p[0])) and segments[1]["area"] == 8


# ------------------------------------------------------------------------------------------------ instance
@pytest.mark.parametrize("pad,img,out", CASES[1:])
@FAST
def test_instance_matches_reference(pad, img, out, fast):
    o = random_outputs(q=6, k=4, seed=7)
    for things in (None, {1, 3}):
        got = inf.instance_inference(o, [img], [out], topk=10, thing_ids=things, padded_size=pad, tile=8, fast=fast)[0]
        ref, logit_maps = ref_instance(np64(o["pred_logits"][0]), np64(o["pred_masks"][0]), pad, img, out, 10, things)
        ref.sort(key=lambda r: -r[0])
        assert len(got) == len(ref) and got.masks.shape == (len(ref), *out) and got.masks.dtype == torch.bool
        np.testing.assert_allclose(got.scores.numpy(), [r[0] for r in ref], rtol=1e-5, atol=1e-6)
        assert got.labels.tolist() == [r[1] for r in ref]
        near_zero = (np.abs(logit_maps) < 1e-5).any(0)
        for mask, (_, _, ref_mask) in zip(got.masks, ref):
            assert not ((mask.numpy() != ref_mask) & ~near_zero).any()


@FAST
def test_instance_hand_built_empty_mask_scores_zero(fast):
    o = hand_built([block(4, 6, 0, 2, 0, 3), np.full((4, 6), -5.0)], [CONFIDENT[0], CONFIDENT[1]])
    got = inf.instance_inference(o, [(4, 6)], padded_size=(4, 6), topk=2, tile=8, fast=fast)[0]
    p = o["pred_logits"][0].softmax(-1).max(-1).values
    mean = float(torch.sigmoid(torch.tensor(8.0)))  # every pixel of the first mask has logit 8
    assert got.labels.tolist() == [0, 1] and got.scores.tolist() == pytest.approx([float(p[0]) * mean, 0.0], rel=1e-5)
    assert got.masks[0].sum() == 6 and not got.masks[1].any()


@FAST
def test_instance_hand_built_score_is_class_prob_times_mask_score(fast):
    """Mask2Former's rule: one query in the top-k twice (two classes), mask = logit > 0 (0 itself is out), score =
    class probability x mean sigmoid over the mask, sum / (area + 1e-6)."""
    m = np.array([[2.0, 0.0, -1.0, 4.0]] * 2)
    o = hand_built([m, np.full((2, 4), -3.0)], [[3.0, 2.0, -9, 0], [-9, -9, -9, 9]])
    got = inf.instance_inference(o, [(2, 4)], padded_size=(2, 4), topk=2, tile=8, fast=fast)[0]
    p = o["pred_logits"][0, 0].softmax(-1)
    mean = 2 * float(torch.sigmoid(torch.tensor(2.0)) + torch.sigmoid(torch.tensor(4.0))) / (4 + 1e-6)
    assert got.labels.tolist() == [0, 1]
    assert got.scores.tolist() == pytest.approx([float(p[0]) * mean, float(p[1]) * mean], rel=1e-6)
    assert got.masks[0].tolist() == [[True, False, False, True]] * 2 and torch.equal(got.masks[0], got.masks[1])


@FAST
def test_semantic_when_every_query_is_no_object(fast):
    o = random_outputs(seed=8)
    o["pred_logits"][..., -1] += 20  # real classes keep only tiny probabilities
    for order in ("official", "fast"):
        ref = (ref_semantic if order == "official" else ref_fast)(
            np64(o["pred_logits"][0]), np64(o["pred_masks"][0]), (40, 48), (37, 41), (29, 53)
        )
        labels = inf.semantic_labels(o, [(37, 41)], [(29, 53)], order=order, padded_size=(40, 48), fast=fast)[0]
        labels_agree(labels, ref, tol=1e-12)


# ------------------------------------------------------------------------------------------------ bad input
def test_bad_inputs_are_named():
    o = random_outputs()
    with pytest.raises(ValueError, match="pred_logits"):
        inf.semantic_inference({"masks": o["pred_masks"]}, [(40, 48)])
    with pytest.raises(ValueError, match="image_sizes"):
        inf.semantic_labels(o, [(40, 48), (40, 48)])
    with pytest.raises(ValueError, match="padded input"):
        inf.semantic_inference(o, [(41, 48)])
    with pytest.raises(ValueError, match="order"):
        inf.semantic_inference(o, [(40, 48)], order="quick")
    with pytest.raises(ValueError, match="mask-classification"):
        inf.panoptic_inference({"sem_seg": torch.zeros(1, 3, 4, 4)}, [(16, 16)], thing_ids=[])
    with pytest.raises(ValueError, match="rule="):
        inf.panoptic_inference(o, [(40, 48)], thing_ids=[], rule="detr")
    with pytest.raises(ValueError, match="pred_logits"):
        inf.instance_inference({"pred_logits": torch.zeros(1, 3, 4), "pred_masks": torch.zeros(1, 2, 4, 4)}, [(16, 16)])


def test_thread_setting_is_restored():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        inf.semantic_labels(random_outputs(), [(40, 48)], fast=True)
        inf.panoptic_inference(random_outputs(), [(40, 48)], thing_ids=THINGS, object_mask_threshold=0.0, fast=True)
        inf.instance_inference(random_outputs(), [(40, 48)], fast=True)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
