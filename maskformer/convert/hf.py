"""transformers' `MaskFormerForInstanceSegmentation` -> this package: state dict and config.

State dicts are accepted with transformers' in-memory names (`o_proj`, `layers.{l}.mlp.fc1`) and with the on-disk hub /
`save_pretrained` names (`out_proj`, `layers.{l}.fc1`); a bare `MaskFormerModel` state dict (no `model.` prefix) works
too. The backbone part is delegated to `maskformer.convert.hf_backbone.hf_backbone_to_official`. See
transformers-oracle.md section 4 for the name table. No transformers import is needed here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn

from maskformer.config import Config, ModelConfig

HF_BACKBONE = "model.pixel_level_module.encoder."
HF_FPN = "model.pixel_level_module.decoder."
HF_TRANSFORMER = "model.transformer_module."
PD = "sem_seg_head.pixel_decoder."
PR = "sem_seg_head.predictor."
DEC = PR + "transformer.decoder."
DROPPED = ("criterion.empty_weight",)  # the loss's class weights: not part of the network
# Dropped inside hf_backbone_to_official: Swin's final classification LayerNorm (unused) and BN batch counters.
_BACKBONE_DROPPED = re.compile(re.escape(HF_BACKBONE) + r"(model\.layernorm\..+|.+\.num_batches_tracked)")

# (pattern on the HF name, replacement) for one-to-one renames; q/k/v are fused separately.
_RULES: list[tuple[str, str]] = [
    (r"model\.pixel_level_module\.decoder\.fpn\.stem\.0\.weight", PD + "layer_4.weight"),
    (r"model\.pixel_level_module\.decoder\.fpn\.stem\.1\.(weight|bias)", PD + r"layer_4.norm.\1"),
    (r"model\.pixel_level_module\.decoder\.fpn\.layers\.(\d)\.proj\.0\.weight", PD + "adapter_{fpn}.weight"),
    (r"model\.pixel_level_module\.decoder\.fpn\.layers\.(\d)\.proj\.1\.(weight|bias)", PD + r"adapter_{fpn}.norm.\2"),
    (r"model\.pixel_level_module\.decoder\.fpn\.layers\.(\d)\.block\.0\.weight", PD + "layer_{fpn}.weight"),
    (r"model\.pixel_level_module\.decoder\.fpn\.layers\.(\d)\.block\.1\.(weight|bias)", PD + r"layer_{fpn}.norm.\2"),
    (r"model\.pixel_level_module\.decoder\.mask_projection\.(weight|bias)", PD + r"mask_features.\1"),
    (r"model\.transformer_module\.queries_embedder\.weight", PR + "query_embed.weight"),
    (r"model\.transformer_module\.input_projection\.(weight|bias)", PR + r"input_proj.\1"),
    (r"model\.transformer_module\.decoder\.(?:layernorm|layer_norm)\.(weight|bias)", DEC + r"norm.\1"),
    (r"class_predictor\.(weight|bias)", PR + r"class_embed.\1"),
    (r"mask_embedder\.(\d+)\.0\.(weight|bias)", PR + r"mask_embed.layers.\1.\2"),
]
_LAYER = r"model\.transformer_module\.decoder\.layers\.(\d+)\."
_LAYER_RULES: list[tuple[str, str]] = [
    (r"self_attn\.(?:o_proj|out_proj)\.(weight|bias)", r"self_attn.out_proj.\2"),
    (r"encoder_attn\.(?:o_proj|out_proj)\.(weight|bias)", r"multihead_attn.out_proj.\2"),
    (r"self_attn_layer_norm\.(weight|bias)", r"norm1.\2"),
    (r"encoder_attn_layer_norm\.(weight|bias)", r"norm2.\2"),
    (r"final_layer_norm\.(weight|bias)", r"norm3.\2"),
    (r"(?:mlp\.)?fc1\.(weight|bias)", r"linear1.\2"),
    (r"(?:mlp\.)?fc2\.(weight|bias)", r"linear2.\2"),
]
_QKV = re.compile(_LAYER + r"(self_attn|encoder_attn)\.([qkv])_proj\.(weight|bias)")


@dataclass
class LoadReport:
    """What `load_hf_state_dict` did. missing: model keys no source key provided; unexpected: source keys (original
    names) that went nowhere; dropped: source keys ignored on purpose (e.g. `criterion.empty_weight`)."""

    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unexpected

    def __str__(self) -> str:
        lines = [f"loaded {self.loaded} tensors; {len(self.missing)} missing, {len(self.unexpected)} unexpected"]
        lines += [f"  missing: {k}" for k in self.missing] + [f"  unexpected: {k}" for k in self.unexpected]
        return "\n".join(lines)


def hf_to_official(hf_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers MaskFormer state dict -> official (v2) names of this package.

    Keys that match no rule are kept under their original name (so loading reports them as unexpected); the keys in
    `DROPPED` are removed.
    """
    sd = _with_model_prefix(hf_sd)
    out: dict[str, torch.Tensor] = {}
    backbone = {k[len(HF_BACKBONE) :]: v for k, v in sd.items() if k.startswith(HF_BACKBONE)}
    out.update(_backbone_to_official(backbone))
    rest = {k: v for k, v in sd.items() if not k.startswith(HF_BACKBONE) and k not in DROPPED}
    out.update(_fuse_qkv(rest))
    for key, value in rest.items():
        out[_rename(key)] = value
    return out


def load_hf_state_dict(model: nn.Module, hf_state_dict: dict[str, torch.Tensor], *, strict: bool = True) -> LoadReport:
    """Map `hf_state_dict` onto `model` (a MaskFormer of matching shape) and load it.

    Raises ValueError naming every key whose shape differs, and (strict) every missing or unexpected key.
    """
    mapped = hf_to_official(hf_state_dict)
    own = model.state_dict()
    bad = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in mapped.items()
        if k in own and v.shape != own[k].shape
    ]
    if bad:
        raise ValueError("transformers state dict does not fit the model (shape mismatch):\n  " + "\n  ".join(bad))
    report = LoadReport(
        missing=sorted(k for k in own if k not in mapped),
        unexpected=sorted(k for k in mapped if k not in own),
        dropped=sorted(k for k in _with_model_prefix(hf_state_dict) if k in DROPPED or _BACKBONE_DROPPED.fullmatch(k)),
    )
    if strict and not report.ok:
        raise ValueError(f"transformers state dict does not match the model:\n{report}")
    model.load_state_dict({k: v for k, v in mapped.items() if k in own}, strict=False)
    report.loaded = sum(k in own for k in mapped)
    return report


def _with_model_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A bare MaskFormerModel state dict (pixel_level_module.*, transformer_module.*) gets the `model.` prefix."""
    bare = ("pixel_level_module.", "transformer_module.")
    return {("model." + k if k.startswith(bare) else k): v for k, v in sd.items()}


def _backbone_to_official(backbone: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if not backbone:
        return {}
    from maskformer.convert.hf_backbone import hf_backbone_to_official

    kind = "swin" if any(k.startswith("model.embeddings.") for k in backbone) else "resnet"
    return {"backbone." + k: v for k, v in hf_backbone_to_official(backbone, kind).items()}


def _rename(key: str) -> str:
    for pattern, repl in _RULES:
        m = re.fullmatch(pattern, key)
        if m:
            fpn = 3 - int(m.group(1)) if "{fpn}" in repl else None  # HF fpn.layers.0 is the res4 lateral
            return m.expand(repl.replace("{fpn}", str(fpn)))
    for pattern, repl in _LAYER_RULES:
        m = re.fullmatch(_LAYER + pattern, key)
        if m:
            return DEC + f"layers.{m.group(1)}." + m.expand(repl)
    return key


def _fuse_qkv(rest: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Pop complete (q, k, v) projection triples from `rest`; return them as packed in_proj_{weight,bias}."""
    groups: dict[tuple[str, str, str], dict[str, str]] = {}
    for key in rest:
        m = _QKV.fullmatch(key)
        if m:
            layer, attn, which, kind = m.groups()
            groups.setdefault((layer, attn, kind), {})[which] = key
    out = {}
    for (layer, attn, kind), keys in groups.items():
        if len(keys) < 3:
            continue  # incomplete: leave them in place, they will be reported as unexpected
        name = "self_attn" if attn == "self_attn" else "multihead_attn"
        out[DEC + f"layers.{layer}.{name}.in_proj_{kind}"] = torch.cat([rest.pop(keys[c]) for c in "qkv"])
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Config

SWIN_NAMES = {
    (96, (2, 2, 6, 2)): "swin_t",
    (96, (2, 2, 18, 2)): "swin_s",
    (128, (2, 2, 18, 2)): "swin_b",
    (192, (2, 2, 18, 2)): "swin_l",
}
RESNET_NAMES = {
    ("basic", (2, 2, 2, 2)): "resnet18",
    ("basic", (3, 4, 6, 3)): "resnet34",
    ("bottleneck", (3, 4, 6, 3)): "resnet50",
    ("bottleneck", (3, 4, 23, 3)): "resnet101",
}


def hf_backbone_name(backbone_config: dict) -> str:
    """This package's backbone name for a transformers backbone config dict (Swin-T/S/B/L, ResNet-18/34/50/101)."""
    kind = backbone_config.get("model_type", "")
    if kind in ("swin", "maskformer-swin"):
        key = (int(backbone_config.get("embed_dim", 96)), tuple(backbone_config.get("depths", ())))
        table = SWIN_NAMES
    elif kind == "resnet":
        key = (backbone_config.get("layer_type", "bottleneck"), tuple(backbone_config.get("depths", ())))
        table = RESNET_NAMES
    else:
        raise ValueError(f"transformers backbone model_type {kind!r} is not supported; valid: swin, resnet")
    if key not in table:
        raise ValueError(
            f"transformers {kind} backbone {key} matches no backbone of this package; known: "
            + ", ".join(f"{v}={k}" for k, v in table.items())
        )
    return table[key]


def hf_backbone(backbone_config: dict) -> nn.Module:
    """A backbone of this package with exactly the architecture of a transformers Swin / ResNet config dict (any
    width or depth, e.g. the tiny test configs), randomly initialized."""
    from maskformer.backbones import ResNet, SwinTransformer

    kind = backbone_config.get("model_type", "")
    c = backbone_config
    if kind in ("swin", "maskformer-swin"):
        if not c.get("qkv_bias", True) or c.get("use_absolute_embeddings", False):
            raise ValueError(
                "transformers Swin config: qkv_bias=False / use_absolute_embeddings=True are not supported"
            )
        return SwinTransformer(
            embed_dim=int(c["embed_dim"]),
            depths=tuple(c["depths"]),
            num_heads=tuple(c["num_heads"]),
            window_size=int(c["window_size"]),
            mlp_ratio=float(c.get("mlp_ratio", 4.0)),
            drop_path_rate=float(c.get("drop_path_rate", 0.0)),
            patch_size=int(c.get("patch_size", 4)),
        )
    if kind == "resnet":
        if c.get("downsample_in_first_stage", False) or c.get("downsample_in_bottleneck", False):
            raise ValueError("transformers ResNet config: only downsample_in_first_stage/_in_bottleneck=False fit")
        sizes = tuple(int(v) for v in c["hidden_sizes"])
        bottleneck = c.get("layer_type", "bottleneck") == "bottleneck"
        return ResNet(
            depths=tuple(c["depths"]),
            stage_channels=sizes,
            bottleneck_channels=tuple(v // 4 for v in sizes) if bottleneck else None,
            stem_channels=int(c.get("embedding_size", 64)),
        )
    raise ValueError(f"transformers backbone model_type {kind!r} is not supported; valid: swin, resnet")


def build_hf_model(hf_config: dict) -> nn.Module:
    """The MaskFormer matching a transformers config dict exactly, including non-preset backbones."""
    from maskformer.modeling import build_model

    return build_model(_config(hf_config, "hf_custom"), backbone=hf_backbone(hf_config["backbone_config"]))


def hf_config_to_config(hf_config: dict) -> Config:
    """A transformers MaskFormerConfig dict (config.json) -> a Config whose `build_model` matches that network.

    The backbone must be one of this package's named backbones (see `hf_backbone_name`; `build_hf_model` handles any
    size). Data/train/inference sections keep their defaults; loss weights come from the HF config. Deep supervision
    stays on (the official training setting) whatever `use_auxiliary_loss` says.
    """
    _check_hf_config(hf_config)
    return _config(hf_config, hf_backbone_name(hf_config["backbone_config"]))


def _check_hf_config(hf_config: dict) -> None:
    for key in ("backbone_config", "decoder_config"):
        if not isinstance(hf_config.get(key), dict):
            raise ValueError(f"transformers MaskFormer config: {key!r} is missing or not a dict")


def _config(hf_config: dict, name: str) -> Config:
    _check_hf_config(hf_config)
    bb, dec = hf_config["backbone_config"], hf_config["decoder_config"]
    id2label = hf_config.get("id2label") or {}
    num_classes = len(id2label) if id2label else int(hf_config.get("num_labels", 150))
    model = ModelConfig(
        backbone=name,
        drop_path_rate=float(bb.get("drop_path_rate", 0.0)) if name.startswith("swin") else 0.0,
        num_classes=num_classes,
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
