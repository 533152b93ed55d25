"""Mask2Former's matcher and point-sampled loss against transformers' `Mask2FormerHungarianMatcher` /
`Mask2FormerLoss` (the independent oracle) on the same predictions, with the random points made equal by seeding.

Why seeding makes both sides sample the same points: the official code, transformers and this package draw in the
same order (mask2former.md section 4): for each output (final, then aux 0..8) the matcher draws one uniform set
per image, then the mask loss draws rand(N, 3P, 2) and rand(N, P/4, 2) for the N matched pairs. This package draws
an output's matcher points as one [B, P, 2] tensor: on the CPU the generator fills it serially, so it holds the same
numbers as B draws of [1, P, 2] (what `test_matcher_draws_like_per_image_draws` pins down). Importance sampling
keeps the same set of most uncertain points (transformers sorts them, this package does not: only the order of the
terms of a mean differs).

Where the rules differ, this package follows the official code; each difference is kept out of the compared inputs
and explained here:
- transformers samples each image's target masks at that image's own mask size in the matcher (normalized
  coordinates over its unpadded masks), the official code (and this package) over the padded batch frame: the
  targets here come at the padded size, as transformers' image processor gives them, so both read the same pixels.
- transformers replaces non-finite matching costs by the largest float (official: scipy raises); the predictions
  here are finite.
- the official matcher and loss run in float32 with autocast off (this package too), transformers in the input
  dtype: the inputs here are float32.
- num_masks: all-reduced over processes in the official code and here, in transformers only under accelerate:
  one process here.
- term names: transformers `loss_cross_entropy` = our `loss_ce`; transformers returns unweighted terms (weights are
  applied by `get_loss_dict`), this package weighted ones (2 / 5 / 5): compared after weighting.
"""

from __future__ import annotations

import pytest
import torch
from conftest import require_transformers

from maskformer.config import get_preset
from maskformer.criterion import build_criterion
from maskformer.structures import SegTarget

K, Q, B, H4, W4 = 4, 7, 2, 12, 16  # predictions at 1/4: targets at 48 x 64
POINTS = 200
WEIGHTS = {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _outputs(aux: int = 3):
    g = torch.Generator().manual_seed(0)

    def layer():
        return {"pred_logits": torch.randn(B, Q, K + 1, generator=g) * 2,
                "pred_masks": torch.randn(B, Q, H4, W4, generator=g) * 3}  # fmt: skip

    return {**layer(), "aux_outputs": [layer() for _ in range(aux)]}


def _targets():
    """Blobs of different shapes; image 1 has one target only (unmatched queries everywhere)."""
    H, W = 4 * H4, 4 * W4
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    m0 = torch.stack([(yy - 10) ** 2 + (xx - 15) ** 2 < 90, (xx > 40) & (yy > 5), yy > 36])
    m1 = ((yy - 30) ** 2 + (xx - 40) ** 2 < 200)[None]
    return [SegTarget(labels=torch.tensor([1, 3, 0]), masks=m0), SegTarget(labels=torch.tensor([2]), masks=m1)]


def _ours():
    cfg = get_preset("mask2former_r18_synth", [f"model.num_classes={K}", f"loss.num_points={POINTS}"])
    return build_criterion(cfg)


def _hf():
    tr = require_transformers()
    from transformers.models.mask2former.modeling_mask2former import Mask2FormerLoss

    config = tr.Mask2FormerConfig(num_labels=K, train_num_points=POINTS, oversample_ratio=3.0,
                                  importance_sample_ratio=0.75, class_weight=2.0, mask_weight=5.0, dice_weight=5.0,
                                  no_object_weight=0.1)  # fmt: skip
    return Mask2FormerLoss(config, weight_dict={"loss_cross_entropy": 2.0, "loss_mask": 5.0, "loss_dice": 5.0})


def _hf_args(outputs, targets):
    def hf_layer(layer):
        return {"masks_queries_logits": layer["pred_masks"], "class_queries_logits": layer["pred_logits"]}

    return dict(
        masks_queries_logits=outputs["pred_masks"],
        class_queries_logits=outputs["pred_logits"],
        mask_labels=[t.masks.float() for t in targets],
        class_labels=[t.labels for t in targets],
        auxiliary_predictions=[hf_layer(a) for a in outputs["aux_outputs"]],
    )


def test_matcher_draws_like_per_image_draws():
    torch.manual_seed(3)
    together = torch.rand(B, POINTS, 2)
    torch.manual_seed(3)
    apart = torch.cat([torch.rand(1, POINTS, 2) for _ in range(B)])
    assert torch.equal(together, apart)


def test_matching_equals_transformers():
    ours, hf = _ours(), _hf()
    outputs, targets = _outputs(), _targets()
    torch.manual_seed(7)
    mine = ours.matcher(outputs["pred_logits"], outputs["pred_masks"], [t.labels for t in targets],
                        [t.masks for t in targets])  # fmt: skip
    torch.manual_seed(7)
    theirs = hf.matcher(outputs["pred_masks"], outputs["pred_logits"], [t.masks.float() for t in targets],
                        [t.labels for t in targets])  # fmt: skip
    for (s, t), (hs, ht) in zip(mine, theirs):
        assert s.tolist() == torch.as_tensor(hs).tolist() and t.tolist() == torch.as_tensor(ht).tolist()


@pytest.mark.parametrize("seed", [0, 1])
def test_every_term_equals_transformers(seed):
    ours, hf = _ours(), _hf()
    outputs, targets = _outputs(), _targets()
    torch.manual_seed(seed)
    mine = ours(outputs, targets)
    torch.manual_seed(seed)
    theirs = hf(**_hf_args(outputs, targets))
    assert len(theirs) == 3 * 4 and len(mine) == 3 * 4 + 1  # 4 outputs x 3 terms (+ our total)
    for key, value in theirs.items():
        name = key.replace("loss_cross_entropy", "loss_ce")
        weight = WEIGHTS[name.rsplit("_", 1)[0] if name[-1].isdigit() else name]
        torch.testing.assert_close(mine[name], weight * value, rtol=1e-5, atol=1e-6, msg=name)
    assert mine["loss_mask"] > 0 and mine["loss_dice_2"] > 0


def test_the_points_matter():
    """Not vacuous: other points give another mask loss."""
    ours = _ours()
    outputs, targets = _outputs(), _targets()
    torch.manual_seed(0)
    a = ours(outputs, targets)
    torch.manual_seed(1)
    b = ours(outputs, targets)
    assert abs(a["loss_mask"] - b["loss_mask"]) > 1e-4
