"""Mask2Former network: the deformable attention against a float64 direct sum and finite differences, the official
initialization and reference points, the masked-attention rule, float32 pixel decoder under autocast, the output
layout in training and eval, presets and config errors. Parity with transformers: test_mask2former_parity.py."""

from __future__ import annotations

import math

import pytest
import torch

from maskformer.config import get_preset
from maskformer.criterion import build_criterion
from maskformer.modeling import build_model
from maskformer.modeling.deform_attn import MSDeformAttn, grid_sample_core, ms_deform_attn_core
from maskformer.modeling.masked_decoder import attention_mask
from maskformer.modeling.msdeform_pixel_decoder import reference_points
from maskformer.structures import SegTarget

SHAPES = [(3, 5), (4, 2), (6, 7)]  # levels of different sizes and aspect ratios
TINY = [
    "model.conv_dim=32", "model.mask_dim=32", "model.hidden_dim=32", "model.dim_feedforward=64",
    "model.enc_dim_feedforward=48", "model.enc_layers=2", "model.dec_layers=4", "model.num_queries=5",
    "loss.num_points=64",
]  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _bilinear(img, x: float, y: float):
    """Bilinear read of img [d, H, W] at normalized (x, y) with align_corners=False, zeros outside (by hand)."""
    d, H, W = img.shape
    px, py = x * W - 0.5, y * H - 0.5  # pixel j's centre is at (j + 0.5) / W
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(d, dtype=torch.float64)
    for xi, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
        for yi, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
            if 0 <= xi < W and 0 <= yi < H:
                out += wx * wy * img[:, yi, xi]
    return out


def _direct_sum(value, shapes, locations, weights):
    """out[b, q, h*d] = sum over levels l and points p of weight * bilinear(level l of head h at location)."""
    B, S, H, D = value.shape
    Lq, LP = locations.shape[1], locations.shape[3]
    P = LP // len(shapes)
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(B, Lq, H * D, dtype=torch.float64)
    for b in range(B):
        for head in range(H):
            maps = [value[b, starts[lv] : starts[lv + 1], head].T.reshape(D, h, w) for lv, (h, w) in enumerate(shapes)]
            for q in range(Lq):
                acc = torch.zeros(D, dtype=torch.float64)
                for k in range(LP):
                    x, y = locations[b, q, head, k].tolist()
                    acc += weights[b, q, head, k] * _bilinear(maps[k // P], x, y)
                out[b, q, head * D : (head + 1) * D] = acc
    return out


def _random_inputs(dtype=torch.float64, B=2, heads=2, d=3, Lq=4, P=2):
    g = torch.Generator().manual_seed(0)
    S = sum(h * w for h, w in SHAPES)
    value = torch.randn(B, S, heads, d, generator=g, dtype=dtype)
    locations = torch.rand(B, Lq, heads, len(SHAPES) * P, 2, generator=g, dtype=dtype) * 1.4 - 0.2  # some outside
    weights = torch.rand(B, Lq, heads, len(SHAPES) * P, generator=g, dtype=dtype)
    return value, locations, weights


# the eager form (gather) and the form selected while exporting (grid_sample)
CORES = pytest.mark.parametrize("core", [ms_deform_attn_core, grid_sample_core], ids=["gather", "grid_sample"])


@CORES
def test_core_equals_float64_direct_sum(core):
    value, locations, weights = _random_inputs()
    assert ((locations < 0) | (locations > 1)).any()  # zero padding is exercised
    out = core(value, SHAPES, locations, weights)
    ref = _direct_sum(value, SHAPES, locations, weights)
    assert out.shape == (2, 4, 6)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    out32 = core(value.float(), SHAPES, locations.float(), weights.float())
    torch.testing.assert_close(out32.double(), ref, rtol=1e-5, atol=1e-5)


@CORES
def test_core_gradients_match_finite_differences(core):
    value, locations, weights = _random_inputs(B=1, heads=2, d=2, Lq=2, P=1)
    inputs = tuple(t.clone().requires_grad_(True) for t in (value, locations, weights))
    assert torch.autograd.gradcheck(lambda v, loc, w: core(v, SHAPES, loc, w), inputs, eps=1e-6)


def test_gather_core_at_edges_and_far_outside():
    """Samples on pixel centres, on the image border, on and across the border of the gather form's zero padding
    (pixel coordinates -1 and size), and very far outside, on every level: equal to the direct sum and grid_sample."""
    value, _, weights = _random_inputs(B=2, heads=2, d=3, Lq=3, P=2)
    g = torch.Generator().manual_seed(1)
    locations = torch.empty(2, 3, 2, len(SHAPES), 2, 2, dtype=torch.float64)  # [B, Lq, h, L, P, (x, y)]
    for level, (h, w) in enumerate(SHAPES):
        for axis, n in enumerate((w, h)):
            pixel = torch.tensor([0, -0.5, -1, -1.25, -2, n - 1, n - 0.5, n - 0.25, n, n + 0.5, 1e7, -1e7, 0.3])
            pick = torch.randint(0, len(pixel), (2, 3, 2, 2), generator=g)
            locations[:, :, :, level, :, axis] = (pixel[pick].double() + 0.5) / n  # pixel j's centre is (j + 0.5) / n
    locations = locations.flatten(3, 4)  # [B, Lq, h, L*P, 2]
    out = ms_deform_attn_core(value, SHAPES, locations, weights)
    torch.testing.assert_close(out, _direct_sum(value, SHAPES, locations, weights), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out, grid_sample_core(value, SHAPES, locations, weights), rtol=1e-12, atol=1e-12)


def test_module_follows_the_official_formula():
    """locations = reference + offset / (W_l, H_l); softmax jointly over the L x P weights of each head."""
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=8, n_levels=3, n_heads=2, n_points=2).double()
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0, 0.3)
    B, Lq, S = 1, 3, sum(h * w for h, w in SHAPES)
    query, value_in = torch.randn(B, Lq, 8, dtype=torch.float64), torch.randn(B, S, 8, dtype=torch.float64)
    ref = torch.rand(B, Lq, 2, dtype=torch.float64)
    out = attn(query, ref, value_in, SHAPES)
    value = attn.value_proj(value_in).view(B, S, 2, 4)
    off = attn.sampling_offsets(query).view(B, Lq, 2, 3, 2, 2)  # [B, Lq, heads, levels, points, (x, y)]
    norm = torch.tensor([[w, h] for h, w in SHAPES], dtype=torch.float64).view(1, 1, 1, 3, 1, 2)
    loc = (ref[:, :, None, None, None, :] + off / norm).view(B, Lq, 2, 6, 2)
    w = attn.attention_weights(query).view(B, Lq, 2, 6).softmax(-1)
    expected = attn.output_proj(_direct_sum(value.detach(), SHAPES, loc.detach(), w.detach()))
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_official_offset_initialization():
    attn = MSDeformAttn(d_model=256, n_levels=3, n_heads=8, n_points=4)
    bias = attn.sampling_offsets.bias.view(8, 3, 4, 2)
    unit = torch.tensor([[1, 0], [1, 1], [0, 1], [-1, 1], [-1, 0], [-1, -1], [0, -1], [1, -1]], dtype=torch.float32)
    expected = unit[:, None, None, :] * torch.arange(1, 5.0).view(1, 1, 4, 1)
    torch.testing.assert_close(bias, expected.expand(8, 3, 4, 2), atol=1e-5, rtol=0)  # float32 cos/sin
    assert not attn.sampling_offsets.weight.any() and not attn.attention_weights.weight.any()


def test_reference_points_equal_official_linspace():
    ref = reference_points(SHAPES, torch.device("cpu"))
    official = []
    for h, w in SHAPES:
        y, x = torch.meshgrid(torch.linspace(0.5, h - 0.5, h), torch.linspace(0.5, w - 0.5, w), indexing="ij")
        official.append(torch.stack((x.reshape(-1) / w, y.reshape(-1) / h), -1))
    assert torch.equal(ref[0], torch.cat(official))


def test_attention_mask_rule():
    """Blocked where sigmoid < 0.5 after a bilinear resize; an all-blocked query attends everywhere."""
    logits = torch.full((1, 3, 4, 4), -2.0)
    logits[0, 0, :2, :2] = 5.0  # query 0: top-left quarter
    logits[0, 2] = 3.0  # query 2: everywhere; query 1: nowhere -> reset to everywhere
    attend = attention_mask(logits, (2, 2))
    assert attend.shape == (1, 1, 3, 4) and attend.dtype == torch.bool
    assert attend[0, 0, 0].tolist() == [True, False, False, False]
    assert attend[0, 0, 1].all() and attend[0, 0, 2].all()
    logits.requires_grad_(True)
    assert not attention_mask(logits, (2, 2)).requires_grad


def _tiny(name="mask2former_r18_synth", extra=()):
    torch.manual_seed(0)
    return get_preset(name, [*TINY, *extra])


def test_outputs_in_training_and_eval():
    cfg = _tiny()
    model = build_model(cfg)
    x = torch.rand(2, 3, 70, 90) * 255  # padded to 96 x 96
    out = model.train()(x)
    assert out["pred_logits"].shape == (2, 5, cfg.model.num_classes + 1)
    assert out["pred_masks"].shape == (2, 5, 24, 24)
    assert len(out["aux_outputs"]) == cfg.model.dec_layers - 1 == 3
    assert all(a["pred_logits"].shape == (2, 5, 9) for a in out["aux_outputs"])
    assert all(a["pred_masks"].shape == (2, 5, 24, 24) for a in out["aux_outputs"])
    with torch.no_grad():
        ev = model.eval()(x)
        model.sem_seg_head.predictor.train()  # aux outputs on eval-mode BatchNorm statistics
        last = model(x)
    assert set(ev) == {"pred_logits", "pred_masks"}
    assert torch.equal(ev["pred_masks"], last["pred_masks"]) and torch.equal(ev["pred_logits"], last["pred_logits"])


def test_paper_preset_decoder_layout():
    with torch.device("meta"):
        model = build_model(get_preset("mask2former_r50_ade20k"))
        out = model.train()(torch.empty(1, 3, 64, 64))
    pred = model.sem_seg_head.predictor
    assert len(pred.transformer_cross_attention_layers) == 9 and len(out["aux_outputs"]) == 9
    assert len(model.sem_seg_head.pixel_decoder.transformer.encoder.layers) == 6
    keys = model.state_dict().keys()
    for key in ("pixel_decoder.transformer.level_embed", "pixel_decoder.adapter_1.norm.weight",
                "pixel_decoder.input_proj.2.1.weight", "predictor.query_feat.weight",
                "predictor.transformer_ffn_layers.8.linear1.weight",
                "predictor.transformer_cross_attention_layers.0.multihead_attn.in_proj_weight",
                "predictor.mask_embed.layers.2.bias"):  # fmt: skip
        assert "sem_seg_head." + key in keys, key
    assert not any(k.startswith("sem_seg_head.predictor.input_proj") for k in keys)  # 256 in = 256 hidden


def test_old_static_query_name_loads():
    model = build_model(_tiny())
    sd = model.state_dict()
    sd["sem_seg_head.predictor.static_query.weight"] = sd.pop("sem_seg_head.predictor.query_feat.weight") + 1
    model.load_state_dict(sd)
    assert torch.equal(model.sem_seg_head.predictor.query_feat.weight, sd["sem_seg_head.predictor.static_query.weight"])


def test_pixel_decoder_is_float32_under_autocast():
    model = build_model(_tiny()).eval()
    feats = model.backbone(torch.randn(1, 3, 64, 64))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        mask_features, maps = model.sem_seg_head.pixel_decoder(feats)
        out = model.sem_seg_head.predictor(maps, mask_features)
    assert mask_features.dtype == torch.float32 and all(m.dtype == torch.float32 for m in maps)
    assert out["pred_masks"].dtype == torch.bfloat16  # the decoder itself runs under autocast, as the official


def test_point_sampled_loss_over_all_predictions_and_backward():
    cfg = _tiny()
    assert (cfg.loss.class_weight, cfg.loss.mask_weight, cfg.loss.dice_weight, cfg.loss.point_sampling) == (
        2.0, 5.0, 5.0, True)  # fmt: skip
    model, criterion = build_model(cfg).train(), build_criterion(cfg)
    x = torch.rand(2, 3, 64, 64) * 255
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[0, :20], masks[1, 30:] = True, True
    targets = [
        SegTarget(labels=torch.tensor([1, 3]), masks=masks),
        SegTarget(labels=torch.tensor([2]), masks=masks[1:]),
    ]
    losses = criterion(model(x), targets)
    assert {f"loss_ce_{i}" for i in range(3)} <= set(losses) and len(losses) == 3 * 4 + 1
    losses["loss"].backward()
    grads = [p.grad for n, p in model.named_parameters() if "sampling_offsets" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)  # deformable offsets learn


def test_arch_and_pixel_decoder_must_agree():
    with pytest.raises(ValueError, match="arch 'mask2former' needs pixel_decoder 'msdeformattn'"):
        build_model(get_preset("mask2former_r18_synth", ["model.pixel_decoder=fpn"]))
    with pytest.raises(ValueError, match="pixel_decoder='msdeformattn'"):
        build_model(get_preset("maskformer_r18_synth", ["model.pixel_decoder=msdeformattn"]))


@pytest.mark.parametrize(
    ("name", "params_m", "queries", "k"),
    [("mask2former_r50_coco_panoptic", 44, 100, 133), ("mask2former_swin_l_coco_panoptic", 216, 200, 133),
     ("mask2former_r50_coco_instance", 44, 100, 80), ("mask2former_swin_l_cityscapes_panoptic", 216, 200, 19),
     ("mask2former_r101_cityscapes", 63, 100, 19)],
)  # fmt: skip
def test_zoo_presets(name, params_m, queries, k):
    from maskformer.modeling.flops import count_parameters

    cfg = get_preset(name)
    assert (cfg.model.num_queries, cfg.model.num_classes, cfg.model.dec_layers) == (queries, k, 10)
    assert (cfg.train.weight_decay, cfg.train.backbone_multiplier, cfg.train.base_lr) == (0.05, 0.1, 1e-4)
    assert (cfg.loss.num_points, cfg.loss.oversample_ratio, cfg.loss.importance_sample_ratio) == (12544, 3.0, 0.75)
    with torch.device("meta"):
        assert round(count_parameters(build_model(cfg)) / 1e6) == params_m


def test_onnx_export_matches_torch(tmp_path):
    """The incumbents cannot export Mask2Former; here onnxruntime equals torch (1e-4 relative) at two input sizes
    (one not a multiple of 32) with batch 2, from one graph traced at a third size."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from maskformer.export import check_export, export

    model = build_model(_tiny()).eval()
    path = export(model, tmp_path / "m2f.onnx", "onnx", sample_size=(2, 96, 128))
    results = check_export(model, path, "onnx", sizes=[(2, 64, 96), (2, 100, 75)])
    assert [r["size"] for r in results] == [(2, 64, 96), (2, 100, 75)]
    for r in results:
        assert r["max_abs_diff"] <= 1e-4 * r["max_abs_ref"], r
