"""Mask2Former checkpoints from outside -> this package, through `maskformer.convert.convert_source` and the
`maskformer convert` command: an official detectron2 `.pkl` (written here in the official layout: a pickle of
{"model": {official name: numpy array}, "__author__": ...}, read through the restricted unpickler) and a transformers
`Mask2FormerForUniversalSegmentation` directory (config.json + model.safetensors, model type read from config.json).

The oracle is transformers' Mask2Former with re-drawn random weights (test_mask2former_parity.py): the `.pkl` holds
the same weights under the official names of mask2former.md section 6.3, so the converted model must reproduce
transformers' logits. Every key of each file is accounted for: loaded, or dropped on purpose and named."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from conftest import require_transformers
from test_mask2former_parity import _images, _pair, _redraw, _rel

from maskformer.convert import convert_source, detect_source, load_model
from maskformer.convert.hf_mask2former import hf_mask2former_to_official

# official names (mask2former.md section 6.3), one per kind of table row: the .pkl written below must carry them
OFFICIAL_KEYS = [
    "backbone.stem.conv1.weight", "backbone.stem.conv1.norm.running_var", "backbone.res5.1.conv2.weight",
    "sem_seg_head.pixel_decoder.input_proj.0.0.weight", "sem_seg_head.pixel_decoder.input_proj.2.1.bias",
    "sem_seg_head.pixel_decoder.transformer.level_embed",
    "sem_seg_head.pixel_decoder.transformer.encoder.layers.1.self_attn.sampling_offsets.weight",
    "sem_seg_head.pixel_decoder.transformer.encoder.layers.0.self_attn.attention_weights.bias",
    "sem_seg_head.pixel_decoder.transformer.encoder.layers.0.self_attn.value_proj.weight",
    "sem_seg_head.pixel_decoder.transformer.encoder.layers.0.norm2.weight",
    "sem_seg_head.pixel_decoder.transformer.encoder.layers.0.linear1.weight",
    "sem_seg_head.pixel_decoder.adapter_1.weight", "sem_seg_head.pixel_decoder.adapter_1.norm.weight",
    "sem_seg_head.pixel_decoder.layer_1.norm.bias", "sem_seg_head.pixel_decoder.mask_features.bias",
    "sem_seg_head.predictor.static_query.weight", "sem_seg_head.predictor.query_embed.weight",
    "sem_seg_head.predictor.level_embed.weight",
    "sem_seg_head.predictor.transformer_cross_attention_layers.3.multihead_attn.in_proj_weight",
    "sem_seg_head.predictor.transformer_cross_attention_layers.0.norm.weight",
    "sem_seg_head.predictor.transformer_self_attention_layers.0.self_attn.in_proj_bias",
    "sem_seg_head.predictor.transformer_self_attention_layers.2.self_attn.out_proj.weight",
    "sem_seg_head.predictor.transformer_ffn_layers.0.linear2.weight", "sem_seg_head.predictor.decoder_norm.weight",
    "sem_seg_head.predictor.mask_embed.layers.2.bias", "sem_seg_head.predictor.class_embed.weight",
    "criterion.empty_weight",
]  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _hf_r18():
    """transformers Mask2Former on a ResNet-18 (a named backbone, so the .pkl's architecture is inferable) with the
    R18 CPU preset's K (8) and heads (4): the converter infers mask2former_r18_synth."""
    tr = require_transformers()
    torch.manual_seed(0)
    bb = tr.ResNetConfig(embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2],
                         layer_type="basic", out_features=["stage1", "stage2", "stage3", "stage4"])  # fmt: skip
    cfg = tr.Mask2FormerConfig(
        backbone_config=bb, num_labels=8, num_queries=6, feature_size=32, mask_feature_size=32, hidden_dim=32,
        encoder_feedforward_dim=48, dim_feedforward=64, encoder_layers=2, decoder_layers=5, num_attention_heads=4,
    )  # fmt: skip
    hf = tr.Mask2FormerForUniversalSegmentation(cfg).eval()
    _redraw(hf)
    return hf


def _write_official_pkl(hf, path) -> dict[str, np.ndarray]:
    """The official layout: numpy arrays under detectron2 names, the pre-v2 query name, the loss's class weights."""
    sd, _ = hf_mask2former_to_official(hf.state_dict())
    sd["sem_seg_head.predictor.static_query.weight"] = sd.pop("sem_seg_head.predictor.query_feat.weight")
    sd["criterion.empty_weight"] = torch.ones(9)
    arrays = {k: v.numpy() for k, v in sd.items()}
    with open(path, "wb") as f:
        pickle.dump({"model": arrays, "__author__": "Mask2Former"}, f)
    return arrays


def _compare(ours, hf) -> None:
    batch = _images()
    with torch.no_grad():
        out = ours(batch)
        ref = hf(pixel_values=(batch.tensor - ours.pixel_mean) / ours.pixel_std)
    assert _rel(out["pred_logits"], ref.class_queries_logits) < 1e-4
    assert _rel(out["pred_masks"], ref.masks_queries_logits) < 1e-4


def test_official_pkl_converts_with_every_key_accounted_for(tmp_path):
    hf = _hf_r18()
    pkl = tmp_path / "model_final_test.pkl"
    arrays = _write_official_pkl(hf, pkl)
    missing = [k for k in OFFICIAL_KEYS if k not in arrays]
    assert not missing, missing
    assert detect_source(pkl) == "pickle"
    model, cfg, meta, report = convert_source(pkl)
    assert (cfg.model.arch, cfg.model.backbone, cfg.model.backbone_norm) == ("mask2former", "resnet18", "FrozenBN")
    assert (cfg.model.num_classes, cfg.model.num_queries, cfg.model.dec_layers, cfg.model.enc_layers) == (8, 6, 5, 2)
    assert (cfg.model.enc_dim_feedforward, cfg.model.dim_feedforward, cfg.model.hidden_dim) == (48, 64, 32)
    assert "preset: mask2former_r18_synth (inferred from the weights)" in report.notes
    assert cfg.loss.point_sampling and (cfg.loss.class_weight, cfg.loss.mask_weight) == (2.0, 5.0)
    assert report.ok and report.dropped == ["criterion.empty_weight"]
    assert report.loaded == len(arrays) - 1 == len(model.state_dict())  # every key: loaded or dropped by name
    assert meta.num_classes == 8
    _compare(model, hf)


def test_pkl_with_new_class_count_and_bad_keys(tmp_path):
    hf = _hf_r18()
    pkl = tmp_path / "m.pkl"
    arrays = _write_official_pkl(hf, pkl)
    model, cfg, _, report = convert_source(pkl, num_classes=3)
    assert cfg.model.num_classes == 3 and model.sem_seg_head.predictor.class_embed.weight.shape == (4, 32)
    assert "sem_seg_head.predictor.class_embed.weight" in report.dropped
    arrays["sem_seg_head.predictor.extra.weight"] = np.zeros(2, np.float32)
    del arrays["sem_seg_head.predictor.transformer_ffn_layers.1.norm.bias"]
    with open(pkl, "wb") as f:
        pickle.dump({"model": arrays, "__author__": "Mask2Former"}, f)
    with pytest.raises(ValueError, match=r"(?s)missing.*transformer_ffn_layers\.1\.norm\.bias.*unexpected.*extra"):
        convert_source(pkl)


def test_maskformer_convert_cli_on_a_pkl(tmp_path, capsys):
    from maskformer.cli import main

    hf = _hf_r18()
    pkl = tmp_path / "model_final.pkl"
    _write_official_pkl(hf, pkl)
    assert main(["convert", str(pkl), str(tmp_path / "out")]) == 0
    assert "mask2former, resnet18, 8 classes" in capsys.readouterr().out
    model, cfg, _ = load_model(tmp_path / "out")
    assert cfg.model.arch == "mask2former"
    _compare(model, hf)


def test_transformers_directory_converts_through_convert_source_and_cli(tmp_path, capsys):
    """A save_pretrained directory (on-disk Swin names, a tiny Swin of no named size -> backbone_args)."""
    from maskformer.cli import main

    hf, _ = _pair("swin")
    hf.config.id2label = {i: f"thing{i}" for i in range(5)}
    hf.save_pretrained(tmp_path / "hf")
    assert detect_source(tmp_path / "hf") == "transformers"
    model, cfg, meta, report = convert_source(tmp_path / "hf")
    assert (cfg.model.arch, cfg.model.backbone, cfg.model.backbone_args["embed_dim"]) == ("mask2former", "swin", 16)
    assert meta.class_names == [f"thing{i}" for i in range(5)]
    assert report.ok and "criterion.empty_weight" in report.dropped
    assert all(k.endswith("relative_position_index") for k in report.expected_missing)
    _compare(model, hf)
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "out")]) == 0
    assert "mask2former, swin, 5 classes" in capsys.readouterr().out
    reloaded, _, _ = load_model(tmp_path / "out")
    _compare(reloaded, hf)


def test_transformers_directory_of_a_named_backbone_takes_its_preset(tmp_path):
    hf = _hf_r18()
    hf.save_pretrained(tmp_path / "hf")
    _, cfg, _, report = convert_source(tmp_path / "hf")
    assert "preset: mask2former_r18_synth (inferred from the config) (data, inference and train settings)" in (
        report.notes
    )
    assert cfg.data.format == "synthetic" and cfg.model.num_queries == 6


def test_zoo_rows_name_official_urls_and_presets():
    from maskformer.config import get_preset
    from maskformer.hub.zoo import ZOO

    rows = {n: e for n, e in ZOO.items() if n.startswith("mask2former")}
    assert len(rows) == 22  # ADE20K semantic 7 + panoptic 2, COCO panoptic 7, Cityscapes semantic 6
    base = "https://dl.fbaipublicfiles.com/maskformer/mask2former/"
    assert (
        rows["mask2former_r50_ade20k"].source
        == base + "ade20k/semantic/maskformer2_R50_bs16_160k/model_final_500878.pkl"
    )
    assert rows["mask2former_swin_l_coco_panoptic"].source == (
        base + "coco/panoptic/maskformer2_swin_large_IN21k_384_bs16_100ep/model_final_f07440.pkl"
    )
    assert rows["mask2former_swin_b_in1k_ade20k"].preset == "mask2former_swin_b_ade20k"
    assert rows["mask2former_r50_coco_panoptic"].metric == "PQ 51.9"
    for e in rows.values():
        assert e.source.startswith(base) and get_preset(e.preset).model.arch == "mask2former"
