"""Parity with transformers' Mask2FormerForUniversalSegmentation (the independent oracle): tiny configs, random weights.

Every parameter transformers initializes to a constant is re-drawn (norm affine + BN statistics, biases, Swin
relative-position tables, the deformable attention's zero-initialized offset and weight projections), so a mis-wired
or ignored parameter changes the outputs. All 10 predictions (raw queries + every layer) are compared.

Where transformers differs from the official Mask2Former (mask2former.md section 6.2), this package follows the
official code; none of those differences reaches a float32 eval forward, which is why the outputs can be compared
directly:
- 6.2.1 precision: the official pixel decoder runs in float32 under autocast, transformers' in the input dtype. Here
  everything is float32, so both agree; `test_pixel_decoder_is_float32_under_autocast` (test_mask2former.py) checks
  the official behaviour separately.
- 6.2.2 transformers' decoder layerdrop (= dropout) and 6.2.3 its DropPath / clamping act only in training with
  dropout > 0; the tiny configs use dropout 0 and our predictor is put in train mode only to return the aux outputs.
- 6.2.4 pixel_mask is ignored by both (no padding mask anywhere).
- self-attention: transformers uses separate q/k/v Linears, the official one packed `in_proj_weight`; the mapping
  concatenates them (rows q, k, v): same numbers up to rounding.
"""

from __future__ import annotations

import pytest
import torch
from conftest import require_transformers
from torch import nn

from maskformer.convert.hf_mask2former import (
    DROPPED,
    build_hf_mask2former_model,
    hf_mask2former_config_to_config,
    hf_mask2former_to_official,
    load_hf_mask2former_state_dict,
)
from maskformer.structures import ImageBatch

S4 = ["stage1", "stage2", "stage3", "stage4"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one thread avoids OpenMP barrier stalls on the shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _config(kind: str):
    tr = require_transformers()
    if kind == "swin":
        bb = tr.SwinConfig(
            embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=4, mlp_ratio=2.0, out_features=S4
        )
    else:
        bb = tr.ResNetConfig(
            embedding_size=16, hidden_sizes=[32, 64, 96, 128], depths=[1, 1, 1, 1], layer_type="bottleneck",
            out_features=S4,
        )  # fmt: skip
    return tr.Mask2FormerConfig(
        backbone_config=bb,
        num_labels=5,
        num_queries=6,
        feature_size=32,
        mask_feature_size=32,
        hidden_dim=32,
        encoder_feedforward_dim=48,
        dim_feedforward=64,
        encoder_layers=2,
        decoder_layers=5,  # 4 masked-attention layers: levels 0, 1, 2, 0 (the round robin wraps once)
        num_attention_heads=4,
    )


@torch.no_grad()
def _redraw(hf: nn.Module) -> None:
    """Re-draw every constant-initialized parameter so that each one influences the outputs."""
    for name, mod in hf.named_modules():
        if isinstance(mod, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d)):
            mod.weight.normal_(1.0, 0.2)
            mod.bias.normal_(0.0, 0.2)
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.normal_(0.0, 0.2)
            mod.running_var.uniform_(0.5, 1.5)
        if isinstance(mod, (nn.Linear, nn.Conv2d)) and mod.bias is not None:
            mod.bias.normal_(0.0, 0.2)
        if isinstance(mod, nn.Conv2d):
            nn.init.kaiming_uniform_(mod.weight, a=1)
        if isinstance(mod, nn.Linear):
            nn.init.xavier_uniform_(mod.weight)
        if isinstance(mod, nn.MultiheadAttention):
            mod.in_proj_bias.normal_(0.0, 0.2)
        if name.endswith("sampling_offsets"):  # HF/official init: weight 0 (offsets independent of the input)
            mod.weight.normal_(0.0, 0.05)
    for name, p in hf.named_parameters():
        if name.endswith("relative_position_bias_table"):
            p.normal_(0.0, 0.5)


def _pair(kind: str):
    tr = require_transformers()
    torch.manual_seed(0)
    cfg = _config(kind)
    hf = tr.Mask2FormerForUniversalSegmentation(cfg).eval()
    _redraw(hf)
    ours = build_hf_mask2former_model(cfg.to_dict()).eval()
    return hf, ours


def _images() -> ImageBatch:
    g = torch.Generator().manual_seed(1)
    ims = [torch.rand(3, 50, 70, generator=g) * 255, torch.rand(3, 61, 45, generator=g) * 255]
    return ImageBatch.from_images(ims, size_divisibility=32)  # [2, 3, 64, 96]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("kind", ["swin", "resnet"])
def test_every_layer_matches_transformers(kind):
    hf, ours = _pair(kind)
    hf_sd = hf.state_dict()
    result = load_hf_mask2former_state_dict(ours, hf_sd)  # strict: raises on any missing or unexpected key
    extra = {"swin": "swin.layernorm.", "resnet": "num_batches_tracked"}[kind]
    assert set(DROPPED) < set(result.dropped) and all(k in DROPPED or extra in k for k in result.dropped)
    fused = 2 * sum(k.endswith(("self_attn.q_proj.weight", "self_attn.q_proj.bias")) for k in hf_sd)  # 3 -> 1
    fused += 2 * sum(k.endswith(("attention.q_proj.weight", "attention.q_proj.bias")) for k in hf_sd)  # Swin qkv
    assert len(hf_sd) == result.loaded + len(result.dropped) + fused  # every source key accounted for
    assert result.loaded + len(result.filled) == len(ours.state_dict())
    assert all(k.endswith("relative_position_index") for k in result.filled) and (kind == "swin") == bool(result.filled)
    batch = _images()
    assert batch.tensor.shape == (2, 3, 64, 96)
    ours.sem_seg_head.predictor.train()  # aux outputs (dropout is 0: same numbers as eval)
    with torch.no_grad():
        out = ours(batch)
        ref = hf(pixel_values=(batch.tensor - ours.pixel_mean) / ours.pixel_std, output_auxiliary_logits=True)
    layers = [*out["aux_outputs"], out]
    ref_layers = [*ref.auxiliary_logits, {"class_queries_logits": ref.class_queries_logits,
                                         "masks_queries_logits": ref.masks_queries_logits}]  # fmt: skip
    assert len(layers) == len(ref_layers) == 5
    for i, (a, b) in enumerate(zip(layers, ref_layers)):
        assert a["pred_logits"].shape == b["class_queries_logits"].shape == (2, 6, 6)
        assert a["pred_masks"].shape == b["masks_queries_logits"].shape == (2, 6, 16, 24)
        assert _rel(a["pred_logits"], b["class_queries_logits"]) < 1e-4, f"class logits of prediction {i}"
        assert _rel(a["pred_masks"], b["masks_queries_logits"]) < 1e-4, f"mask logits of prediction {i}"
    # not degenerate: queries differ, and the attention masks block part (not all, not none) of the pixels
    final = out["pred_masks"]
    assert final.std(dim=1).mean() / final.std() > 0.1
    blocked = torch.stack([(a["pred_masks"] < 0).float().mean() for a in layers[:-1]])
    assert ((blocked > 0.05) & (blocked < 0.95)).all(), blocked
    # eval (no aux outputs): the earlier predictions are made only at the levels' sizes, for the attention masks
    ours.sem_seg_head.predictor.eval()
    with torch.no_grad():
        out = ours(batch)
    assert "aux_outputs" not in out
    assert _rel(out["pred_logits"], ref.class_queries_logits) < 1e-4
    assert _rel(out["pred_masks"], ref.masks_queries_logits) < 1e-4


def test_hub_names_map_like_in_memory_names(tmp_path):
    """save_pretrained writes the on-disk Swin names (no `swin.`, attention.self.query, ...): same mapping."""
    from safetensors.torch import load_file

    hf, _ = _pair("swin")
    hf.save_pretrained(tmp_path)
    on_disk = load_file(str(tmp_path / "model.safetensors"))
    assert any(".attention.self.query." in k for k in on_disk)  # really the other naming
    a, _ = hf_mask2former_to_official(hf.state_dict())
    b, _ = hf_mask2former_to_official(on_disk)
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_self_attention_qkv_fused_in_order_and_unknown_keys_named():
    hf, _ = _pair("resnet")
    sd = dict(hf.state_dict())
    mapped, _ = hf_mask2former_to_official(sd)
    pre = "model.transformer_module.decoder.layers.2.self_attn."
    w = mapped["sem_seg_head.predictor.transformer_self_attention_layers.2.self_attn.in_proj_weight"]
    assert torch.equal(w, torch.cat([sd[pre + f"{c}_proj.weight"] for c in "qkv"]))
    sd["model.transformer_module.extra.weight"] = torch.zeros(1)
    sd.pop(pre + "k_proj.bias")
    with pytest.raises(KeyError, match=r"extra\.weight.*layer 2 self_attn bias"):
        hf_mask2former_to_official(sd)


def test_config_maps_to_the_paper_model():
    """transformers' Swin-T COCO panoptic config (the hub's facebook/mask2former-swin-tiny-coco-panoptic shape) ->
    the mask2former_swin_t_coco_panoptic network."""
    tr = require_transformers()
    from maskformer.config import get_preset

    bb = tr.SwinConfig(
        embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7, drop_path_rate=0.3,
        out_features=S4,
    )  # fmt: skip
    cfg = hf_mask2former_config_to_config(tr.Mask2FormerConfig(backbone_config=bb, num_labels=133).to_dict())
    preset = get_preset("mask2former_swin_t_coco_panoptic")
    assert cfg.model == preset.model
    loss = preset.loss
    assert (cfg.loss.class_weight, cfg.loss.mask_weight, cfg.loss.dice_weight) == (2.0, 5.0, 5.0)
    assert cfg.loss == loss
