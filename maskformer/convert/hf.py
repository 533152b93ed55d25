"""transformers' `MaskFormerForInstanceSegmentation` -> this package: state dict and config (no transformers import).

State dicts may use transformers' in-memory names (`o_proj`, `mlp.fc1`) or the on-disk ones (`out_proj`, `fc1`), with
or without the `model.` prefix. Name table: transformers-oracle.md section 4.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import torch
from torch import nn

from maskformer.checkpoint import CheckpointError, KeyReport, Renamed, build_loaded, load_checked
from maskformer.config import Config, ModelConfig, get_preset
from maskformer.convert.backbones import backbone_name
from maskformer.convert.hf_backbone import map_hf_backbone, map_keys
from maskformer.structures import DatasetMeta

_M = r"(?:model\.)?"  # a bare MaskFormerModel state dict has no `model.` prefix
HF_BACKBONE = re.compile(_M + r"pixel_level_module\.encoder\.")
PD = "sem_seg_head.pixel_decoder."
PR = "sem_seg_head.predictor."
DEC = PR + "transformer.decoder."
DROPPED = re.compile(r"criterion\.empty_weight")  # the loss's class weights: not part of the network

# (pattern on the HF name, replacement) for one-to-one renames; q/k/v are fused separately.
_FPN = _M + r"pixel_level_module\.decoder\.fpn\."
_LAYER = _M + r"transformer_module\.decoder\.layers\.(\d+)\."
_RULES: list[tuple[str, str]] = [
    (_FPN + r"stem\.0\.weight", PD + "layer_4.weight"),
    (_FPN + r"stem\.1\.(weight|bias)", PD + r"layer_4.norm.\1"),
    (_FPN + r"layers\.(\d)\.proj\.0\.weight", PD + r"adapter_{3-\1}.weight"),  # fpn.layers.0: the res4 lateral
    (_FPN + r"layers\.(\d)\.proj\.1\.(weight|bias)", PD + r"adapter_{3-\1}.norm.\2"),
    (_FPN + r"layers\.(\d)\.block\.0\.weight", PD + r"layer_{3-\1}.weight"),
    (_FPN + r"layers\.(\d)\.block\.1\.(weight|bias)", PD + r"layer_{3-\1}.norm.\2"),
    (_M + r"pixel_level_module\.decoder\.mask_projection\.(weight|bias)", PD + r"mask_features.\1"),
    (_M + r"transformer_module\.queries_embedder\.weight", PR + "query_embed.weight"),
    (_M + r"transformer_module\.input_projection\.(weight|bias)", PR + r"input_proj.\1"),
    (_M + r"transformer_module\.decoder\.(?:layernorm|layer_norm)\.(weight|bias)", DEC + r"norm.\1"),
    (r"class_predictor\.(weight|bias)", PR + r"class_embed.\1"),
    (r"mask_embedder\.(\d+)\.0\.(weight|bias)", PR + r"mask_embed.layers.\1.\2"),
    (_LAYER + r"self_attn\.(?:o_proj|out_proj)\.(weight|bias)", DEC + r"layers.\1.self_attn.out_proj.\2"),
    (_LAYER + r"encoder_attn\.(?:o_proj|out_proj)\.(weight|bias)", DEC + r"layers.\1.multihead_attn.out_proj.\2"),
    (_LAYER + r"self_attn_layer_norm\.(weight|bias)", DEC + r"layers.\1.norm1.\2"),
    (_LAYER + r"encoder_attn_layer_norm\.(weight|bias)", DEC + r"layers.\1.norm2.\2"),
    (_LAYER + r"final_layer_norm\.(weight|bias)", DEC + r"layers.\1.norm3.\2"),
    (_LAYER + r"(?:mlp\.)?fc1\.(weight|bias)", DEC + r"layers.\1.linear1.\2"),
    (_LAYER + r"(?:mlp\.)?fc2\.(weight|bias)", DEC + r"layers.\1.linear2.\2"),
]
_QKV = re.compile(_LAYER + r"(self_attn|encoder_attn)\.([qkv])_proj\.(weight|bias)")


def map_hf(hf_sd: dict[str, torch.Tensor]) -> Renamed:
    """transformers MaskFormer state dict -> our (official v2) names, remembering source names; keys no rule maps keep
    their name (unexpected when loaded); `DROPPED`, Swin's final LayerNorm and BatchNorm step counters are dropped."""
    head = {k: v for k, v in hf_sd.items() if not HF_BACKBONE.match(k)}
    out = map_hf_encoder(hf_sd, prefix="backbone.")
    return map_keys(head, _RULES, drop=DROPPED, fuse=(_QKV, _fused_qkv, "qkv"), out=out)[0]


def _fused_qkv(m: re.Match) -> str:
    attn = "self_attn" if m.group(2) == "self_attn" else "multihead_attn"
    return DEC + f"layers.{m.group(1)}.{attn}.in_proj_{m.group(4)}"


def map_hf_encoder(hf_sd: dict[str, torch.Tensor], prefix: str = "") -> Renamed:
    """The backbone (`pixel_level_module.encoder.*`) part of a transformers state dict in our names with `prefix`."""
    backbone = {k: v for k, v in hf_sd.items() if HF_BACKBONE.match(k)}
    kind = "swin" if any(".encoder.model.embeddings." in k for k in backbone) else "resnet"
    return map_hf_backbone(backbone, kind, prefix)[0]


def load_hf_state_dict(model: nn.Module, hf_state_dict: dict[str, torch.Tensor], *, strict: bool = True) -> KeyReport:
    """Load `hf_state_dict` into `model` (a MaskFormer of matching shape). `CheckpointError` names every key whose
    shape differs and (strict) every missing or unexpected key (by its transformers name)."""
    weights = map_hf(hf_state_dict)
    return load_checked(model, weights, source="transformers state dict", strict=strict, noun="checkpoint")


def hf_backbone_args(backbone_config: dict) -> tuple[str, dict]:
    """("swin" | "resnet", SwinTransformer / ResNet keywords) of a transformers backbone config, any width or depth."""
    c, kind = backbone_config, backbone_config.get("model_type", "")
    if kind in ("swin", "maskformer-swin"):
        if not c.get("qkv_bias", True) or c.get("use_absolute_embeddings", False):
            raise ValueError("transformers Swin config: qkv_bias=False / use_absolute_embeddings=True do not fit")
        return "swin", {
            "embed_dim": int(c["embed_dim"]),
            "depths": [int(d) for d in c["depths"]],
            "num_heads": [int(h) for h in c["num_heads"]],
            "window_size": int(c["window_size"]),
            "mlp_ratio": float(c.get("mlp_ratio", 4.0)),
            "patch_size": int(c.get("patch_size", 4)),
        }
    if kind == "resnet":
        if c.get("downsample_in_first_stage", False) or c.get("downsample_in_bottleneck", False):
            raise ValueError("transformers ResNet config: only downsample_in_first_stage/_in_bottleneck=False fit")
        sizes = [int(v) for v in c["hidden_sizes"]]
        bottleneck = c.get("layer_type", "bottleneck") == "bottleneck"
        return "resnet", {
            "depths": [int(d) for d in c["depths"]],
            "stage_channels": sizes,
            "bottleneck_channels": [v // 4 for v in sizes] if bottleneck else None,
            "stem_channels": int(c.get("embedding_size", 64)),
        }
    raise ValueError(f"transformers backbone model_type {kind!r} is not supported; valid: swin, resnet")


def convert_hf(path: str, sd: dict[str, torch.Tensor], hf_config: dict, preset: str | None = None):
    """(model, cfg, meta, report) from a transformers MaskFormer directory's state dict and config.json dict (as
    `convert_hf_mask2former`); class names from `id2label` (class_i where absent)."""
    try:
        cfg = hf_config_to_config(hf_config)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{Path(path) / 'config.json'}: {e}") from None
    notes = ["source: transformers directory"]
    if preset is not None:
        cfg = dataclasses.replace(get_preset(preset), model=cfg.model, loss=cfg.loss)
        notes.append(f"preset: {preset} (data, inference and train settings)")
    model, report = build_loaded(cfg, map_hf(sd), str(path))
    report.notes = notes
    id2label = hf_config.get("id2label") or {}
    names = [str(id2label.get(str(i), id2label.get(i, f"class_{i}"))) for i in range(cfg.model.num_classes)]
    meta = DatasetMeta(name=hf_config.get("_name_or_path") or "transformers", class_names=names)
    return model.eval(), cfg, meta, report


def build_hf_model(hf_config: dict) -> nn.Module:
    """The MaskFormer matching a transformers config dict exactly, including non-preset backbones."""
    from maskformer.modeling import build_model

    return build_model(hf_config_to_config(hf_config))


def hf_config_to_config(hf_config: dict) -> Config:
    """A transformers MaskFormerConfig dict -> a Config whose `build_model` is that network. A backbone of no BACKBONES
    name is "swin" / "resnet" with `model.backbone_args` (so a saved directory rebuilds it)."""
    for key in ("backbone_config", "decoder_config"):
        if not isinstance(hf_config.get(key), dict):
            raise ValueError(f"transformers MaskFormer config: {key!r} is missing or not a dict")
    bb, dec = hf_config["backbone_config"], hf_config["decoder_config"]
    id2label = hf_config.get("id2label") or {}
    kind, args = hf_backbone_args(bb)
    name = backbone_name(kind, args)
    model = ModelConfig(
        backbone=name or kind,
        backbone_args={} if name else args,
        drop_path_rate=float(bb.get("drop_path_rate", 0.0)) if kind == "swin" else 0.0,
        num_classes=len(id2label) if id2label else int(hf_config.get("num_labels", 150)),
        num_queries=int(dec.get("num_queries", 100)),
        conv_dim=int(hf_config.get("fpn_feature_size", 256)),
        mask_dim=int(hf_config.get("mask_feature_size", 256)),
        hidden_dim=int(dec.get("d_model", 256)),
        nheads=int(dec.get("decoder_attention_heads", 8)),
        dim_feedforward=int(dec.get("decoder_ffn_dim", 2048)),
        dropout=float(dec.get("dropout", 0.1)),
        dec_layers=int(dec.get("decoder_layers", 6)),
    )
    cfg = Config(model=model)
    cfg.loss.class_weight = float(hf_config.get("cross_entropy_weight", 1.0))
    cfg.loss.mask_weight = float(hf_config.get("mask_weight", 20.0))
    cfg.loss.dice_weight = float(hf_config.get("dice_weight", 1.0))
    cfg.loss.no_object_weight = float(hf_config.get("no_object_weight", 0.1))
    return cfg
