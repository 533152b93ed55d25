"""Official Swin Transformer ImageNet weights (`swin_tiny_patch4_window7_224.pth`, the 22K `..._384_22k.pth`, or the
detectron2-wrapped `.pkl`) -> our backbone keys.

Our Swin keeps the official parameter names, so the conversion only strips a `backbone.` prefix. The classification
checkpoint lacks the per-stage output norms `norm0..3` (expected missing, left at gamma=1, beta=0) and carries the
classifier `norm.*` / `head.*` and the shifted-window `attn_mask` buffers (expected unexpected); both are reported.
"""

from __future__ import annotations

import torch

EXPECTED_MISSING = ("norm[0-3].*",)
EXPECTED_UNEXPECTED = ("norm.*", "head.*", "*attn_mask")


def is_official_swin(sd: dict[str, torch.Tensor]) -> bool:
    """True for a Swin state dict in the official naming, with or without a `backbone.` prefix."""
    keys = {k.removeprefix("backbone.") for k in sd}
    return "patch_embed.proj.weight" in keys and any(k.startswith("layers.0.blocks.0.attn.") for k in keys)


def convert_swin(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official Swin names -> ours (identical up to a `backbone.` prefix); keys outside the backbone are dropped."""
    if any(k.startswith("backbone.") for k in sd):
        return {k.removeprefix("backbone."): v for k, v in sd.items() if k.startswith("backbone.")}
    return dict(sd)


def window_size(sd: dict[str, torch.Tensor]) -> int:
    """The attention window w, from the relative position bias table of shape [(2w-1)^2, heads]."""
    key = next(k for k in sd if k.endswith("layers.0.blocks.0.attn.relative_position_bias_table"))
    side = round(sd[key].shape[0] ** 0.5)
    return (side + 1) // 2
