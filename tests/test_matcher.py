"""HungarianMatcher: cost entries against a float64 reference, optimality against brute force, NaN guard, point
sampling helpers, and agreement with transformers' MaskFormerHungarianMatcher."""

from __future__ import annotations

import loss_reference as ref
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import require_transformers

import maskformer.matcher as matcher_mod
from maskformer.matcher import HungarianMatcher, downsample_masks, pairwise_bce_cost, pairwise_dice_cost
from maskformer.point_sampling import point_sample, point_sample_binary, uncertain_point_coords


def _case(B, Q, K, h, w, counts, dtype=torch.float64, gen=None):
    logits = torch.randn(B, Q, K + 1, dtype=dtype, generator=gen) * 2
    masks = torch.randn(B, Q, h, w, dtype=dtype, generator=gen) * 3
    labels = [torch.randint(0, K, (t,), generator=gen) for t in counts]
    tmasks = [torch.rand(t, 4 * h, 4 * w, generator=gen) > 0.5 for t in counts]
    return logits, masks, labels, tmasks


def test_cost_entries_equal_float64_formulas():
    # targets of unpadded size 10x13 zero-padded to the 12x16 frame: padding pixels are negatives
    B, Q, K, h, w = 2, 3, 4, 3, 4
    logits, masks, labels, _ = _case(B, Q, K, h, w, [2, 3])
    small = [torch.rand(len(lb), 10, 13) > 0.4 for lb in labels]
    padded = [F.pad(m, (0, 16 - 13, 0, 12 - 10)) for m in small]
    got = HungarianMatcher().cost_matrices(logits, masks, labels, padded)
    for b in range(B):
        want = ref.cost_matrix(
            logits[b].numpy(),
            masks[b].numpy(),
            labels[b].tolist(),
            [ref.pad(m.numpy().astype(float), 12, 16) for m in small[b]],
        )
        np.testing.assert_allclose(got[b].numpy(), want, rtol=1e-12, atol=1e-12)


def test_cost_weights_are_applied():
    logits, masks, labels, tmasks = _case(1, 4, 3, 2, 2, [2])
    parts = [HungarianMatcher(cost_class=c, cost_mask=m, cost_dice=d) for c, m, d in ((1, 0, 0), (0, 1, 0), (0, 0, 1))]
    c, m, d = (p.cost_matrices(logits, masks, labels, tmasks)[0] for p in parts)
    total = HungarianMatcher(cost_class=2, cost_mask=20, cost_dice=3).cost_matrices(logits, masks, labels, tmasks)[0]
    torch.testing.assert_close(total, 2 * c + 20 * m + 3 * d)
    torch.testing.assert_close(c, -logits.softmax(-1)[0][:, labels[0]])  # -probability, not -log probability


@pytest.mark.parametrize("Q,T", [(1, 0), (3, 0), (1, 1), (3, 3), (4, 4), (5, 2), (6, 4), (6, 1), (4, 3)])
def test_assignment_equals_brute_force(Q, T):
    gen = torch.Generator().manual_seed(100 * Q + T)
    matcher = HungarianMatcher()
    for _ in range(3):
        logits, masks, labels, tmasks = _case(2, Q, 5, 2, 3, [T, max(T - 1, 0)], gen=gen)
        costs = matcher.cost_matrices(logits, masks, labels, tmasks)
        for (rows, cols), cost in zip(matcher(logits, masks, labels, tmasks), costs):
            n = cost.shape[1]
            assert rows.dtype == cols.dtype == torch.int64 and len(rows) == len(cols) == min(Q, n)
            assert len(set(rows.tolist())) == len(rows) and len(set(cols.tolist())) == len(cols)
            best_cost, best_pairs = ref.brute_force_assignment(cost.numpy())
            assert sorted(zip(rows.tolist(), cols.tolist())) == best_pairs
            assert cost[rows, cols].sum().item() == pytest.approx(best_cost if n else 0.0, abs=1e-9)


def test_query_chunks_give_the_same_costs(monkeypatch):
    logits, masks, labels, tmasks = _case(5, 7, 3, 3, 3, [2, 0, 3, 1, 4])
    for matcher in (HungarianMatcher(), HungarianMatcher(num_points=16)):
        torch.manual_seed(3)
        whole = matcher.cost_matrices(logits, masks, labels, tmasks)
        monkeypatch.setattr(matcher_mod, "CHUNK_ELEMENTS", 2 * 16)  # chunks of 2 queries (and a last one of 1)
        torch.manual_seed(3)
        chunked = matcher.cost_matrices(logits, masks, labels, tmasks)
        monkeypatch.undo()
        for a, b in zip(whole, chunked):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_nan_and_inf_predictions_are_matched_last():
    logits, masks, labels, tmasks = _case(1, 4, 3, 2, 2, [2])
    masks[0, 0] = float("nan")
    logits[0, 1, 0] = float("inf")
    cost = HungarianMatcher().cost_matrices(logits, masks, labels, tmasks)[0]
    assert torch.isfinite(cost).all() and (cost[:2] == torch.finfo(cost.dtype).max).all()
    rows, _ = HungarianMatcher()(logits, masks, labels, tmasks)[0]
    assert sorted(rows.tolist()) == [2, 3]  # the valid predictions win


def test_nearest_downsample_matches_interpolate_and_formula():
    m = torch.rand(3, 12, 20) > 0.5
    for size in ((3, 5), (5, 7), (12, 20), (6, 10)):
        want = F.interpolate(m[:, None].float(), size=size, mode="nearest")[:, 0] > 0.5
        assert torch.equal(downsample_masks(m, size), want)
        np.testing.assert_array_equal(downsample_masks(m, size)[1].numpy(), ref.nearest_down(m[1].numpy(), *size))


def test_matches_transformers_matcher():
    require_transformers()
    from transformers.models.maskformer.modeling_maskformer import MaskFormerHungarianMatcher

    logits, masks, labels, tmasks = _case(3, 10, 6, 8, 8, [4, 0, 7], dtype=torch.float32)
    # MaskFormerHungarianMatcher defaults to cost_mask=1; the official / MaskFormerConfig value is 20
    hf = MaskFormerHungarianMatcher(cost_class=1.0, cost_mask=20.0, cost_dice=1.0)
    want = hf(masks, logits, [m.float() for m in tmasks], labels)
    got = HungarianMatcher()(logits, masks, labels, tmasks)
    for (r1, c1), (r2, c2) in zip(got, want):
        assert torch.equal(r1, r2) and torch.equal(c1, c2)


def test_point_sample_binary_equals_grid_sample():
    m = torch.rand(3, 9, 14) > 0.5
    coords = torch.rand(3, 200, 2, dtype=torch.float64)
    coords[:, :4] = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.999, 0.001], [0.02, 0.97]], dtype=torch.float64)
    want = point_sample(m[:, None].double(), coords)[:, 0]
    torch.testing.assert_close(point_sample_binary(m, coords), want, rtol=0, atol=1e-12)


def test_point_costs_equal_formulas():
    x, t = torch.randn(2, 3, 50, dtype=torch.float64), torch.rand(2, 4, 50, dtype=torch.float64)  # soft targets
    xn, tn = x.numpy(), t.numpy()
    want = [[[ref.bce_mean(xn[b, q], tn[b, j]) for j in range(4)] for q in range(3)] for b in range(2)]
    np.testing.assert_allclose(pairwise_bce_cost(x, t).numpy(), want, rtol=1e-12)
    want = [[[ref.dice(xn[b, q], tn[b, j]) for j in range(4)] for q in range(3)] for b in range(2)]
    np.testing.assert_allclose(pairwise_dice_cost(x, t).numpy(), want, rtol=1e-12)


def test_point_matcher_uses_the_same_uniform_points_for_predictions_and_targets():
    logits, masks, labels, tmasks = _case(2, 3, 4, 4, 4, [2, 1])
    torch.manual_seed(7)
    got = HungarianMatcher(num_points=64).cost_matrices(logits, masks, labels, tmasks)
    torch.manual_seed(7)
    coords = torch.rand(2, 64, 2)  # one draw per image, shared by its predictions and targets
    for b in range(2):
        x = point_sample(masks[b : b + 1], coords[b : b + 1].double())[0].numpy()  # [Q, P]
        t = point_sample(tmasks[b][None].double(), coords[b : b + 1].double())[0].numpy()  # [T, P]
        prob = logits[b].softmax(-1).numpy()
        want = [
            [-prob[q, lab] + 20 * ref.bce_mean(x[q], t[j]) + ref.dice(x[q], t[j]) for j, lab in enumerate(labels[b])]
            for q in range(3)
        ]
        np.testing.assert_allclose(got[b].numpy(), want, rtol=1e-6)


def test_uncertain_points_are_the_most_uncertain_of_the_oversampled_draw():
    logits = torch.randn(2, 1, 6, 7)
    torch.manual_seed(3)
    got = uncertain_point_coords(logits, num_points=40, oversample_ratio=3, importance_sample_ratio=0.75)
    torch.manual_seed(3)
    drawn, fresh = torch.rand(2, 120, 2), torch.rand(2, 10, 2)
    for n in range(2):
        values = [ref.bilinear_at(logits[n, 0].double().numpy(), *c) for c in drawn[n].double().numpy()]
        top = np.argsort(np.abs(values), kind="stable")[:30]  # highest uncertainty -|logit|; 30 = 0.75 * 40
        assert sorted(map(tuple, got[n, :30].tolist())) == sorted(map(tuple, drawn[n, top].tolist()))
        assert torch.equal(got[n, 30:], fresh[n])
    with pytest.raises(ValueError, match="oversample_ratio"):
        uncertain_point_coords(logits, num_points=4, oversample_ratio=0.5)
