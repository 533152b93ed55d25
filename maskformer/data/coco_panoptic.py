"""Readers of the COCO panoptic format (JSON + PNG, id = R + 256 G + 256^2 B): COCO, ADE20K panoptic, users'
own panoptic data and the built-in synthetic dataset. Contiguous class id = position in the JSON `categories`.
"""

from __future__ import annotations

from pathlib import Path

from ..io import DatasetError, load_json
from ..structures import DatasetMeta, default_palette
from .dataset import Record, SegDataset
from .semantic import find_dir


def meta_from_categories(categories: list[dict], *, name: str, source: str, ignore_label: int = 255) -> DatasetMeta:
    """DatasetMeta from a COCO `categories` list (id, name, isthing, optional color), in list order."""
    if not categories:
        raise DatasetError(f"{source}: the JSON has no categories")
    try:
        names = [str(c["name"]) for c in categories]
        ids = [int(c["id"]) for c in categories]
        things = [bool(c.get("isthing", 0)) for c in categories]
    except (KeyError, TypeError, ValueError) as e:
        raise DatasetError(f"{source}: malformed categories entry ({type(e).__name__}: {e})") from None
    palette = [tuple(c["color"]) if "color" in c else p for c, p in zip(categories, default_palette(len(names)))]
    if len(set(ids)) != len(ids):
        raise DatasetError(f"{source}: duplicate category ids in the JSON")
    return DatasetMeta(name, names, is_thing=things, ignore_label=ignore_label, palette=palette, dataset_ids=ids)


def coco_panoptic_files(
    image_dir: str | Path,
    pan_dir: str | Path,
    json_file: str | Path,
    *,
    sem_dir: str | Path | None = None,
    name: str = "coco_panoptic",
    target: str = "panoptic",
    **kw,
) -> SegDataset:
    """A COCO-panoptic dataset from explicit paths (users' own panoptic data): one Record per annotation, with files,
    image entries, category ids and segment ids checked up front.

    image_dir: images named by the JSON `images[].file_name`; pan_dir: PNGs named by `annotations[].file_name`;
    sem_dir: optional semantic PNGs with the same stems (otherwise painted from the panoptic PNG).
    """
    image_dir, pan_dir, json_file = Path(image_dir), Path(pan_dir), str(json_file)
    data = load_json(json_file)
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DatasetError(
                f"{json_file}: missing key {key!r} (a COCO panoptic JSON has images, annotations, categories)"
            )
    meta = meta_from_categories(data["categories"], name=name, source=json_file)
    images = {img["id"]: img for img in data.get("images", [])}
    known = set(meta.dataset_ids)
    records = []
    for ann in data["annotations"]:
        image_id = ann["image_id"]
        if image_id not in images:
            raise DatasetError(
                f"{json_file}: annotation {ann.get('file_name')} has image_id {image_id!r} not in images"
            )
        image = image_dir / images[image_id]["file_name"]
        if not image.is_file():
            raise DatasetError(f"{image}: image file not found (listed in {json_file})")
        pan = pan_dir / ann["file_name"]
        if not pan.is_file():
            raise DatasetError(f"{pan}: panoptic PNG not found (listed in {json_file})")
        segments = ann.get("segments_info", [])
        for s in segments:
            if int(s["category_id"]) not in known:
                raise DatasetError(
                    f"{json_file}: segment {s['id']} of image {image_id!r} has unknown category id {s['category_id']}"
                    f" (not in the {len(known)} categories)"
                )
            if int(s["id"]) == 0:
                raise DatasetError(f"{json_file}: image {image_id!r} lists segment id 0, which is reserved for VOID")
        sem = Path(sem_dir, Path(ann["file_name"]).stem + ".png") if sem_dir else None
        if sem and not sem.is_file():
            raise DatasetError(f"{sem}: semantic label map not found (for {pan})")
        records.append(
            Record(str(image), str(sem) if sem else None, str(pan), list(segments), image_id, json_file=json_file)
        )
    return SegDataset(records, meta, source=json_file, target=target, **kw)


def coco_panoptic(root: str | Path, split: str, **kw) -> SegDataset:
    """The COCO panoptic layout: {split}/ (or images/{split}/) images, panoptic_{split}/ PNGs and
    annotations/panoptic_{split}.json (or panoptic_{split}.json)."""
    root = Path(root)
    base = root / "coco" if (root / "coco" / "annotations").is_dir() else root
    image_dir = find_dir([base / split, base / "images" / split], f"COCO panoptic images of split {split!r}")
    pan_dir = find_dir(
        [base / f"panoptic_{split}", base / "annotations" / f"panoptic_{split}"], f"panoptic PNGs of split {split!r}"
    )
    json_file = find_dir(
        [base / "annotations" / f"panoptic_{split}.json", base / f"panoptic_{split}.json"], "panoptic JSON", file=True
    )
    meta_file = base / "meta.json"  # written by `maskformer synth`: the dataset's name
    name = str(load_json(meta_file).get("name", "coco_panoptic")) if meta_file.is_file() else "coco_panoptic"
    return coco_panoptic_files(image_dir, pan_dir, json_file, name=name, **kw)


ADE_SPLITS = {"training": "train", "validation": "val"}  # ADE20K's splits -> the short names of their panoptic files


def ade20k_panoptic(root: str | Path, split: str, **kw) -> SegDataset:
    """ADE20K panoptic as written by `maskformer prepare ade20k_panoptic` (the official layout):
    ADEChallengeData2016/images/{split}, ade20k_panoptic_{train,val}/ + .json, annotations_detectron2/{split}."""
    base = find_dir([Path(root) / "ADEChallengeData2016", root], "ADE20K folder")
    short = ADE_SPLITS.get(split, split)
    image_dir = find_dir([base / "images" / split], f"ADE20K images of split {split!r}")
    pan_dir = find_dir([base / f"ade20k_panoptic_{short}"], f"ADE20K panoptic PNGs of split {split!r}")
    json_file = find_dir([base / f"ade20k_panoptic_{short}.json"], "panoptic JSON", file=True)
    sem_dir = base / "annotations_detectron2" / split
    return coco_panoptic_files(
        image_dir, pan_dir, json_file, sem_dir=sem_dir if sem_dir.is_dir() else None, name="ade20k_panoptic", **kw
    )
