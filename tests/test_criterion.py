"""SetCriterion / PerPixelCriterion: every term against a float64 reference written from the formulas, agreement with
transformers' MaskFormerLoss, gradients (finite differences), fp32 under autocast, distributed normalization,
point sampling, and clear errors."""

from __future__ import annotations

import loss_reference as ref
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import require_transformers

import maskformer.criterion as crit_mod
import maskformer.mask_losses as mask_losses
from maskformer.config import Config, apply_overrides
from maskformer.criterion import PerPixelCriterion, SetCriterion, build_criterion
from maskformer.mask_losses import full_res_mask_losses, point_sampled_mask_losses, upsample_adjoint
from maskformer.matcher import HungarianMatcher
from maskformer.point_sampling import uncertain_point_coords
from maskformer.structures import SegTarget

WEIGHTS = {"loss_ce": 1.0, "loss_mask": 20.0, "loss_dice": 1.0}


def _layer(B, Q, K, h, w, dtype=torch.float64, grad=False):
    out = {
        "pred_logits": 2 * torch.randn(B, Q, K + 1, dtype=dtype),
        "pred_masks": 3 * torch.randn(B, Q, h, w, dtype=dtype),
    }
    return {k: v.requires_grad_(grad) for k, v in out.items()}


def _outputs(B, Q, K, h, w, aux=5, **kw):
    out = _layer(B, Q, K, h, w, **kw)
    out["aux_outputs"] = [_layer(B, Q, K, h, w, **kw) for _ in range(aux)]
    return out


def _criterion(K, **kw):
    return SetCriterion(num_classes=K, matcher=HungarianMatcher(), **kw)


def _targets_mixed():
    """Image 0: semantic crop 10x13 with ignore pixels (from_semantic); image 1: no target; image 2: 3 full masks."""
    sem = torch.randint(0, 3, (10, 13))
    sem[2:5, 3:9] = 255
    t0 = SegTarget.from_semantic(sem, ignore_label=255)
    t1 = SegTarget(torch.zeros(0, dtype=torch.long), torch.zeros(0, 12, 16, dtype=torch.bool))
    t2 = SegTarget(torch.tensor([2, 0, 2]), torch.rand(3, 12, 16) > 0.5)
    return [t0, t1, t2]


def _padded_np(targets, H, W):
    return [[ref.pad(m.numpy().astype(float), H, W) for m in t.masks] for t in targets]


def test_every_term_equals_float64_reference_over_six_layers():
    B, Q, K, h, w = 3, 4, 3, 3, 4
    outputs, targets = _outputs(B, Q, K, h, w), _targets_mixed()
    got = _criterion(K)(outputs, targets)
    labels, masks = [t.labels.tolist() for t in targets], _padded_np(targets, 4 * h, 4 * w)
    layers = [outputs] + outputs["aux_outputs"]
    expected = {}
    for i, layer in enumerate(layers):
        # the no-object weight lives in the float32 buffer `empty_weight` (as in the official code)
        eos = float(np.float32(0.1))
        terms = ref.layer_losses(layer["pred_logits"].numpy(), layer["pred_masks"].numpy(), labels, masks, K, eos)
        suffix = "" if i == 0 else f"_{i - 1}"
        for name, value in zip(("loss_ce", "loss_mask", "loss_dice"), terms):
            expected[name + suffix] = WEIGHTS[name] * value
    assert set(got) == set(expected) | {"loss"} and len(expected) == 18
    for key, value in expected.items():
        assert got[key].item() == pytest.approx(value, rel=1e-10, abs=1e-12), key
    assert got["loss"].item() == pytest.approx(sum(expected.values()), rel=1e-12)


def test_padding_and_ignore_pixels_are_negatives_of_every_mask():
    # one prediction, one target covering the whole unpadded 6x6 crop of an 8x8 frame: with padding pixels as
    # negatives the loss is the full-frame formula; excluding them (a "valid region") would give another value
    out = {
        "pred_logits": torch.zeros(1, 1, 2, dtype=torch.float64),
        "pred_masks": torch.full((1, 1, 2, 2), 2.0).double(),
    }
    target = SegTarget(torch.tensor([0]), torch.ones(1, 6, 6, dtype=torch.bool))
    got = _criterion(1, deep_supervision=False)(out, [target])
    full = np.full((8, 8), 2.0)
    t = ref.pad(np.ones((6, 6)), 8, 8)
    assert got["loss_mask"].item() == pytest.approx(20 * ref.focal_mean(full, t), rel=1e-12)
    assert got["loss_dice"].item() == pytest.approx(ref.dice(full, t), rel=1e-12)
    assert ref.focal_mean(full[:6, :6], t[:6, :6]) != pytest.approx(ref.focal_mean(full, t), rel=1e-3)


def test_matches_transformers_loss():
    require_transformers()
    from transformers.models.maskformer.modeling_maskformer import MaskFormerHungarianMatcher, MaskFormerLoss

    B, Q, K, h, w = 2, 6, 5, 4, 4
    outputs = _outputs(B, Q, K, h, w)
    targets = [SegTarget(torch.randint(0, K, (n,)), torch.rand(n, 16, 16) > 0.6) for n in (3, 5)]
    ours = _criterion(K)(outputs, targets)
    hf = MaskFormerLoss(
        num_labels=K, matcher=MaskFormerHungarianMatcher(1.0, 20.0, 1.0), weight_dict={}, eos_coef=0.1
    ).double()
    aux = [
        {"masks_queries_logits": a["pred_masks"], "class_queries_logits": a["pred_logits"]}
        for a in outputs["aux_outputs"]
    ]
    theirs = hf(
        outputs["pred_masks"],
        outputs["pred_logits"],
        [t.masks.double() for t in targets],
        [t.labels for t in targets],
        aux,
    )
    # Same rule -> same value: matching per layer (redone for every aux layer in both), CE with no-object weight 0.1,
    # focal/dice at the target resolution, num_masks. Differences that are naming only: HF's "loss_cross_entropy"
    # is our "loss_ce", and HF's forward returns unweighted terms (weights applied later in get_loss_dict).
    for key, value in theirs.items():
        name = key.replace("loss_cross_entropy", "loss_ce")
        assert ours[name].item() / WEIGHTS[name.rstrip("_0123456789")] == pytest.approx(value.item(), rel=1e-10), key
    # Difference (official rule wins): HF pads target masks only to the largest target in the batch and upsamples
    # the predictions to that size. The official prepare_targets pads them to the padded input (4 x prediction
    # size), so with crops smaller than the frame HF is equal only when fed the frame-padded targets, as above.
    small = [SegTarget(t.labels, t.masks[:, :14, :13]) for t in targets]
    ours_small = _criterion(K, deep_supervision=False)(outputs, small)
    framed = [F.pad(t.masks, (0, 3, 0, 2)).double() for t in small]
    theirs_framed = hf(outputs["pred_masks"], outputs["pred_logits"], framed, [t.labels for t in small])
    theirs_unpadded = hf(
        outputs["pred_masks"], outputs["pred_logits"], [t.masks.double() for t in small], [t.labels for t in small]
    )
    assert ours_small["loss_mask"].item() / 20 == pytest.approx(theirs_framed["loss_mask"].item(), rel=1e-10)
    assert ours_small["loss_mask"].item() / 20 != pytest.approx(theirs_unpadded["loss_mask"].item(), rel=1e-3)


def test_gradcheck_criterion_float64():
    # final + one aux layer, both images with targets (one a crop smaller than the 8x8 frame)
    targets = [
        SegTarget(torch.tensor([0]), torch.rand(1, 7, 8) > 0.5),
        SegTarget(torch.tensor([0]), torch.rand(1, 8, 8) > 0.5),
    ]
    criterion, base = _criterion(1), _outputs(2, 2, 1, 2, 2, aux=1)
    aux = base["aux_outputs"][0]
    tensors = [
        t.clone().requires_grad_()
        for t in (base["pred_logits"], base["pred_masks"], aux["pred_logits"], aux["pred_masks"])
    ]

    def total(lo, ma, alo, ama):
        layers = {"pred_logits": lo, "pred_masks": ma, "aux_outputs": [{"pred_logits": alo, "pred_masks": ama}]}
        return criterion(layers, targets)["loss"]

    assert torch.autograd.gradcheck(total, tensors, eps=1e-6, atol=1e-6)


def test_gradcheck_mask_losses_and_adjoint():
    logits = torch.randn(3, 3, 2, dtype=torch.float64, requires_grad=True)
    targets = torch.rand(3, 12, 6) > 0.5
    assert torch.autograd.gradcheck(lambda x: full_res_mask_losses(x, targets), (logits,), eps=1e-6, atol=1e-7)

    def point_losses(x):  # the same points at every evaluation
        torch.manual_seed(0)
        return point_sampled_mask_losses(x, targets, num_points=20)

    assert torch.autograd.gradcheck(point_losses, (logits,), eps=1e-6, atol=1e-7)
    for (h, w), (H, W) in (((1, 3), (4, 12)), ((5, 4), (10, 8)), ((3, 4), (9, 12)), ((4, 4), (16, 8))):
        x = torch.randn(2, h, w, dtype=torch.float64, requires_grad=True)
        g = torch.randn(2, H, W, dtype=torch.float64)
        up = F.interpolate(x[:, None], size=(H, W), mode="bilinear", align_corners=False)[:, 0]
        (want,) = torch.autograd.grad(up, x, g)
        torch.testing.assert_close(upsample_adjoint(g, (h, w)), want, rtol=1e-12, atol=1e-12)


def test_chunking_does_not_change_values_or_gradients(monkeypatch):
    logits, targets = torch.randn(5, 3, 4, dtype=torch.float64), torch.rand(5, 12, 16) > 0.5

    def run():
        x = logits.clone().requires_grad_()
        focal, dice = full_res_mask_losses(x, targets)
        (focal @ torch.arange(1.0, 6.0, dtype=torch.float64) + 3 * dice.sum()).backward()
        return focal, dice, x.grad

    whole = run()
    monkeypatch.setattr(mask_losses, "CHUNK_PIXELS", 2 * 12 * 16)  # chunks of 2, 2 and 1 masks
    for a, b in zip(whole, run()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)

    def point_losses(x):  # several chunks, the same points at every evaluation
        torch.manual_seed(0)
        return point_sampled_mask_losses(x, targets, num_points=20)

    monkeypatch.setattr(mask_losses, "CHUNK_POINTS", 2 * 60)  # 60 oversampled points per mask: chunks of 2
    assert torch.autograd.gradcheck(point_losses, (logits.clone().requires_grad_(),), eps=1e-6, atol=1e-7)


def test_unmatched_queries_get_gradient_only_from_the_class_loss():
    outputs = _layer(1, 5, 3, 2, 2, grad=True)
    target = SegTarget(torch.tensor([0, 2]), torch.rand(2, 8, 8) > 0.5)
    criterion = _criterion(3)
    losses = criterion(outputs, [target])
    (losses["loss_mask"] + losses["loss_dice"]).backward()
    rows, _ = criterion.matcher(outputs["pred_logits"], outputs["pred_masks"], [target.labels], [target.masks])[0]
    has_grad = outputs["pred_masks"].grad[0].flatten(1).abs().sum(1) > 0  # [Q]
    assert has_grad.tolist() == [q in rows.tolist() for q in range(5)]


def test_images_without_targets():
    outputs = _outputs(2, 4, 3, 2, 2, aux=1, grad=True)
    empty = [SegTarget(torch.zeros(0, dtype=torch.long), torch.zeros(0, 7, 8, dtype=torch.bool))] * 2
    losses = _criterion(3)(outputs, empty)
    assert losses["loss_mask"].item() == 0 and losses["loss_dice_0"].item() == 0
    logp = outputs["pred_logits"].detach().log_softmax(-1)[..., 3]  # every query targets no-object
    assert losses["loss_ce"].item() == pytest.approx(-logp.mean().item(), rel=1e-12)
    losses["loss"].backward()
    assert torch.isfinite(outputs["pred_logits"].grad).all()


def test_fp32_under_autocast():
    K, targets = 3, [SegTarget(torch.tensor([0, 2]), torch.rand(2, 8, 8) > 0.5)]
    outputs = _outputs(1, 4, K, 2, 2, aux=1, dtype=torch.bfloat16)
    as_float = {
        "pred_logits": outputs["pred_logits"].float(),
        "pred_masks": outputs["pred_masks"].float(),
        "aux_outputs": [{k: v.float() for k, v in a.items()} for a in outputs["aux_outputs"]],
    }
    want = _criterion(K)(as_float, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _criterion(K)(outputs, targets)
    for key in want:
        assert got[key].dtype == torch.float32, key
        torch.testing.assert_close(got[key], want[key], rtol=1e-6, atol=1e-7)


def test_num_masks_is_averaged_over_processes(monkeypatch):
    outputs, targets = _outputs(1, 3, 2, 2, 2, aux=0), [SegTarget(torch.tensor([0, 1]), torch.rand(2, 8, 8) > 0.5)]
    local = _criterion(2)(outputs, targets)

    def fake(extra, world):
        monkeypatch.setattr(crit_mod.dist, "is_initialized", lambda: True)
        monkeypatch.setattr(crit_mod.dist, "all_reduce", lambda t: t.add_(extra))  # the other processes' masks
        monkeypatch.setattr(crit_mod.dist, "get_world_size", lambda: world)
        return _criterion(2)(outputs, targets)

    assert fake(6.0, 2)["loss_mask"].item() == pytest.approx(local["loss_mask"].item() * 2 / 4)  # (2 + 6) / 2
    assert fake(0.0, 4)["loss_dice"].item() == pytest.approx(local["loss_dice"].item() * 2 / 1)  # 2/4 clamped to 1
    assert fake(0.0, 4)["loss_ce"].item() == pytest.approx(local["loss_ce"].item())


def test_point_sampled_loss_equals_formula_at_the_sampled_points():
    logits = 2 * torch.randn(3, 4, 5, dtype=torch.float64)
    targets = torch.rand(3, 16, 20) > 0.5
    kw = dict(num_points=30, oversample_ratio=3.0, importance_sample_ratio=0.75)
    torch.manual_seed(5)
    bce, dice = point_sampled_mask_losses(logits, targets, **kw)
    torch.manual_seed(5)
    coords = uncertain_point_coords(logits[:, None], **kw).double().numpy()  # same draw (tested in test_matcher)
    for j in range(3):
        x = np.array([ref.bilinear_at(logits[j].numpy(), *c) for c in coords[j]])
        t = np.array([ref.bilinear_at(targets[j].double().numpy(), *c) for c in coords[j]])
        assert bce[j].item() == pytest.approx(ref.bce_mean(x, t), rel=1e-10)  # Mask2Former: BCE, not focal
        assert dice[j].item() == pytest.approx(ref.dice(x, t), rel=1e-10)


def test_point_sampling_option_end_to_end():
    cfg = apply_overrides(Config(), ["model.num_classes=3", "loss.point_sampling=true", "loss.num_points=50"])
    criterion = build_criterion(cfg)
    assert criterion.matcher.num_points == 50 and criterion.point_sampling
    outputs = _outputs(2, 4, 3, 4, 4, grad=True, dtype=torch.float32)
    targets = [
        SegTarget(torch.tensor([0, 1]), torch.rand(2, 16, 16) > 0.5),
        SegTarget(torch.tensor([2]), torch.rand(1, 13, 15) > 0.5),
    ]
    losses = criterion(outputs, targets)
    assert len(losses) == 19 and all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    assert outputs["pred_masks"].grad.abs().sum() > 0
    empty = [SegTarget(torch.zeros(0, dtype=torch.long), torch.zeros(0, 16, 16, dtype=torch.bool))] * 2
    losses = criterion(outputs, empty)
    assert losses["loss_mask"].item() == 0 and losses["loss_dice_4"].item() == 0 and torch.isfinite(losses["loss"])


def test_per_pixel_criterion_equals_reference():
    B, K, h, w = 2, 3, 3, 4
    sem0 = torch.randint(0, K, (10, 13))
    sem0[:3, :4] = 255
    targets = [SegTarget.from_semantic(sem0, 255), SegTarget.from_semantic(torch.randint(0, K, (12, 16)), 255)]
    outputs = {"sem_seg": torch.randn(B, K, h, w, dtype=torch.float64)}
    outputs["aux_outputs"] = [{"sem_seg": torch.randn(B, K, h, w, dtype=torch.float64)} for _ in range(2)]
    got = PerPixelCriterion(num_classes=K, ignore_label=255)(outputs, targets)
    labels = np.full((B, 12, 16), 255)
    labels[0, :10, :13], labels[1] = sem0.numpy(), targets[1].sem_seg.numpy()  # crop padded with the ignore value
    want = [ref.per_pixel_ce(o["sem_seg"].numpy(), labels, 255) for o in [outputs] + outputs["aux_outputs"]]
    assert sorted(got) == ["loss", "loss_sem_seg", "loss_sem_seg_0", "loss_sem_seg_1"]
    for key, value in zip(("loss_sem_seg", "loss_sem_seg_0", "loss_sem_seg_1"), want):
        assert got[key].item() == pytest.approx(value, rel=1e-10), key
    assert got["loss"].item() == pytest.approx(sum(want), rel=1e-12)


def test_per_pixel_edge_cases():
    criterion = PerPixelCriterion(num_classes=2, ignore_label=255)
    logits = torch.randn(1, 2, 2, 2, requires_grad=True)
    all_ignore = SegTarget(
        torch.zeros(0, dtype=torch.long), torch.zeros(0, 8, 8, dtype=torch.bool), torch.full((8, 8), 255)
    )
    loss = criterion({"sem_seg": logits}, [all_ignore])["loss"]
    assert loss.item() == 0 and torch.isfinite(loss)
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, :4], masks[1, 4:6] = True, True  # rows 6..7 in no mask -> ignored
    from_masks = criterion({"sem_seg": logits}, [SegTarget(torch.tensor([1, 0]), masks)])["loss_sem_seg"]
    sem = torch.full((8, 8), 255)
    sem[:4], sem[4:6] = 1, 0
    assert from_masks.item() == pytest.approx(
        criterion({"sem_seg": logits}, [SegTarget(torch.tensor([1, 0]), masks, sem)])["loss"].item()
    )
    with pytest.raises(ValueError, match=r"targets\[0\].sem_seg has labels \[7\]"):
        criterion({"sem_seg": logits}, [SegTarget(torch.tensor([0]), masks[:1], torch.full((8, 8), 7))])


def test_bad_inputs_name_the_problem():
    criterion, outputs = _criterion(3), _outputs(1, 4, 3, 2, 2, aux=0)
    with pytest.raises(ValueError, match=r"targets\[0\]: labels \[0, 3\] outside \[0, 3\)"):
        criterion(outputs, [SegTarget(torch.tensor([0, 3]), torch.zeros(2, 8, 8, dtype=torch.bool))])
    with pytest.raises(ValueError, match=r"targets\[0\]: masks of size \(9, 8\) exceed the padded input size \(8, 8\)"):
        criterion(outputs, [SegTarget(torch.tensor([0]), torch.zeros(1, 9, 8, dtype=torch.bool))])
    with pytest.raises(ValueError, match=r"targets\[0\]: masks \(2, 8, 8\) do not match 1 labels"):
        criterion(outputs, [SegTarget(torch.tensor([0]), torch.zeros(2, 8, 8, dtype=torch.bool))])
    with pytest.raises(KeyError, match="missing 'pred_masks'"):
        criterion({"pred_logits": outputs["pred_logits"]}, [])
    with pytest.raises(ValueError, match=r"want \[B, Q, 5\]"):
        _criterion(4)(outputs, [])
    with pytest.raises(ValueError, match="2 targets for a batch of 1"):
        criterion(outputs, [SegTarget(torch.tensor([0]), torch.zeros(1, 8, 8, dtype=torch.bool))] * 2)


def test_build_criterion_reads_the_config():
    cfg = apply_overrides(Config(), ["model.num_classes=7", "loss.mask_weight=5", "loss.no_object_weight=0.2"])
    criterion = build_criterion(cfg)
    assert isinstance(criterion, SetCriterion) and criterion.weight_dict == {
        "loss_ce": 1.0,
        "loss_mask": 5.0,
        "loss_dice": 1.0,
    }
    assert criterion.empty_weight.tolist() == pytest.approx([1.0] * 7 + [0.2])
    assert (criterion.matcher.cost_class, criterion.matcher.cost_mask, criterion.matcher.num_points) == (1.0, 5.0, 0)
    no_aux = build_criterion(apply_overrides(cfg, ["loss.deep_supervision=false"]))
    assert sorted(
        no_aux(_outputs(1, 3, 7, 2, 2, aux=5), [SegTarget(torch.tensor([1]), torch.ones(1, 8, 8, dtype=torch.bool))])
    ) == ["loss", "loss_ce", "loss_dice", "loss_mask"]
    for arch, aux in (("per_pixel_baseline", False), ("per_pixel_baseline_plus", True)):
        pp = build_criterion(apply_overrides(cfg, [f"model.arch={arch}", "data.ignore_label=65535"]))
        assert isinstance(pp, PerPixelCriterion) and (pp.ignore_label, pp.deep_supervision) == (65535, aux)
    with pytest.raises(ValueError, match="unknown model.arch 'detr'"):
        build_criterion(apply_overrides(cfg, ["model.arch=detr"]))
