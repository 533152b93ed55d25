"""The heads and the MaskFormer wiring: formulas against float64 references, torch's own nn.MultiheadAttention as an
oracle, official parameter names, padding/normalization, gradients and determinism on the small CPU presets."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from maskformer.config import get_preset
from maskformer.modeling import build_model
from maskformer.modeling.heads import TransformerPredictor
from maskformer.modeling.pixel_decoder import BasePixelDecoder
from maskformer.modeling.position_encoding import PositionEmbeddingSine
from maskformer.modeling.transformer import MultiheadAttention, TransformerEncoderOnly
from maskformer.structures import PIXEL_MEAN, ImageBatch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one thread avoids OpenMP barrier stalls on the shared 2-core machine (several x faster here)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _sine_reference(h: int, w: int, f: int) -> torch.Tensor:
    """Section 3.4 written out element by element in float64: [2F, H, W]."""
    out = torch.zeros(2 * f, h, w, dtype=torch.float64)
    for axis, n in ((0, h), (1, w)):
        for i in range(f):
            t = 10000 ** (2 * (i // 2) / f)
            for p in range(n):
                v = (p + 1) / (n + 1e-6) * 2 * math.pi
                val = math.sin(v / t) if i % 2 == 0 else math.cos(v / t)
                if axis == 0:
                    out[i, p, :] = val
                else:
                    out[f + i, :, p] = val
    return out


def test_sine_position_encoding_matches_formula():
    x = torch.zeros(2, 5, 3, 7)
    pos = PositionEmbeddingSine(num_pos_feats=8)(x)
    assert pos.shape == (2, 16, 3, 7)
    ref = _sine_reference(3, 7, 8).float()
    torch.testing.assert_close(pos[0], ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(pos[1], ref, atol=1e-6, rtol=0)
    assert list(PositionEmbeddingSine().state_dict()) == []


def test_attention_matches_torch_multihead_attention():
    """Same parameter names as nn.MultiheadAttention, so its state dict loads and its outputs are the oracle."""
    ours = MultiheadAttention(16, 4)
    ref = nn.MultiheadAttention(16, 4, batch_first=True)
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_()
    ref.load_state_dict(ours.state_dict())
    q, k, v = torch.randn(2, 5, 16), torch.randn(2, 9, 16), torch.randn(2, 9, 16)
    torch.testing.assert_close(ours(q, k, v), ref(q, k, v, need_weights=False)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours(q, q, q), ref(q, q, q, need_weights=False)[0], atol=1e-5, rtol=1e-5)


def _encoder_reference(enc: TransformerEncoderOnly, src: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """DETR post-norm encoder in float64 via nn.MultiheadAttention: q = k = src + pos, v = src."""
    x, p = src.double().flatten(2).transpose(1, 2), pos.double().flatten(2).transpose(1, 2)  # [B, HW, C]
    for layer in enc.encoder.layers:
        mha = nn.MultiheadAttention(x.shape[-1], layer.self_attn.num_heads, batch_first=True).double()
        mha.load_state_dict(layer.self_attn.state_dict())
        x = F.layer_norm(
            x + mha(x + p, x + p, x, need_weights=False)[0],
            x.shape[-1:],
            layer.norm1.weight.double(),
            layer.norm1.bias.double(),
        )
        ff = F.linear(
            F.relu(F.linear(x, layer.linear1.weight.double(), layer.linear1.bias.double())),
            layer.linear2.weight.double(),
            layer.linear2.bias.double(),
        )
        x = F.layer_norm(x + ff, x.shape[-1:], layer.norm2.weight.double(), layer.norm2.bias.double())
    return x.transpose(1, 2).reshape(src.shape)


def test_transformer_encoder_matches_reference():
    enc = TransformerEncoderOnly(d_model=16, nhead=2, dim_feedforward=24, dropout=0.1, num_encoder_layers=2).eval()
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if p.dim() == 1:
                p.normal_(0.5 if "norm" in name else 0.0, 0.3)
    src, pos = torch.randn(2, 16, 3, 5), PositionEmbeddingSine(num_pos_feats=8)(torch.zeros(2, 16, 3, 5))
    torch.testing.assert_close(enc(src, pos).double(), _encoder_reference(enc, src, pos), atol=1e-5, rtol=1e-5)
    assert not any("encoder.norm" in k for k in enc.state_dict())  # post-norm: no final encoder norm


def test_fpn_top_down_with_mismatched_sizes():
    """Nearest upsampling to each lateral's size (odd sizes), GN without activation on laterals; a float64 reference."""
    chans = dict(res2=8, res3=16, res4=24, res5=32)
    dec = BasePixelDecoder(in_channels=chans, conv_dim=32, mask_dim=16).eval()
    sizes = dict(res2=(9, 13), res3=(5, 7), res4=(3, 4), res5=(2, 2))
    feats = {k: torch.randn(1, c, *sizes[k]) for k, c in chans.items()}
    mask_features, transformer_in = dec(feats)
    assert transformer_in is feats["res5"] and mask_features.shape == (1, 16, 9, 13)

    def conv_gn(m, x, relu):
        y = F.conv2d(x.double(), m.weight.double(), None, padding=m.padding)
        y = F.group_norm(y, 32, m.norm.weight.double(), m.norm.bias.double())
        return F.relu(y) if relu else y

    y = conv_gn(dec.layer_4, feats["res5"], True)
    for i, name in ((3, "res4"), (2, "res3"), (1, "res2")):
        lat = conv_gn(getattr(dec, f"adapter_{i}"), feats[name], False)
        up = y[:, :, (torch.arange(lat.shape[2]) * y.shape[2]) // lat.shape[2]]
        up = up[:, :, :, (torch.arange(lat.shape[3]) * y.shape[3]) // lat.shape[3]]  # nearest: floor(i * in / out)
        y = conv_gn(getattr(dec, f"layer_{i}"), lat + up, True)
    ref = F.conv2d(y, dec.mask_features.weight.double(), dec.mask_features.bias.double(), padding=1)
    torch.testing.assert_close(mask_features.double(), ref, atol=1e-5, rtol=1e-5)


def test_fpn_parameter_layout():
    """Section 3.1: no conv bias before GN, 1x1 laterals, 3x3 outputs, no res5 lateral, 3x3 mask_features with bias."""
    dec = BasePixelDecoder(in_channels=dict(res2=64, res3=128, res4=256, res5=512), conv_dim=32, mask_dim=16)
    shapes = {k: tuple(v.shape) for k, v in dec.state_dict().items()}
    assert shapes["adapter_1.weight"] == (32, 64, 1, 1) and shapes["adapter_3.weight"] == (32, 256, 1, 1)
    assert shapes["layer_1.weight"] == (32, 32, 3, 3) and shapes["layer_4.weight"] == (32, 512, 3, 3)
    assert shapes["mask_features.weight"] == (16, 32, 3, 3) and shapes["mask_features.bias"] == (16,)
    assert "adapter_4.weight" not in shapes and not any(k.endswith(("adapter_1.bias", "layer_1.bias")) for k in shapes)
    assert isinstance(dec.adapter_1.norm, nn.GroupNorm) and dec.adapter_1.activation is None


def _predictor(**kw) -> TransformerPredictor:
    args = dict(
        in_channels=24,
        num_classes=5,
        hidden_dim=16,
        num_queries=7,
        nheads=2,
        dim_feedforward=32,
        dec_layers=3,
        mask_dim=8,
        dropout=0.0,
    )
    args.update(kw)
    return TransformerPredictor(**args)


def test_predictor_aux_outputs_and_shared_final_norm():
    pred = _predictor()
    x, mf = torch.randn(2, 24, 3, 4), torch.randn(2, 8, 12, 16)
    train_out = pred.train()(x, mf)
    assert [tuple(a["pred_logits"].shape) for a in train_out["aux_outputs"]] == [(2, 7, 6)] * 2
    eval_out = pred.eval()(x, mf)
    assert set(eval_out) == {"pred_logits", "pred_masks"}
    torch.testing.assert_close(eval_out["pred_masks"], train_out["pred_masks"])  # dropout 0: same last layer
    # aux layer 1 = heads(decoder.norm(layer-1 output)); the mask logits are a dot product with every pixel embedding
    hs = pred.transformer(pred.input_proj(x), pred.query_embed.weight, pred.pe_layer(x))  # [L, B, Q, C]
    emb = pred.mask_embed(hs[0])  # [B, Q, D]
    ref = (emb.double()[:, :, :, None, None] * mf.double()[:, None]).sum(2)  # [B, Q, H, W]
    torch.testing.assert_close(train_out["aux_outputs"][0]["pred_masks"].double(), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(train_out["aux_outputs"][0]["pred_logits"], pred.class_embed(hs[0]))
    layer1 = pred.transformer.decoder.layers[0]
    raw = layer1(
        torch.zeros(2, 7, 16),
        x_tokens := pred.input_proj(x).flatten(2).transpose(1, 2),
        x_tokens + pred.pe_layer(x).flatten(2).transpose(1, 2),
        pred.query_embed.weight.expand(2, -1, -1),
    )
    torch.testing.assert_close(hs[0], pred.transformer.decoder.norm(raw))


def test_predictor_input_proj_only_when_needed():
    assert isinstance(_predictor(in_channels=16).input_proj, nn.Identity)
    assert not any(k.startswith("input_proj") for k in _predictor(in_channels=16).state_dict())
    assert _predictor(in_channels=16, enforce_input_proj=True).input_proj.weight.shape == (16, 16, 1, 1)
    assert _predictor(in_channels=24).input_proj.bias.shape == (16,)
    assert not hasattr(_predictor(mask_classification=False), "class_embed")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model(get_preset("maskformer_r18_synth")).eval()


def test_normalization_and_padding_equal_mean_padded_batch(tiny):
    """A raw 70x90 tensor (padded after normalization with 0) == the ImageBatch padded with the mean."""
    im = torch.rand(1, 3, 70, 90) * 255
    assert tiny.preprocess(im).shape == (1, 3, 96, 96)
    batch = ImageBatch.from_images([im[0]], size_divisibility=32)
    with torch.no_grad():
        a, b = tiny(im), tiny(batch)
    torch.testing.assert_close(a["pred_masks"], b["pred_masks"], atol=1e-4, rtol=1e-4)
    assert a["pred_masks"].shape == (1, 20, 24, 24) and a["pred_logits"].shape == (1, 20, 9)
    x = tiny.preprocess(batch)
    ref = (batch.tensor - torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1)) / torch.tensor([58.395, 57.12, 57.375]).view(
        1, 3, 1, 1
    )
    torch.testing.assert_close(x, ref)
    assert x[..., 70:, :].abs().max() < 1e-5  # the mean-padded rows are 0 after normalization
    assert not any(k.startswith("pixel_") for k in tiny.state_dict())


def test_bad_input_is_a_clear_error(tiny):
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\].*\(3, 32, 32\)"):
        tiny(torch.zeros(3, 32, 32))


def test_eval_is_deterministic(tiny):
    im = torch.rand(2, 3, 64, 64) * 255
    with torch.no_grad():
        a, b = tiny(im), tiny(im)
    assert torch.equal(a["pred_logits"], b["pred_logits"]) and torch.equal(a["pred_masks"], b["pred_masks"])


@pytest.mark.parametrize(
    "preset", ["maskformer_r18_synth", "per_pixel_baseline_r18_synth", "per_pixel_baseline_plus_r18_synth"]
)
def test_every_parameter_gets_a_gradient(preset):
    """Biases/norms are re-drawn first (zero biases would hide the layer-0 self-attention's out_proj and norm1).

    One exact exception, true of the official architecture too: the first decoder layer's self-attention sees
    tgt = 0, so its output is out_proj(b_v) whatever q and k are, and W_v @ 0 = 0: `in_proj_weight` of
    layers.0.self_attn gets only float rounding noise (~1e-6 of the other gradients).
    """
    torch.manual_seed(0)
    model = build_model(get_preset(preset)).train()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.normal_(0.5, 0.3)
    out = model(torch.rand(2, 3, 64, 64) * 255)
    tensors = [v for k, v in out.items() if k != "aux_outputs"]
    tensors += [v for aux in out.get("aux_outputs", []) for v in aux.values()]
    assert len(out.get("aux_outputs", [])) == (0 if preset.startswith("per_pixel_baseline_r") else 5)
    loss = sum((t * torch.randn_like(t)).sum() for t in tensors)  # random weights: no cancelling
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    norms = {n: p.grad.norm().item() for n, p in model.named_parameters()}
    typical = sorted(norms.values())[len(norms) // 2]
    dead = [n for n, g in norms.items() if not g > 1e-3 * typical]
    zero_tgt = "sem_seg_head.predictor.transformer.decoder.layers.0.self_attn.in_proj_weight"
    assert dead == ([] if preset.startswith("per_pixel_baseline_r") else [zero_tgt])


def test_optimize_for_inference_keeps_outputs_and_state_dict():
    torch.manual_seed(0)
    model = build_model(get_preset("maskformer_r18_synth")).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    im = torch.rand(1, 3, 64, 96) * 255
    with torch.no_grad():
        ref = model(im)
        out = model.optimize_for_inference()(im)
    assert list(model.state_dict()) == list(before)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    torch.testing.assert_close(out["pred_masks"], ref["pred_masks"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out["pred_logits"], ref["pred_logits"], atol=1e-4, rtol=1e-4)


def test_build_model_errors_name_the_problem():
    cfg = get_preset("maskformer_r18_synth")
    cfg.model.arch = "maskrcnn"
    with pytest.raises(ValueError, match="model.arch='maskrcnn'.*maskformer, per_pixel_baseline"):
        build_model(cfg)
    cfg = get_preset("maskformer_r18_synth", ["model.pixel_decoder=msdeform"])
    with pytest.raises(ValueError, match="model.pixel_decoder='msdeform'"):
        build_model(cfg)
    with pytest.raises(ValueError, match="backbone contract.*out_channels"):
        build_model(get_preset("maskformer_r18_synth"), backbone=nn.Conv2d(3, 8, 1))


@pytest.mark.parametrize("preset", ["maskformer_r18_synth", "per_pixel_baseline_plus_r18_synth"])
def test_fused_mask_conv_equals_conv_then_einsum(preset):
    """Eval shortcut (one Q-channel conv with weights mask_embed @ W) == mask_features conv + einsum, batch of 2."""
    torch.manual_seed(0)
    model = build_model(get_preset(preset)).eval()
    with torch.no_grad():
        model.sem_seg_head.pixel_decoder.mask_features.bias.normal_()
        im = torch.rand(2, 3, 64, 96) * 255
        fused = model(im)
        model.sem_seg_head.fuse_mask_conv = False
        plain = model(im)
    for key in plain:
        torch.testing.assert_close(fused[key], plain[key], atol=1e-4, rtol=1e-4)
