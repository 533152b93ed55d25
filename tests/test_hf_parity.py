"""Parity with transformers' MaskFormerForInstanceSegmentation (the independent oracle), tiny configs, random weights.

Every parameter HF initializes to a constant is re-drawn (norm affine + BN statistics, biases, Swin relative-position
tables, queries), Linear weights are xavier and queries N(0, 1) (transformers-oracle.md section 3), so a mis-wired or
ignored parameter changes the outputs.
"""

from __future__ import annotations

import pytest
import torch
from conftest import require_transformers
from torch import nn

from maskformer.config import get_preset
from maskformer.convert.backbones import backbone_by_depths
from maskformer.convert.hf import (
    build_hf_model,
    hf_backbone_args,
    hf_config_to_config,
    load_hf_state_dict,
    map_hf,
)
from maskformer.modeling.flops import count_parameters
from maskformer.structures import ImageBatch

S4 = ["stage1", "stage2", "stage3", "stage4"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one thread avoids OpenMP barrier stalls on the shared 2-core machine (several x faster here)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _configs(kind: str):
    tr = require_transformers()
    from transformers.models.maskformer.configuration_maskformer import MaskFormerDetrConfig

    if kind == "swin":
        bb = tr.SwinConfig(
            embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=4, mlp_ratio=2.0, out_features=S4
        )
    else:
        bb = tr.ResNetConfig(
            embedding_size=16,
            hidden_sizes=[32, 64, 96, 128],
            depths=[1, 1, 1, 1],
            layer_type="bottleneck",
            out_features=S4,
        )
    dec = MaskFormerDetrConfig(
        d_model=32, decoder_layers=2, decoder_attention_heads=4, decoder_ffn_dim=64, dropout=0.0, num_queries=8
    )
    return tr.MaskFormerConfig(
        backbone_config=bb, decoder_config=dec, num_labels=4, fpn_feature_size=32, mask_feature_size=32
    )


@torch.no_grad()
def _redraw(hf: nn.Module) -> None:
    """Re-draw every constant-initialized parameter so that each one influences the outputs."""
    for mod in hf.modules():
        if isinstance(mod, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d)):
            mod.weight.normal_(1.0, 0.2)
            mod.bias.normal_(0.0, 0.2)
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.normal_(0.0, 0.2)
            mod.running_var.uniform_(0.5, 1.5)
        if isinstance(mod, (nn.Linear, nn.Conv2d)) and mod.bias is not None:
            mod.bias.normal_(0.0, 0.2)
        if isinstance(mod, nn.Linear):  # xavier everywhere (HF: N(0, 0.02), which makes Swin maps near-constant)
            nn.init.xavier_uniform_(mod.weight)
    for name, p in hf.named_parameters():
        if name.endswith("relative_position_bias_table"):
            p.normal_(0.0, 0.5)
    hf.model.transformer_module.queries_embedder.weight.normal_(0.0, 1.0)


def _pair(kind: str):
    tr = require_transformers()
    torch.manual_seed(0)
    hf_cfg = _configs(kind)
    hf = tr.MaskFormerForInstanceSegmentation(hf_cfg).eval()
    _redraw(hf)
    ours = build_hf_model(hf_cfg.to_dict()).eval()
    return hf, ours


def _images() -> ImageBatch:
    g = torch.Generator().manual_seed(1)
    ims = [torch.rand(3, 50, 70, generator=g) * 255, torch.rand(3, 61, 45, generator=g) * 255]
    return ImageBatch.from_images(ims, size_divisibility=32)  # [2, 3, 64, 96]


def _fused_away(sd: dict) -> int:
    """Source keys that disappear by fusion: q/k/v (decoder, Swin) become one tensor, so 2 of every 3."""
    return 2 * sum(k.endswith(("q_proj.weight", "q_proj.bias", "self.query.weight", "self.query.bias")) for k in sd)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("kind", ["swin", "resnet"])
def test_outputs_match_transformers(kind):
    hf, ours = _pair(kind)
    report = load_hf_state_dict(ours, hf.state_dict())
    assert report.ok and "criterion.empty_weight" in report.dropped
    extra = {"swin": "model.layernorm.", "resnet": "num_batches_tracked"}[kind]  # dropped inside the backbone map
    assert len(report.dropped) > 1 and all(k == "criterion.empty_weight" or extra in k for k in report.dropped)
    assert len(hf.state_dict()) == report.loaded + len(report.dropped) + _fused_away(hf.state_dict())
    assert report.loaded == len(ours.state_dict())
    batch = _images()
    assert batch.tensor.shape == (2, 3, 64, 96)
    with torch.no_grad():
        out = ours(batch)
        ref = hf(pixel_values=(batch.tensor - ours.pixel_mean) / ours.pixel_std)
    assert out["pred_logits"].shape == ref.class_queries_logits.shape == (2, 8, 5)
    assert out["pred_masks"].shape == ref.masks_queries_logits.shape == (2, 8, 16, 24)
    assert _rel(out["pred_logits"], ref.class_queries_logits) < 1e-4
    assert _rel(out["pred_masks"], ref.masks_queries_logits) < 1e-4
    spread = out["pred_masks"].std(dim=1).mean() / out["pred_masks"].std()
    assert spread > 0.1  # queries differ from each other: the comparison is not degenerate


@pytest.mark.parametrize("kind", ["swin", "resnet"])
def test_hub_names_map_like_in_memory_names(kind, tmp_path):
    """save_pretrained writes the hub names (out_proj, layers.{l}.fc1); both must give the same state dict."""
    from safetensors.torch import load_file

    hf, _ = _pair(kind)
    hf.save_pretrained(tmp_path)
    on_disk = load_file(str(tmp_path / "model.safetensors"))
    assert any(".fc1." in k and ".mlp." not in k for k in on_disk)  # really the other naming
    a, b = map_hf(hf.state_dict()).tensors, map_hf(on_disk).tensors
    assert sorted(a) == sorted(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_qkv_fused_in_q_k_v_order():
    hf, ours = _pair("resnet")
    sd = hf.state_dict()
    mapped = map_hf(sd).tensors
    pre = "model.transformer_module.decoder.layers.1.encoder_attn."
    w = mapped["sem_seg_head.predictor.transformer.decoder.layers.1.multihead_attn.in_proj_weight"]
    assert torch.equal(w, torch.cat([sd[pre + f"{c}_proj.weight"] for c in "qkv"]))
    # the FPN index flip: HF fpn.layers.0 is the res4 lateral (adapter_3)
    fpn = sd["model.pixel_level_module.decoder.fpn.layers.0.proj.0.weight"]
    assert torch.equal(mapped["sem_seg_head.pixel_decoder.adapter_3.weight"], fpn)


def test_missing_and_unexpected_keys_are_named():
    hf, ours = _pair("resnet")
    sd = dict(hf.state_dict())
    sd.pop("class_predictor.bias")
    sd["model.transformer_module.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="class_embed.bias") as err:
        load_hf_state_dict(ours, sd)
    assert "model.transformer_module.extra.weight" in str(err.value)
    report = load_hf_state_dict(ours, sd, strict=False)
    assert report.missing == ["sem_seg_head.predictor.class_embed.bias"]
    assert report.unexpected == ["model.transformer_module.extra.weight"]


def test_shape_mismatch_is_a_clear_error():
    hf, _ = _pair("resnet")
    cfg = _configs("resnet").to_dict()
    cfg["num_labels"] = 6
    cfg["id2label"] = {str(i): str(i) for i in range(6)}
    other = build_hf_model(cfg)
    with pytest.raises(ValueError, match=r"class_embed.weight: checkpoint \(5, 32\) vs model \(7, 32\)"):
        load_hf_state_dict(other, hf.state_dict())


@pytest.mark.parametrize(
    ("kind", "preset"), [("swin", "maskformer_swin_t_ade20k"), ("resnet", "maskformer_r50_ade20k")]
)
def test_hf_config_to_config_matches_paper_model(kind, preset):
    """The full-size configs of transformers-oracle.md section 2 map onto the preset's network."""
    tr = require_transformers()
    from transformers.models.maskformer.configuration_maskformer import MaskFormerDetrConfig

    if kind == "swin":
        bb = tr.SwinConfig(
            embed_dim=96,
            depths=[2, 2, 6, 2],
            num_heads=[3, 6, 12, 24],
            window_size=7,
            drop_path_rate=0.3,
            out_features=S4,
        )
    else:
        bb = tr.ResNetConfig(
            embedding_size=64,
            depths=[3, 4, 6, 3],
            hidden_sizes=[256, 512, 1024, 2048],
            layer_type="bottleneck",
            out_features=S4,
        )
    dec = MaskFormerDetrConfig(
        d_model=256, decoder_layers=6, decoder_attention_heads=8, decoder_ffn_dim=2048, dropout=0.1, num_queries=100
    )
    hf_cfg = tr.MaskFormerConfig(backbone_config=bb, decoder_config=dec, num_labels=150).to_dict()
    cfg = hf_config_to_config(hf_cfg)
    assert cfg.model == get_preset(preset).model
    with torch.device("meta"):
        ours = build_hf_model(hf_cfg)
    expected = {"swin": 41_758_545 - 2 * 768, "resnet": 41_307_863}[kind]  # HF counts (final Swin LN unused)
    assert count_parameters(ours) == expected


def test_unknown_hf_backbone_is_named():
    with pytest.raises(ValueError, match="matches no backbone"):
        backbone_by_depths("swin", 64, (2, 2, 2, 2), "transformers")
    with pytest.raises(ValueError, match="model_type 'convnext'"):
        hf_backbone_args({"model_type": "convnext"})
