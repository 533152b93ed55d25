"""MaskFormer in plain PyTorch: one model, one loss, one training procedure for semantic, panoptic and instance
segmentation (Cheng, Schwing, Kirillov, NeurIPS 2021).

The structures (torch) are imported on first use, so torch-free parts (`maskformer score`, maskformer.io) start fast.
"""

from maskformer.config import PRESETS, Config, apply_overrides, get_preset

__version__ = "0.1.0"

__all__ = ["Config", "DatasetMeta", "ImageBatch", "PRESETS", "SegTarget", "apply_overrides", "get_preset"]


def __getattr__(name: str):
    if name in ("DatasetMeta", "ImageBatch", "SegTarget"):
        from maskformer import structures

        return getattr(structures, name)
    raise AttributeError(f"module 'maskformer' has no attribute {name!r}")
