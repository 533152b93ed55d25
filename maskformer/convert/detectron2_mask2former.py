"""Official Mask2Former detectron2 checkpoints (model-zoo `.pkl`, training `.pth`): what the weights say about the
network, for `maskformer.convert.detectron2` (which reads the file, renames and loads it).

Our Mask2Former parameter names are the official ones (mask2former.md section 6.3), so the key map is the identity
except the pre-v2 query name `sem_seg_head.predictor.static_query.weight` (the COCO panoptic R50/R101/Swin-T/S/B
files still carry it) -> `query_feat.weight`, and `criterion.empty_weight` (the loss's class weights) is dropped.
Read from the keys and shapes: backbone, K (class head rows - 1), Q, widths, decoder predictions (masked-attention
layers + 1), encoder layers and FFN width. Attention heads and sampling points are not readable apart (their product
is): every official config uses 8 heads and 4 points, which the preset supplies.
"""

from __future__ import annotations

import re

import torch

from maskformer.config import PRESETS

PD = "sem_seg_head.pixel_decoder."
PR = "sem_seg_head.predictor."
OLD_QUERY = PR + "static_query.weight"  # the name before the decoder's `_version = 2`
QUERY = PR + "query_feat.weight"
_SHORT = {"resnet18": "r18", "resnet34": "r34", "resnet50": "r50", "resnet101": "r101"}
# K -> preset dataset suffix. K alone cannot tell ADE20K semantic from panoptic, nor Cityscapes semantic from
# panoptic: the semantic one is assumed (the zoo passes the right preset explicitly).
_DATASETS = {150: "ade20k", 133: "coco_panoptic", 80: "coco_instance", 19: "cityscapes", 8: "cityscapes_instance"}
_CPU_DATASETS = {8: "synth", 11: "camvid"}


def is_mask2former(sd: dict[str, torch.Tensor]) -> bool:
    """Whether a (v2-named) state dict holds a Mask2Former head (learnable query features)."""
    return QUERY in sd or OLD_QUERY in sd


def rename_key(key: str) -> str:
    """The pre-v2 query name -> `query_feat` (any other key unchanged)."""
    return QUERY if key == OLD_QUERY else key


def mask2former_fields(sd: dict[str, torch.Tensor]) -> dict:
    """ModelConfig fields of a Mask2Former readable from its v2-named state dict (backbone fields excluded)."""
    cross = _indices(sd, PR + "transformer_cross_attention_layers.")
    enc = PD + "transformer.encoder.layers."
    return {
        "arch": "mask2former",
        "pixel_decoder": "msdeformattn",
        "num_classes": sd[PR + "class_embed.weight"].shape[0] - 1,
        "num_queries": sd[QUERY].shape[0],
        "hidden_dim": sd[QUERY].shape[1],
        "conv_dim": sd[PD + "mask_features.weight"].shape[1],
        "mask_dim": sd[PD + "mask_features.weight"].shape[0],
        "dec_layers": len(cross) + 1,  # + the prediction from the raw queries
        "dim_feedforward": sd[PR + "transformer_ffn_layers.0.linear1.weight"].shape[0],
        "enc_layers": len(_indices(sd, enc)),
        "enc_dim_feedforward": sd[enc + "0.linear1.weight"].shape[0],
        "enforce_input_proj": any(k.startswith(PR + "input_proj.") for k in sd),
        "size_divisibility": 32,
    }


def infer_mask2former_preset(fields: dict) -> str | None:
    """The Mask2Former preset for these fields: backbone + dataset from K (semantic assumed where K is ambiguous).
    An unknown K (e.g. Mapillary's 65) gets the backbone's first preset (ADE20K semantic / synthetic), so the loss
    and training settings are Mask2Former's; K itself always comes from the weights."""
    bb = fields["backbone"]
    short = _SHORT.get(bb, bb)
    cpu = bb in ("resnet18", "resnet34")
    ds = (_CPU_DATASETS if cpu else _DATASETS).get(fields["num_classes"], "synth" if cpu else "ade20k")
    name = f"mask2former_{short}_{ds}"
    return name if name in PRESETS else None


def _indices(sd: dict, prefix: str) -> list[int]:
    """Sorted distinct integers i of keys `prefix{i}.`."""
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in sd for m in [pat.match(k)] if m})
