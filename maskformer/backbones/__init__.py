"""Backbones behind the contract of `base.py`, with the official detectron2 / D2SwinTransformer parameter names
(released checkpoints load with only the `backbone.` prefix removed). `build_backbone(name, **kwargs)`: a preset of
`BACKBONES` or, of any size from constructor keywords, a class of `BACKBONE_CLASSES` ("resnet", "swin")."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial

from torch import nn

from maskformer.backbones.base import Backbone, num_parameters
from maskformer.backbones.resnet import RESNET_VARIANTS, ResNet
from maskformer.backbones.swin import SWIN_VARIANTS, SwinTransformer

# the named presets: resnet18/34/50/101/101c, swin_t/s/b/l (Swins train with drop_path_rate 0.3)
BACKBONES: dict[str, Callable[..., nn.Module]] = {
    **{name: partial(ResNet, **args) for name, args in RESNET_VARIANTS.items()},
    **{name: partial(SwinTransformer, **args, drop_path_rate=0.3) for name, args in SWIN_VARIANTS.items()},
}
# Any size, from constructor keywords (`model.backbone_args`), e.g. converted transformers models with tiny backbones.
BACKBONE_CLASSES: dict[str, Callable[..., nn.Module]] = {"resnet": ResNet, "swin": SwinTransformer}


def build_backbone(name: str, **kwargs) -> nn.Module:
    """The backbone `name` (a key of BACKBONES), randomly initialized; unknown names or keywords are a clear error."""
    builder = BACKBONES.get(name) or BACKBONE_CLASSES.get(name)
    if builder is None:
        raise KeyError(f"unknown backbone {name!r}; valid names: {', '.join([*BACKBONES, *BACKBONE_CLASSES])}")
    accepted = list(inspect.signature(builder).parameters)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(f"backbone {name!r} got unexpected keyword(s) {unknown}; it accepts: {accepted}")
    return builder(**kwargs)


__all__ = ["BACKBONES", "BACKBONE_CLASSES", "Backbone", "ResNet", "SwinTransformer", "build_backbone", "num_parameters"]
