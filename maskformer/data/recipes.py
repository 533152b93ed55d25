"""The official augmentation recipes (reference section 6.3) assembled from transforms.py: "semantic" and "panoptic"
(detectron2's semantic and ADE20K panoptic mappers), "detr" (COCO panoptic), "lsj" (Mask2Former's COCO jitter)."""

from __future__ import annotations

import sys

from . import transforms as T
from .color import ColorAugSSD

RECIPES = ("semantic", "panoptic", "detr", "lsj")


def semantic_recipe(data_cfg, ignore_label: int) -> T.Compose:
    """The semantic / ADE20K-panoptic training pipeline from a DataConfig."""
    crop = tuple(data_cfg.crop_size)
    resize = T.ResizeShortestEdge(sizes=data_cfg.min_size_train, max_size=data_cfg.max_size_train)
    area = data_cfg.single_category_max_area
    steps = [resize, T.RandomCrop(crop_size=crop, single_category_max_area=area, ignore_label=ignore_label)]
    if data_cfg.color_aug_ssd:
        steps.append(ColorAugSSD())
    steps.append(T.RandomFlip(prob=0.5))
    if data_cfg.pad_size > 0:
        if max(crop) > data_cfg.pad_size:
            raise ValueError(f"data.crop_size {crop} is larger than data.pad_size {data_cfg.pad_size}")
        steps.append(T.PadTo(size=(data_cfg.pad_size, data_cfg.pad_size), ignore_label=ignore_label))
    return T.Compose(steps)


def detr_recipe(data_cfg) -> T.RandomChoice:
    """DETR's COCO recipe (DETRPanopticDatasetMapper): two equally likely branches, both starting with a flip."""
    flip = T.RandomFlip(prob=0.5)
    resize = T.ResizeShortestEdge(sizes=data_cfg.min_size_train, max_size=data_cfg.max_size_train)
    extra = [ColorAugSSD()] if data_cfg.color_aug_ssd else []
    crop_resize = T.ResizeShortestEdge(sizes=(400, 500, 600), max_size=sys.maxsize)
    crop = T.RandomCrop(crop_size=(384, 600), crop_type="absolute_range")
    return T.RandomChoice(T.Compose([flip, resize, *extra]), T.Compose([flip, crop_resize, crop, resize, *extra]))


def lsj_recipe(data_cfg, ignore_label: int) -> T.Compose:
    """Mask2Former's COCO large-scale jitter (COCO LSJ mappers): a fixed crop_size output."""
    crop = tuple(data_cfg.crop_size)
    resize = T.ResizeScale(min_scale=0.1, max_scale=2.0, target=crop)
    pad = T.PadTo(size=crop, ignore_label=ignore_label)
    return T.Compose([T.RandomFlip(prob=0.5), resize, T.RandomCrop(crop_size=crop), pad])


def train_transform(data_cfg, ignore_label: int):
    """The training transform named by data_cfg.recipe."""
    if data_cfg.recipe in ("semantic", "panoptic"):
        return semantic_recipe(data_cfg, ignore_label)
    if data_cfg.recipe == "detr":
        return detr_recipe(data_cfg)
    if data_cfg.recipe == "lsj":
        return lsj_recipe(data_cfg, ignore_label)
    raise KeyError(f"unknown data.recipe {data_cfg.recipe!r}; valid: {', '.join(RECIPES)}")


def eval_transform(min_size: int, max_size: int) -> T.ResizeShortestEdge:
    """Test-time resize: short side to `min_size`, long side at most `max_size`."""
    return T.ResizeShortestEdge(sizes=(min_size,), max_size=max_size)
