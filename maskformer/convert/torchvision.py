"""torchvision-layout ResNet weights (e.g. `resnet50-0676ba61.pth`) -> our detectron2-named backbone keys.

torchvision: conv1 / bn1 / layer{N}.{j}.conv{k} / bn{k} / downsample.{0,1} / fc.
ours (detectron2): stem.conv1 / stem.conv1.norm / res{N+1}.{j}.conv{k} / conv{k}.norm / shortcut / shortcut.norm.
The classifier `fc.*` has no counterpart and is reported as an expected unexpected key; BatchNorm's
`num_batches_tracked` is dropped (FrozenBN has no such buffer).
"""

from __future__ import annotations

import re

import torch

EXPECTED_UNEXPECTED = ("fc.*",)


def is_torchvision_resnet(sd: dict[str, torch.Tensor]) -> bool:
    """True for a torchvision ResNet state dict (keys `conv1.weight`, `layer1.0.conv1.weight`, ...)."""
    return "conv1.weight" in sd and "layer1.0.conv1.weight" in sd


def rename_key(key: str) -> str | None:
    """torchvision name -> ours; None for keys to drop (num_batches_tracked). Unknown keys are kept unchanged."""
    if key.endswith("num_batches_tracked"):
        return None
    m = re.match(r"^layer(\d)\.(\d+)\.(.*)$", key)
    if m is None:
        if key.startswith("conv1."):
            return "stem.conv1." + key[len("conv1.") :]
        if key.startswith("bn1."):
            return "stem.conv1.norm." + key[len("bn1.") :]
        return key
    stage, block, rest = int(m.group(1)) + 1, m.group(2), m.group(3)
    rest = re.sub(r"^bn(\d)\.", r"conv\1.norm.", rest)
    rest = re.sub(r"^downsample\.0\.", "shortcut.", rest)
    rest = re.sub(r"^downsample\.1\.", "shortcut.norm.", rest)
    return f"res{stage}.{block}.{rest}"


def convert_resnet(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename every key of a torchvision ResNet state dict (see `rename_key`)."""
    out = {}
    for k, v in sd.items():
        new = rename_key(k)
        if new is not None:
            out[new] = v
    return out
