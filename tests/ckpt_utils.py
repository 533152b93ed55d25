"""Helpers shared by the checkpoint / convert / export tests: tiny configs and fully re-drawn weights."""

from __future__ import annotations

import torch
from torch import nn

from maskformer.config import get_preset
from maskformer.structures import DatasetMeta

TINY_HEADS = [  # narrow heads on the R18 CPU preset (K stays 8, so the preset remains inferable)
    "model.conv_dim=32",
    "model.mask_dim=32",
    "model.hidden_dim=32",
    "model.nheads=4",
    "model.dim_feedforward=64",
    "model.dec_layers=2",
    "model.num_queries=6",
]
TINY = TINY_HEADS + ["model.num_classes=5"]


def tiny_cfg():
    return get_preset("maskformer_r18_synth", TINY)


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Re-draw every floating tensor (FrozenBN variances positive) so any mis-loaded tensor changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.1 + (1.0 if name.endswith("norm.weight") else 0.0))
    return model


def build(cfg):
    from maskformer.modeling import build_model

    return randomize(build_model(cfg)).eval()


def meta_for(cfg) -> DatasetMeta:
    k = cfg.model.num_classes
    return DatasetMeta(name="toy", class_names=[f"c{i}" for i in range(k)], is_thing=[i % 2 == 0 for i in range(k)])
