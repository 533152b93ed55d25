"""transformers' `Mask2FormerForUniversalSegmentation` -> this package's Mask2Former: state dict and config.

Name table: mask2former.md section 6.3. State dicts are accepted with transformers' in-memory names and with the
on-disk hub / `save_pretrained` names (they differ only in the Swin backbone); a bare `Mask2FormerModel` state dict
(no `model.` prefix) works too. Swin keys are first brought to transformers' MaskFormer-Swin names, then mapped by
`maskformer.convert.hf_backbone.hf_backbone_to_official` like MaskFormer's. No transformers import is needed here.

Every source key is accounted for: it maps to exactly one model key, is fused (self-attention q/k/v -> the packed
`in_proj_*`), or is dropped on purpose (`DROPPED`, the backbone's unused final Swin LayerNorm, BatchNorm counters);
anything else is a KeyError naming it.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import torch
from torch import nn

from maskformer.config import Config, LossConfig, ModelConfig

HF_BACKBONE = "model.pixel_level_module.encoder."
PD = "sem_seg_head.pixel_decoder."
PR = "sem_seg_head.predictor."
DROPPED = ("criterion.empty_weight",)  # the loss's class weights: not part of the network
_BACKBONE_DROPPED = re.compile(r"(swin\.|model\.)?layernorm\..+|.+\.num_batches_tracked")

_P = r"model\.pixel_level_module\.decoder\."
_T = r"model\.transformer_module\."
_L = _T + r"decoder\.layers\.(\d+)\."
_E = _P + r"encoder\.layers\.(\d+)\."
ENC = PD + r"transformer.encoder.layers.\1."
_RULES: list[tuple[str, str]] = [
    (_P + r"input_projections\.(\d)\.([01])\.(weight|bias)", PD + r"input_proj.\1.\2.\3"),
    (_P + r"level_embed", PD + "transformer.level_embed"),
    (_E + r"self_attn\.(\w+)\.(weight|bias)", ENC + r"self_attn.\2.\3"),
    (_E + r"self_attn_layer_norm\.(weight|bias)", ENC + r"norm1.\2"),
    (_E + r"fc([12])\.(weight|bias)", ENC + r"linear\2.\3"),
    (_E + r"final_layer_norm\.(weight|bias)", ENC + r"norm2.\2"),
    (_P + r"(adapter_1|layer_1)\.0\.weight", PD + r"\1.weight"),
    (_P + r"(adapter_1|layer_1)\.1\.(weight|bias)", PD + r"\1.norm.\2"),
    (_P + r"mask_projection\.(weight|bias)", PD + r"mask_features.\1"),
    (_T + r"queries_features\.weight", PR + "query_feat.weight"),
    (_T + r"queries_embedder\.weight", PR + "query_embed.weight"),
    (_T + r"level_embed\.weight", PR + "level_embed.weight"),
    (_T + r"input_projections\.(\d)\.(weight|bias)", PR + r"input_proj.\1.\2"),
    (_L + r"cross_attn\.(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)",
     PR + r"transformer_cross_attention_layers.\1.multihead_attn.\2"),
    (_L + r"cross_attn_layer_norm\.(weight|bias)", PR + r"transformer_cross_attention_layers.\1.norm.\2"),
    (_L + r"self_attn\.out_proj\.(weight|bias)", PR + r"transformer_self_attention_layers.\1.self_attn.out_proj.\2"),
    (_L + r"self_attn_layer_norm\.(weight|bias)", PR + r"transformer_self_attention_layers.\1.norm.\2"),
    (_L + r"fc([12])\.(weight|bias)", PR + r"transformer_ffn_layers.\1.linear\2.\3"),
    (_L + r"final_layer_norm\.(weight|bias)", PR + r"transformer_ffn_layers.\1.norm.\2"),
    (_T + r"decoder\.layernorm\.(weight|bias)", PR + r"decoder_norm.\1"),
    (_T + r"decoder\.mask_predictor\.mask_embedder\.(\d)\.0\.(weight|bias)", PR + r"mask_embed.layers.\1.\2"),
    (r"class_predictor\.(weight|bias)", PR + r"class_embed.\1"),
]  # fmt: skip
_SELF_QKV = re.compile(_L + r"self_attn\.([qkv])_proj\.(weight|bias)")

# Mask2Former's Swin (transformers' generic SwinBackbone; in memory `swin.*`, on disk without it) -> the MaskFormer-Swin
# names that hf_backbone_to_official reads.
_SWIN_RENAMES: list[tuple[str, str]] = [
    (r"^swin\.", "model."),
    (r"^(embeddings|encoder|layernorm)\.", r"model.\1."),
    (r"\.attention\.q_proj\.", ".attention.self.query."),
    (r"\.attention\.k_proj\.", ".attention.self.key."),
    (r"\.attention\.v_proj\.", ".attention.self.value."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.attention\.relative_position_bias\.(relative_position_bias_table)$", r".attention.self.\1"),
    (r"\.mlp\.fc1\.", ".intermediate.dense."),
    (r"\.mlp\.fc2\.", ".output.dense."),
]  # fmt: skip


def hf_mask2former_to_official(hf_sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """transformers Mask2Former state dict -> (our / official names, the source keys dropped on purpose).

    Raises KeyError naming every key no rule maps and every incomplete q/k/v group.
    """
    bare = ("pixel_level_module.", "transformer_module.")  # a Mask2FormerModel state dict
    sd = {("model." + k if k.startswith(bare) else k): v for k, v in hf_sd.items()}
    backbone = {k[len(HF_BACKBONE) :]: v for k, v in sd.items() if k.startswith(HF_BACKBONE)}
    out, dropped = _backbone(backbone)
    dropped = [HF_BACKBONE + k for k in dropped] + [k for k in sd if k in DROPPED]
    rest = {k: v for k, v in sd.items() if not k.startswith(HF_BACKBONE) and k not in DROPPED}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    unknown = []
    for key, value in rest.items():
        m = _SELF_QKV.fullmatch(key)
        if m:
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
            continue
        new = _rename(key)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    for (layer, kind), parts in sorted(qkv.items()):
        if set(parts) != {"q", "k", "v"}:
            unknown.append(f"decoder layer {layer} self_attn {kind}: only {sorted(parts)} of q, k, v")
            continue
        out[PR + f"transformer_self_attention_layers.{layer}.self_attn.in_proj_{kind}"] = torch.cat(
            [parts[c] for c in "qkv"]
        )  # [3C, C] or [3C], rows q, k, v
    if unknown:
        raise KeyError("transformers Mask2Former state dict: unrecognized key(s): " + ", ".join(unknown))
    return out, dropped


class LoadResult(NamedTuple):
    """What `load_hf_mask2former_state_dict` did: tensors loaded from the source, constant buffers the source does not
    store (Swin `relative_position_index`, kept from the model), source keys dropped on purpose."""

    loaded: int
    filled: list[str]
    dropped: list[str]


def load_hf_mask2former_state_dict(model: nn.Module, hf_sd: dict[str, torch.Tensor]) -> LoadResult:
    """Map a transformers Mask2Former state dict onto `model` and load it strictly.

    ValueError names every shape mismatch, missing and unexpected key; KeyError (from the mapping) unknown source keys.
    """
    mapped, dropped = hf_mask2former_to_official(hf_sd)
    own = model.state_dict()
    filled = sorted(k for k in own if k not in mapped and k.endswith("relative_position_index"))
    problems = [f"shape of {k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                for k, v in mapped.items() if k in own and v.shape != own[k].shape]  # fmt: skip
    problems += [f"missing: {k}" for k in sorted(set(own) - set(mapped) - set(filled))]
    problems += [f"unexpected: {k}" for k in sorted(set(mapped) - set(own))]
    if problems:
        raise ValueError("transformers Mask2Former state dict does not fit the model:\n  " + "\n  ".join(problems))
    model.load_state_dict({**mapped, **{k: own[k] for k in filled}}, strict=True)
    return LoadResult(len(mapped), filled, dropped)


def _rename(key: str) -> str | None:
    for pattern, repl in _RULES:
        m = re.fullmatch(pattern, key)
        if m:
            return m.expand(repl)
    return None


def _backbone(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Backbone keys (encoder prefix removed) -> ({"backbone." + official name: tensor}, dropped source keys)."""
    if not sd:
        return {}, []
    from maskformer.convert.hf_backbone import hf_backbone_to_official

    dropped = sorted(k for k in sd if _BACKBONE_DROPPED.fullmatch(k))
    kept = {k: v for k, v in sd.items() if k not in dropped}
    kind = "swin" if any("embeddings." in k for k in kept) else "resnet"
    if kind == "swin":
        kept = {_swin_name(k): v for k, v in kept.items()}
    return {"backbone." + k: v for k, v in hf_backbone_to_official(kept, kind).items()}, dropped


def _swin_name(key: str) -> str:
    for pattern, repl in _SWIN_RENAMES:
        key = re.sub(pattern, repl, key)
    return re.sub(r"^hidden_states_norms\.stage(\d)\.", lambda m: f"hidden_states_norms.{int(m[1]) - 1}.", key)


# ---------------------------------------------------------------------------------------------------------------------
# Config


def hf_mask2former_config_to_config(hf_config: dict) -> Config:
    """A transformers Mask2FormerConfig dict (config.json) -> a Config whose `build_model` gives that network. A
    backbone equal to a named one (BACKBONES) gets its name; any other (e.g. tiny test ones) is "swin" / "resnet" with
    its structural parameters in `model.backbone_args`, so a saved model directory rebuilds it. Loss weights and
    point-sampling settings come from the HF config; data/train/inference keep their defaults."""
    from maskformer.convert.backbones import backbone_name
    from maskformer.convert.hf import hf_backbone_args

    kind, args = hf_backbone_args(_backbone_config(hf_config))
    name = backbone_name(kind, args)
    cfg = _config(hf_config, name or kind)
    cfg.model.backbone_args = {} if name else args
    return cfg


def build_hf_mask2former_model(hf_config: dict) -> nn.Module:
    """The Mask2Former matching a transformers config dict exactly, including non-preset (e.g. tiny) backbones."""
    from maskformer.modeling import build_model

    return build_model(hf_mask2former_config_to_config(hf_config))


def convert_hf_mask2former(path: str, sd: dict[str, torch.Tensor], hf_config: dict, preset: str | None = None):
    """(model in eval mode, cfg, meta, report) from a transformers Mask2Former directory's state dict and config.json
    dict; every key must fit (else `CheckpointError`). `preset` supplies the data / inference / train settings
    (default: the preset named like this network and K, when one exists). Class names come from `id2label`."""
    import dataclasses

    from maskformer.checkpoint import CheckpointError, Renamed, build_loaded
    from maskformer.config import get_preset
    from maskformer.convert.detectron2_mask2former import infer_mask2former_preset
    from maskformer.structures import DatasetMeta

    try:
        cfg = hf_mask2former_config_to_config(hf_config)
        mapped, dropped = hf_mask2former_to_official(sd)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: {e.args[0] if e.args else e}") from None
    notes = ["source: transformers Mask2Former directory"]
    inferred = ""
    if preset is None:  # None for a backbone of no preset (backbone_args)
        preset = infer_mask2former_preset({"backbone": cfg.model.backbone, "num_classes": cfg.model.num_classes})
        inferred = " (inferred from the config)"
    if preset is not None:
        cfg = dataclasses.replace(get_preset(preset), model=cfg.model, loss=cfg.loss)
        notes.append(f"preset: {preset}{inferred} (data, inference and train settings)")
    # Swin's relative_position_index is a constant buffer transformers does not save: kept from the built model
    weights = Renamed(mapped, dropped=dropped)
    model, report = build_loaded(cfg, weights, path, expected_missing=["*relative_position_index"])
    id2label = hf_config.get("id2label") or {}
    names = [str(id2label.get(str(i), id2label.get(i, f"class_{i}"))) for i in range(cfg.model.num_classes)]
    meta = DatasetMeta(name=hf_config.get("_name_or_path") or "transformers", class_names=names)
    report.notes = notes
    return model.eval(), cfg, meta, report


def _backbone_config(hf_config: dict) -> dict:
    bb = hf_config.get("backbone_config")
    if not isinstance(bb, dict):
        raise ValueError("transformers Mask2Former config: 'backbone_config' is missing or not a dict")
    return bb


def _config(c: dict, backbone: str) -> Config:
    if c.get("pre_norm", False):
        raise ValueError("transformers Mask2Former config: pre_norm=True is not supported (no released model uses it)")
    if int(c.get("common_stride", 4)) != 4 or list(c.get("feature_strides", [4, 8, 16, 32])) != [4, 8, 16, 32]:
        raise ValueError("transformers Mask2Former config: only common_stride 4 and feature_strides 4, 8, 16, 32 fit")
    id2label = c.get("id2label") or {}
    bb = _backbone_config(c)
    model = ModelConfig(
        arch="mask2former",
        pixel_decoder="msdeformattn",
        backbone=backbone,
        drop_path_rate=float(bb.get("drop_path_rate", 0.0)) if backbone.startswith("swin") else 0.0,
        num_classes=len(id2label) if id2label else int(c.get("num_labels", 150)),
        num_queries=int(c.get("num_queries", 100)),
        conv_dim=int(c.get("feature_size", 256)),
        mask_dim=int(c.get("mask_feature_size", 256)),
        hidden_dim=int(c.get("hidden_dim", 256)),
        nheads=int(c.get("num_attention_heads", 8)),
        dim_feedforward=int(c.get("dim_feedforward", 2048)),
        dropout=float(c.get("dropout", 0.0)),
        dec_layers=int(c.get("decoder_layers", 10)),
        enc_layers=int(c.get("encoder_layers", 6)),
        enc_dim_feedforward=int(c.get("encoder_feedforward_dim", 1024)),
        enforce_input_proj=bool(c.get("enforce_input_projection", False)),
        size_divisibility=32,
    )
    loss = LossConfig(
        class_weight=float(c.get("class_weight", 2.0)),
        mask_weight=float(c.get("mask_weight", 5.0)),
        dice_weight=float(c.get("dice_weight", 5.0)),
        no_object_weight=float(c.get("no_object_weight", 0.1)),
        point_sampling=True,
        num_points=int(c.get("train_num_points", 12544)),
        oversample_ratio=float(c.get("oversample_ratio", 3.0)),
        importance_sample_ratio=float(c.get("importance_sample_ratio", 0.75)),
    )
    return Config(model=model, loss=loss)
