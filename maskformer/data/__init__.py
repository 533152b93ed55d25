"""Data layer: readers of the standard on-disk formats (the FORMATS table), the official augmentation recipes,
resumable loaders. This package never imports maskformer.modeling.
"""

from __future__ import annotations

from pathlib import Path

from ..io import DatasetError
from .coco_panoptic import ade20k_panoptic, coco_panoptic, coco_panoptic_files
from .dataset import Record, SegDataset
from .loader import ResumableLoader, ResumableSampler, build_loader, collate
from .recipes import eval_transform, train_transform
from .semantic import ade20k, ade20k_full, cityscapes, coco_stuff, folder, mapillary
from .transforms import Sample

# format name -> reader(root, split, **kw): each reader under its own name, plus two aliases
FORMATS = {
    reader.__name__: reader
    for reader in (ade20k, ade20k_full, coco_stuff, cityscapes, mapillary, coco_panoptic, ade20k_panoptic, folder)
}
FORMATS.update(camvid=folder, synthetic=coco_panoptic)


def build_dataset(
    data_cfg,
    split: str,
    train: bool,
    root: str | Path | None = None,
    *,
    test_size: tuple[int, int] | None = None,
    target: str | None = None,
) -> SegDataset:
    """The dataset of `split` in format `data_cfg.format` under `root` (default data_cfg.root).

    train=True attaches the recipe `data_cfg.recipe`; otherwise the image is resized to test_size = (short side,
    max size) when given (e.g. (cfg.inference.min_size_test, cfg.inference.max_size_test)) and the target stays at
    the original resolution. target: "semantic" | "panoptic"; default panoptic for the "panoptic"/"detr" recipes.
    """
    if data_cfg.format not in FORMATS:
        raise KeyError(f"unknown data.format {data_cfg.format!r}; valid: {', '.join(sorted(FORMATS))}")
    root = str(root or data_cfg.root)
    if not root:
        hint = " (write one with `maskformer synth --out DIR`)" if data_cfg.format == "synthetic" else ""
        raise DatasetError(f"data.root is empty: set data.root=/path/to/the/dataset{hint}")
    if not Path(root).is_dir():
        raise DatasetError(f"{root}: dataset root folder not found (data.format={data_cfg.format})")
    target = target or ("panoptic" if data_cfg.recipe in ("panoptic", "detr") else "semantic")
    kw = dict(target=target, train=train)
    if FORMATS[data_cfg.format] is folder:
        reduce = {"auto": None, "true": True, "false": False}[data_cfg.reduce_zero_label]  # validated by Config
        kw.update(default_ignore_label=data_cfg.ignore_label, reduce_zero_label=reduce)
    ds = FORMATS[data_cfg.format](root, split, **kw)
    if train:
        ds.transform = train_transform(data_cfg, ds.meta.ignore_label)
    elif test_size is not None:
        ds.transform = eval_transform(*test_size)
    return ds


__all__ = [
    "FORMATS", "DatasetError", "Record", "ResumableLoader", "ResumableSampler", "Sample", "SegDataset", "ade20k",
    "ade20k_full", "ade20k_panoptic", "build_dataset", "build_loader", "cityscapes", "coco_panoptic",
    "coco_panoptic_files", "coco_stuff", "collate", "folder", "mapillary", "eval_transform", "train_transform"
]  # fmt: skip
