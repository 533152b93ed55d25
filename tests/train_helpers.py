"""Tiny, fast training set-ups shared by the test_train_* files: a GroupNorm conv backbone meeting the backbone
contract, a narrow MaskFormer config, and the built-in synthetic data at 64x64."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from maskformer.config import Config, get_preset

FEATURES = ("res2", "res3", "res4", "res5")


class TinyBackbone(nn.Module):
    """Four strided conv + GN + ReLU stages: {"res2".."res5"} at strides 4, 8, 16, 32 (batch-independent norms)."""

    def __init__(self, channels=(16, 16, 24, 32)):
        super().__init__()
        self.out_channels = dict(zip(FEATURES, channels))
        self.strides = dict(zip(FEATURES, (4, 8, 16, 32)))
        self.size_divisibility = 32
        stages, c_in = [], 3
        for i, c in enumerate(channels):
            stride = 4 if i == 0 else 2
            stages.append(nn.Sequential(nn.Conv2d(c_in, c, 3, stride, 1), nn.GroupNorm(4, c), nn.ReLU()))
            c_in = c
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for name, stage in zip(FEATURES, self.stages):
            x = stage(x)
            out[name] = x
        return out


def tiny_config(root: Path | str, *extra: str, size: int = 64) -> Config:
    """maskformer_r18_synth narrowed to a 32-wide head, 2 decoder layers, 6 queries, `size` crops, no workers."""
    opts = [
        "model.conv_dim=32",
        "model.mask_dim=32",
        "model.hidden_dim=32",
        "model.nheads=2",
        "model.dim_feedforward=64",
        "model.dec_layers=2",
        "model.num_queries=6",
        f"data.crop_size={size},{size}",
        f"data.min_size_train={size}",
        f"data.pad_size={size}",
        "data.num_workers=0",
        "train.batch_size=2",
        "train.eval_period=0",
        "train.log_period=1",
        f"data.root={root}",
    ]
    return get_preset("maskformer_r18_synth", opts + list(extra))


def tiny_model(cfg: Config) -> nn.Module:
    from maskformer.modeling import build_model

    torch.manual_seed(cfg.train.seed)
    return build_model(cfg, backbone=TinyBackbone())


def write_tiny_synth(root: Path, size: int = 64, num_train: int = 8, num_val: int = 4) -> Path:
    from maskformer.data.synthetic import SynthConfig, write_synthetic

    if not (root / "meta.json").is_file():
        write_synthetic(root, SynthConfig(image_size=(size, size), num_train=num_train, num_val=num_val))
    return root
