"""Helpers of the serve tests: a tiny random-weight model directory and a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from maskformer.checkpoint import save_pretrained
from maskformer.config import get_preset
from maskformer.data.synthetic import SynthConfig, render
from maskformer.io import write_image
from maskformer.modeling import build_model

TINY = [  # narrow heads, small test size; every query kept so panoptic/instance outputs are not empty
    "model.conv_dim=32",
    "model.mask_dim=32",
    "model.hidden_dim=32",
    "model.nheads=4",
    "model.dim_feedforward=64",
    "model.dec_layers=2",
    "model.num_queries=12",
    "inference.min_size_test=64",
    "inference.max_size_test=128",
    "inference.object_mask_threshold=0.0",
    "inference.task=semantic",
]
META = SynthConfig().meta()  # circle, square, triangle, star (things), sky, grass, water, stripes (stuff)


def write_model(path: Path, seed: int = 0) -> Path:
    """maskformer_r18_synth with tiny heads, weights re-drawn so the random model predicts several classes."""
    torch.manual_seed(seed)
    cfg = get_preset("maskformer_r18_synth", TINY)
    model = build_model(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point() and "running_var" not in name:
                t.add_(torch.randn(t.shape, generator=g) * 0.2)
    return save_pretrained(model, cfg, META, path)


def write_photo(path: Path, size=(72, 96), seed: int = 3) -> Path:
    image, _, _ = render(SynthConfig(image_size=size), np.random.default_rng(seed))
    write_image(path, image)
    return path


def start_server(model_dir: Path, **kwargs):
    """A started BackgroundServer (127.0.0.1, free port) on the model directory; kwargs: ModelService limits and
    create_app's max_body_bytes."""
    from maskformer.serve.server import BackgroundServer
    from maskformer.serve.service import ModelService

    app_kwargs = {k: kwargs.pop(k) for k in ("max_body_bytes",) if k in kwargs}
    return BackgroundServer(ModelService.load(str(model_dir), **kwargs), **app_kwargs).start()
