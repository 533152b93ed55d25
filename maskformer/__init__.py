"""MaskFormer in plain PyTorch: one model, one loss, one training procedure for semantic, panoptic and instance
segmentation (Cheng, Schwing, Kirillov, NeurIPS 2021).

The names below are imported on first use (the structures need torch), so torch-free parts (`maskformer score`,
maskformer.io) start fast.
"""

__version__ = "0.1.0"

__all__ = ["Config", "DatasetMeta", "ImageBatch", "PRESETS", "SegTarget", "apply_overrides", "get_preset"]


def __getattr__(name: str):
    if name in ("Config", "PRESETS", "apply_overrides", "get_preset"):
        from maskformer import config as module
    elif name in ("DatasetMeta", "ImageBatch", "SegTarget"):
        from maskformer import structures as module
    else:
        raise AttributeError(f"module 'maskformer' has no attribute {name!r}")
    return getattr(module, name)
