"""Every foreign weight source (transformers directory, detectron2 `.pkl` / `.pth` / `.safetensors`, ImageNet
backbone files) -> this package, with a report naming every key. Pickles are read only through `safe_pickle`.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from maskformer.checkpoint import (
    WEIGHTS_NAME,
    CheckpointError,
    KeyReport,
    build_loaded,
    generic_meta,
    load_checked,
    load_safetensors,
    read_model_config,
)
from maskformer.config import PRESETS, Config, apply_overrides, get_preset
from maskformer.convert.backbones import to_backbone_keys
from maskformer.convert.detectron2 import convert_detectron2, map_detectron2
from maskformer.convert.hf import convert_hf, map_hf, map_hf_encoder
from maskformer.convert.hf_mask2former import convert_hf_mask2former
from maskformer.convert.sources import detect_source, read_state_dict
from maskformer.structures import DatasetMeta

__all__ = ["convert_source", "detect_source", "load_backbone_weights", "load_full_weights", "load_model"]


def convert_source(
    path: str | os.PathLike, *, preset: str | None = None, num_classes: int | None = None, class_names=None
) -> tuple[nn.Module, Config, DatasetMeta, KeyReport]:
    """(model in eval mode, cfg, meta, report) from a foreign checkpoint; every key must fit (else `CheckpointError`).
    preset: for what weights cannot show (default: inferred from detectron2 keys). num_classes (detectron2): a new
    class count, the class head re-initialised. class_names: replaces the names (same count; thing flags kept)."""
    if (kind := detect_source(path)) == "model_dir":
        raise CheckpointError(f"{path}: already a maskformer model directory")
    if kind != "transformers":
        model, cfg, meta, report = convert_detectron2(path, preset, num_classes)
    elif num_classes is not None:
        raise CheckpointError(f"{path}: num_classes applies to detectron2 checkpoints, not transformers ones")
    else:
        sd, info = read_state_dict(path)
        convert = convert_hf_mask2former if info["hf_config"].get("model_type") == "mask2former" else convert_hf
        model, cfg, meta, report = convert(str(path), sd, info["hf_config"], preset)
    if class_names is not None:
        if len(class_names) != meta.num_classes:
            raise CheckpointError(f"{path}: {len(class_names)} class names given, the model has {meta.num_classes}")
        meta = dataclasses.replace(meta, class_names=list(class_names))
    return model, cfg, meta, report


def load_model(
    path_or_preset: str | os.PathLike, device: str | torch.device = "cpu", *, overrides: Iterable[str] = ()
) -> tuple[nn.Module, Config, DatasetMeta]:
    """(model in eval mode on `device`, cfg, meta) from a model directory, a convertible source (converted on the
    fly) or a preset name (random weights: a warning says so). `overrides` ("a.b=c") apply to the config first; for a
    model directory, one that changes the architecture makes loading fail with the mismatching keys named."""
    ref, overrides = str(path_or_preset), list(overrides)
    if Path(ref).exists() and detect_source(ref) == "model_dir":
        cfg, meta = read_model_config(ref)
        cfg, file = apply_overrides(cfg, overrides), Path(ref) / WEIGHTS_NAME
        model, _ = build_loaded(cfg, load_safetensors(file), str(file))
        return model.to(device).eval(), cfg, meta
    if Path(ref).exists():
        model, cfg, meta, _ = convert_source(ref)
        new = apply_overrides(cfg, overrides)
        if new.model != cfg.model:
            model, _ = build_loaded(new, model.state_dict(), ref)
        return model.to(device).eval(), new, meta
    if ref not in PRESETS:
        raise CheckpointError(
            f"{ref}: neither a model directory nor a preset name, and no such file (checkpoint files and transformers "
            "directories are converted on the fly; `maskformer models` lists the presets)"
        )
    from maskformer.modeling import build_model

    warnings.warn(f"{ref}: a preset name, so the model has RANDOM weights (untrained): outputs are noise", stacklevel=2)
    cfg = get_preset(ref, overrides)
    return build_model(cfg).to(device).eval(), cfg, generic_meta(cfg)


def load_full_weights(model: nn.Module, path: str | os.PathLike, *, strict: bool = False) -> KeyReport:
    """Load a whole-model checkpoint (any supported source) into `model`; returns the key report."""
    sd, info = read_state_dict(path)
    renamed = map_hf(sd) if info["kind"] == "transformers" else map_detectron2(sd)
    return load_checked(model, renamed, source=str(path), strict=strict)


def load_backbone_weights(model: nn.Module, path: str | os.PathLike) -> KeyReport:
    """Load ImageNet backbone weights (layouts: `convert.backbones`) into `model.backbone` (or `model` itself if it
    has no `.backbone`); keys known to be absent / extra for the format are reported as expected."""
    backbone = getattr(model, "backbone", model)
    sd, info = read_state_dict(path)
    if info["kind"] == "transformers":
        renamed, missing, unexpected = map_hf_encoder(sd), [], []
    else:
        heuristics = bool(info.get("matching_heuristics"))
        renamed, missing, unexpected = to_backbone_keys(sd, backbone.state_dict().keys(), heuristics)
    # a BatchNorm backbone (CPU presets) initialised from a FrozenBN-format file: the step counter stays at 0
    missing = [*missing, "*.num_batches_tracked"]
    return load_checked(backbone, renamed, source=str(path), expected_missing=missing, expected_unexpected=unexpected)
