"""Mask2Former's COCO large-scale jitter recipe ("lsj"): ResizeScale by hand-computed sizes, and the recipe's
fixed 1024 x 1024 output (crop or pad with 128 / ignore / 0) from the COCO presets."""

from __future__ import annotations

import numpy as np

from maskformer.config import get_preset
from maskformer.data.recipes import train_transform
from maskformer.data.transforms import ResizeScale, Sample


def _sample(h: int, w: int) -> Sample:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    sem = (np.arange(h)[:, None] // 50 + np.arange(w)[None, :] // 70).astype(np.int32) % 7
    return Sample(image, sem, sem + 1)


def test_resize_scale_fits_the_scaled_target_keeping_the_aspect_ratio():
    # scale 0.5 of 1024 x 1024 -> s = min(512 / 400, 512 / 600) = 0.8533: 341.3 x 512 -> 341 x 512
    out = ResizeScale(min_scale=0.5, max_scale=0.5, target=(1024, 1024))(_sample(400, 600), np.random.default_rng(0))
    assert out.image.shape == (341, 512, 3) and out.sem_seg.shape == out.pan_seg.shape == (341, 512)
    assert set(np.unique(out.sem_seg)) <= set(range(7))  # nearest: labels never mixed
    out = ResizeScale(min_scale=2.0, max_scale=2.0, target=(1024, 1024))(_sample(400, 600), np.random.default_rng(0))
    assert out.image.shape == (1365, 2048, 3)  # s = min(2048 / 400, 2048 / 600) = 3.413


def test_lsj_recipe_gives_fixed_size_crops_of_the_coco_presets():
    cfg = get_preset("mask2former_r50_coco_panoptic")
    assert cfg.data.recipe == "lsj" and tuple(cfg.data.crop_size) == (1024, 1024)
    transform = train_transform(cfg.data, ignore_label=255)
    rng = np.random.default_rng(1)
    padded = cropped = 0
    for _ in range(12):
        out = transform(_sample(480, 640), rng)
        assert out.image.shape == (1024, 1024, 3) and out.sem_seg.shape == out.pan_seg.shape == (1024, 1024)
        void = out.sem_seg == 255
        assert (out.pan_seg[void] == 0).all() and (out.image[void] == 128).all()
        padded += bool(void.any())
        cropped += not void.any()
    assert padded and cropped  # scales 0.1-2.0 of 1024 on a 480 x 640 image: both small (padded) and large (cropped)
