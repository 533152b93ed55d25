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


def hf_tiny(kind: str, *, id2label: bool = True):
    """A tiny transformers MaskFormerForInstanceSegmentation ("swin" | "resnet" backbone of no named size), every
    tensor HF initialises to a constant re-drawn so that each one matters."""
    import pytest

    transformers = pytest.importorskip("transformers")
    from transformers.models.maskformer.configuration_maskformer import MaskFormerDetrConfig

    stages = ["stage1", "stage2", "stage3", "stage4"]
    if kind == "swin":
        bb = transformers.SwinConfig(
            embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=4, mlp_ratio=2.0, out_features=stages
        )
    else:
        bb = transformers.ResNetConfig(
            embedding_size=16, hidden_sizes=[32, 64, 96, 128], depths=[1, 1, 1, 1], layer_type="bottleneck",
            out_features=stages,
        )  # fmt: skip
    dec = MaskFormerDetrConfig(
        d_model=32, decoder_layers=2, decoder_attention_heads=4, decoder_ffn_dim=64, dropout=0.0, num_queries=8
    )
    cfg = transformers.MaskFormerConfig(
        backbone_config=bb, decoder_config=dec, num_labels=4, fpn_feature_size=32, mask_feature_size=32,
        id2label={i: f"label{i}" for i in range(4)} if id2label else None,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.MaskFormerForInstanceSegmentation(cfg).eval()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand_like(t) + 0.5)
            elif t.dim() == 1:
                t.copy_(torch.randn_like(t) * 0.1 + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
            elif "queries_embedder" in name:
                t.normal_()
            else:
                nn.init.xavier_uniform_(t.view(t.shape[0], -1))
    return model
