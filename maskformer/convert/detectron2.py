"""Official detectron2 MaskFormer checkpoints (model-zoo `.pkl`, training `.pth`) -> a model of this library.

Our parameter names are the official v2 names, so the key map is only the v1 -> v2 head rename. The architecture is
read from the keys and shapes; the closest preset supplies what weights cannot show (attention heads, dataset settings).
"""

from __future__ import annotations

import os
import re

import torch

from maskformer.checkpoint import CheckpointError, Renamed, build_loaded, generic_meta
from maskformer.config import PRESETS, Config, get_preset
from maskformer.convert.backbones import backbone_by_depths
from maskformer.convert.detectron2_mask2former import infer_mask2former_preset, is_mask2former, mask2former_fields
from maskformer.convert.detectron2_mask2former import rename_key as rename_mask2former_key
from maskformer.convert.sources import read_state_dict

_HEAD = "sem_seg_head."
_PD = "sem_seg_head.pixel_decoder."
_PRED = "sem_seg_head.predictor."
# K -> dataset preset suffix (semantic / panoptic); "+6 Enc" models are panoptic.
_DATASETS = {150: "ade20k", 171: "coco_stuff", 847: "ade20k_full", 19: "cityscapes", 65: "mapillary"}
_PANOPTIC = {133: "coco_panoptic", 150: "ade20k_panoptic"}
_CPU_DATASETS = {8: "synth", 11: "camvid"}


def map_detectron2(sd: dict[str, torch.Tensor]) -> Renamed:
    """v1 head names (`sem_seg_head.<x>` outside the predictor) -> v2 (`sem_seg_head.pixel_decoder.<x>`), with each
    key's source name (for reports); drops `criterion.empty_weight` and a DDP `module.` prefix."""

    def rename(key: str) -> str | None:
        key = rename_mask2former_key(key.removeprefix("module."))
        if key == "criterion.empty_weight":
            return None
        return _PD + key[len(_HEAD) :] if key.startswith(_HEAD) and not key.startswith((_PD, _PRED)) else key

    return Renamed.by_key(sd, rename)


def _indices(sd: dict, prefix: str) -> list[int]:
    """Sorted distinct integers i of keys `prefix{i}.`."""
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in sd for m in [pat.match(k)] if m})


def infer_backbone(sd: dict[str, torch.Tensor]) -> str:
    """Backbone name (a key of the BACKBONES table) from `backbone.*` keys and shapes."""
    if "backbone.patch_embed.proj.weight" in sd:
        width = sd["backbone.patch_embed.proj.weight"].shape[0]
        return backbone_by_depths("swin", width, _depths(sd, "backbone.layers.{}.blocks.", range(4)), "detectron2")
    if "backbone.stem.conv1.weight" not in sd:
        raise ValueError("no backbone keys found (expected backbone.stem.conv1.weight or backbone.patch_embed.*)")
    block = "bottleneck" if "backbone.res2.0.conv3.weight" in sd else "basic"
    name = backbone_by_depths("resnet", block, _depths(sd, "backbone.res{}.", range(2, 6)), "detectron2")
    if "backbone.stem.conv2.weight" in sd:  # DeepLab stem: three 3x3 convs
        if name != "resnet101":
            raise ValueError(f"a DeepLab (3-conv) stem is only supported on ResNet-101 (R101c), found {name}")
        name = "resnet101c"
    return name


def _depths(sd: dict, pattern: str, stages) -> tuple[int, ...]:
    return tuple(len(_indices(sd, pattern.format(i))) for i in stages)


def infer_backbone_norm(sd: dict[str, torch.Tensor]) -> str:
    """ResNet norm of a v2-named state dict: BatchNorm keeps `num_batches_tracked`, FrozenBN (official) only the
    statistics, GroupNorm neither."""
    norm = [k for k in sd if k.startswith("backbone.") and ".norm." in k]
    if any(k.endswith(".num_batches_tracked") for k in norm):
        return "BN"
    return "FrozenBN" if any(k.endswith(".running_mean") for k in norm) else "GN"


def infer_model_fields(sd: dict[str, torch.Tensor]) -> dict:
    """ModelConfig fields readable from a v2-named state dict (nheads and dropout are not)."""
    f: dict = {"backbone": infer_backbone(sd)}
    if f["backbone"].startswith("resnet"):
        f["backbone_norm"] = infer_backbone_norm(sd)
    if is_mask2former(sd):
        return {**f, **mask2former_fields(sd)}
    if _PRED + "class_embed.weight" in sd:
        f["arch"], f["num_classes"] = "maskformer", sd[_PRED + "class_embed.weight"].shape[0] - 1
    elif _PRED + "weight" in sd:
        f["arch"], f["num_classes"] = "per_pixel_baseline", sd[_PRED + "weight"].shape[0]
    elif _PRED + "query_embed.weight" in sd:
        f["arch"], f["num_classes"] = "per_pixel_baseline_plus", sd[_PRED + "query_embed.weight"].shape[0]
    else:
        raise ValueError(f"no predictor keys found (expected {_PRED}class_embed.weight or {_PRED}weight)")
    f["conv_dim"] = sd[_PD + "layer_1.weight"].shape[0]
    f["mask_dim"] = sd[_PD + "mask_features.weight"].shape[0]
    enc = _indices(sd, _PD + "transformer.encoder.layers.")
    f["pixel_decoder"] = "transformer_encoder" if enc else "fpn"
    if enc:
        f["enc_layers"] = len(enc)
    if f["arch"] != "per_pixel_baseline":
        f["num_queries"], f["hidden_dim"] = sd[_PRED + "query_embed.weight"].shape
        f["dec_layers"] = len(_indices(sd, _PRED + "transformer.decoder.layers."))
        f["dim_feedforward"] = sd[_PRED + "transformer.decoder.layers.0.linear1.weight"].shape[0]
        proj = sd.get(_PRED + "input_proj.weight")
        if proj is None or proj.shape[1] == f["hidden_dim"]:  # otherwise the projection exists either way
            f["enforce_input_proj"] = proj is not None
    elif enc:
        f["dim_feedforward"] = sd[_PD + "transformer.encoder.layers.0.linear1.weight"].shape[0]
    return f


def infer_preset(fields: dict) -> str | None:
    """The preset name whose architecture matches `fields` (None if no preset does)."""
    if fields["arch"] == "mask2former":
        return infer_mask2former_preset(fields)
    bb, k = fields["backbone"], fields["num_classes"]
    short = bb.replace("resnet", "r")  # resnet50 -> r50; Swin names stay
    if bb in ("resnet18", "resnet34"):
        ds = _CPU_DATASETS.get(k)
    elif fields["pixel_decoder"] == "transformer_encoder" or (bb.startswith("swin") and k == 133):
        ds = _PANOPTIC.get(k)
        short = f"{short}_6enc" if fields["pixel_decoder"] == "transformer_encoder" else short
    else:
        ds = _DATASETS.get(k)
    name = f"{fields['arch']}_{short}_{ds}"
    return name if ds is not None and name in PRESETS else None


def build_config(
    sd: dict[str, torch.Tensor], preset: str | None = None, num_classes: int | None = None
) -> tuple[Config, list[str]]:
    """(Config, notes) for a v2-named state dict: `preset` (or the inferred one) with the inferred model fields.
    `num_classes`, if given and different from the checkpoint's, replaces K (the class head is then re-initialised)."""
    fields, notes = infer_model_fields(sd), []
    if (name := preset or infer_preset(fields)) is None:
        cfg = Config()
        notes.append("no preset matches these weights: default settings with the model fields read from the weights")
    else:
        cfg = get_preset(name)
        notes.append(f"preset: {name}" + ("" if preset else " (inferred from the weights)"))
    for key, value in fields.items():
        setattr(cfg.model, key, value)
    if num_classes is not None and num_classes != cfg.model.num_classes:
        notes.append(f"num_classes {cfg.model.num_classes} -> {num_classes}: the class head is re-initialised")
        cfg.model.num_classes = num_classes
        if cfg.model.arch == "per_pixel_baseline_plus":
            cfg.model.num_queries = num_classes
    return cfg, notes


def class_head_keys(cfg: Config) -> tuple[str, ...]:
    """State-dict keys whose shape depends on K (dropped when the class count changes)."""
    if cfg.model.arch in ("maskformer", "mask2former"):
        return (_PRED + "class_embed.weight", _PRED + "class_embed.bias")
    if cfg.model.arch == "per_pixel_baseline":
        return (_PRED + "weight", _PRED + "bias")
    return (_PRED + "query_embed.weight",)


def convert_detectron2(path: str | os.PathLike, preset: str | None = None, num_classes: int | None = None):
    """(model, cfg, meta, report) from an official `.pkl` / `.pth`; every key must fit, but a new class head."""
    from maskformer.data.meta import builtin_meta

    raw, info = read_state_dict(path)
    if info["kind"] == "transformers":
        raise CheckpointError(f"{path}: a transformers checkpoint, not a detectron2 one")
    renamed = map_detectron2(raw)
    try:
        cfg, notes = build_config(renamed.tensors, preset, num_classes)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read the architecture from the keys: {e}") from None
    reinit = num_classes is not None and any(n.startswith("num_classes") for n in notes)
    for key in class_head_keys(cfg) if reinit else ():
        if renamed.tensors.pop(key, None) is not None:
            renamed.dropped.append(renamed.sources.get(key, key))
    model, report = build_loaded(cfg, renamed, str(path), expected_missing=class_head_keys(cfg) if reinit else ())
    meta = builtin_meta(cfg.data.format, cfg.model.num_classes)
    if meta is None:
        meta = generic_meta(cfg)
        notes.append(f"class names: none known for {cfg.data.format!r} with {cfg.model.num_classes} classes (class_i)")
    else:
        notes.append(f"class names: built-in {meta.name} ({meta.num_classes} classes)")
    report.notes = notes
    return model.eval(), cfg, meta, report
