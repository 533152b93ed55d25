"""MaskFormer in plain PyTorch: one model, one loss, one training procedure for semantic, panoptic and instance
segmentation (Cheng, Schwing, Kirillov, NeurIPS 2021)."""

from maskformer.config import PRESETS, Config, apply_overrides, get_preset
from maskformer.structures import DatasetMeta, ImageBatch, SegTarget

__version__ = "0.1.0"

__all__ = ["Config", "DatasetMeta", "ImageBatch", "PRESETS", "SegTarget", "apply_overrides", "get_preset"]
