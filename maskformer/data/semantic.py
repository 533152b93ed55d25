"""Readers of semantic-segmentation layouts, each taking a root folder: the standard datasets (reference section 7)
and users' own data (`folder`)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np

from ..io import IMAGE_EXTS, LABEL_EXTS, DatasetError, list_files, load_json, read_label, read_names
from ..structures import DatasetMeta
from . import meta as builtin
from .dataset import Record, SegDataset


def find_dir(candidates: Sequence[Path], what: str, *, file: bool = False) -> Path:
    """The first existing folder (file=True: file) among `candidates`; else an error listing every path tried."""
    for c in candidates:
        if Path(c).is_file() if file else Path(c).is_dir():
            return Path(c)
    tried = ", ".join(str(c) for c in candidates)
    raise DatasetError(f"{what} not found; looked for: {tried}")


def _by_key(folder: Path, suffixes: Sequence[str] | None, exts: Sequence[str], recursive: bool) -> dict[str, Path]:
    """{relative path without its suffix: file} for the files of `folder` ending in one of `suffixes` (default: any
    extension in `exts`)."""
    out = {}
    for path in list_files(folder, exts, recursive):
        rel = str(path.relative_to(folder))
        for s in suffixes or (path.suffix,):
            if rel.endswith(s):
                out[rel[: -len(s)]] = path
                break
    return out


def pair_by_name(
    image_dir: Path,
    label_dir: Path,
    *,
    image_suffixes: Sequence[str] | None = None,
    label_suffixes: Sequence[str] | None = None,
    recursive: bool = False,
) -> list[Record]:
    """Records pairing image_dir/REL/NAME<image suffix> with label_dir/REL/NAME<label suffix>.

    Suffixes default to any image / label extension. A missing label, or a label without an image, is an error
    naming the file.
    """
    images = _by_key(image_dir, image_suffixes, IMAGE_EXTS, recursive)
    labels = _by_key(label_dir, label_suffixes, LABEL_EXTS, recursive)
    for have, other, problem, counted in (
        (images, labels, f"no label map for this image in {label_dir}", "image(s) without a label"),
        (labels, images, f"label map has no matching image in {image_dir}", "label(s) without an image"),
    ):
        unmatched = sorted(set(have) - set(other))
        if unmatched:
            raise DatasetError(f"{have[unmatched[0]]}: {problem} ({len(unmatched)} {counted}, e.g. {unmatched[:3]})")
    if not images:
        raise DatasetError(f"{image_dir}: the dataset is empty (no images found)")
    return [Record(image=str(images[k]), sem_seg=str(labels[k]), image_id=Path(k).name) for k in sorted(images)]


def reduce_zero_label_map(lab: np.ndarray, ignore_label: int = 255) -> np.ndarray:
    """Raw value 0 -> ignore, c -> c - 1 (ADE20K's "reduce zero label"; the same as uint8 wrap for ignore 255)."""
    out = lab.astype(np.int32) - 1
    out[lab == 0] = ignore_label
    return out


def ade20k(root: str | Path, split: str, **kw) -> SegDataset:
    """ADEChallengeData2016: images/{split}/*.jpg with annotations_detectron2/{split}/*.png (prepared, 255 =
    ignore) when present, else the raw annotations/{split}/*.png (0 -> ignore, c -> c-1 on the fly)."""
    base = find_dir([Path(root) / "ADEChallengeData2016", root], "ADE20K folder")
    image_dir = find_dir([base / "images" / split], f"ADE20K images of split {split!r}")
    prepared, raw = base / "annotations_detectron2" / split, base / "annotations" / split
    label_dir = find_dir([prepared, raw], f"ADE20K annotations of split {split!r}")
    label_fn = reduce_zero_label_map if label_dir == raw else None
    records = pair_by_name(image_dir, label_dir)
    return SegDataset(records, builtin.ade20k_150(), source=str(base), label_fn=label_fn, **kw)


def ade20k_full(root: str | Path, split: str, **kw) -> SegDataset:
    """ADE20K_2021_17_01 prepared by `maskformer prepare ade20k_full`: images_detectron2/{split}/*.jpg and
    annotations_detectron2/{split}/*.tif (uint16, 65535 = ignore); class names from ade20k_full_categories.json
    when present."""
    base = find_dir([Path(root) / "ADE20K_2021_17_01", root], "ADE20K-Full folder")
    image_dir = find_dir([base / "images_detectron2" / split], f"ADE20K-Full images of split {split!r}")
    label_dir = find_dir([base / "annotations_detectron2" / split], f"ADE20K-Full labels of split {split!r}")
    cats_file = base / "ade20k_full_categories.json"
    cats = sorted(load_json(cats_file), key=lambda c: c["trainId"]) if cats_file.is_file() else []
    meta = builtin.ade20k_full([c["name"] for c in cats], [int(c["id"]) for c in cats])  # no file: generic names
    records = pair_by_name(image_dir, label_dir, label_suffixes=(".tif", ".tiff"))
    return SegDataset(records, meta, source=str(base), **kw)


_COCO_STUFF_SPLITS = {"train2014": "train", "test2014": "test", "val": "test", "validation": "test"}


def coco_stuff(root: str | Path, split: str, **kw) -> SegDataset:
    """COCO-Stuff-10k prepared by `maskformer prepare coco_stuff_10k`: images_detectron2/{train,test}/*.jpg and
    annotations_detectron2/{train,test}/*.png (contiguous 0..170, 255 = ignore)."""
    base = find_dir([Path(root, "coco", "coco_stuff_10k"), Path(root, "coco_stuff_10k"), root], "COCO-Stuff-10k folder")
    names = [split, _COCO_STUFF_SPLITS.get(split, split)]
    image_dir = find_dir([base / "images_detectron2" / s for s in names], f"COCO-Stuff images of split {split!r}")
    label_dir = find_dir([base / "annotations_detectron2" / s for s in names], f"COCO-Stuff labels of {split!r}")
    return SegDataset(pair_by_name(image_dir, label_dir), builtin.coco_stuff_171(), source=str(base), **kw)


def cityscapes(root: str | Path, split: str, **kw) -> SegDataset:
    """Cityscapes: leftImg8bit/{split}/CITY/*_leftImg8bit.png with gtFine/{split}/CITY/*_gtFine_labelTrainIds.png
    (made by cityscapesScripts createTrainIdLabelImgs), 19 classes, ignore 255."""
    base = find_dir([Path(root) / "cityscapes", root], "Cityscapes folder")
    image_dir = find_dir([base / "leftImg8bit" / split], f"Cityscapes images of split {split!r}")
    label_dir = find_dir([base / "gtFine" / split], f"Cityscapes gtFine of split {split!r}")
    suffixes = dict(image_suffixes=("_leftImg8bit.png",), label_suffixes=("_gtFine_labelTrainIds.png",))
    records = pair_by_name(image_dir, label_dir, **suffixes, recursive=True)
    return SegDataset(records, builtin.cityscapes_19(), source=str(base), **kw)


def mapillary(root: str | Path, split: str, **kw) -> SegDataset:
    """Mapillary Vistas v1.2: {split}/images/*.jpg with {split}/labels/*.png, 65 classes, 65 = ignore."""
    base = find_dir([Path(root) / "mapillary_vistas", root], "Mapillary Vistas folder")
    image_dir = find_dir([base / split / "images"], f"Mapillary images of split {split!r}")
    label_dir = find_dir([base / split / "labels"], f"Mapillary labels of split {split!r}")
    return SegDataset(pair_by_name(image_dir, label_dir), builtin.mapillary_65(), source=str(base), **kw)


def read_class_spec(root: Path) -> dict:
    """{"classes", "ignore_label"?, "reduce_zero_label"?, "name"?} from ROOT/meta.json or ROOT/classes.txt."""
    if (root / "meta.json").is_file():
        spec = load_json(root / "meta.json")
        if not isinstance(spec.get("classes"), list) or not spec["classes"]:
            raise DatasetError(f"{root / 'meta.json'}: needs a non-empty list 'classes'")
        return spec
    if (root / "classes.txt").is_file():
        names = read_names(root / "classes.txt")
        if not names:
            raise DatasetError(f"{root / 'classes.txt'}: no class names (expected one per line)")
        return {"classes": names}
    raise DatasetError(
        f"{root}: no class-names file; write classes.txt (one class name per line, line i = label value i) or "
        'meta.json ({"classes": [...], "ignore_label": 255})'
    )


def detect_reduce_zero_label(label_files: list[str], num_classes: int, ignore_label: int, source: str) -> bool:
    """The label convention from up to 16 evenly spaced label files; raise with an explanation when it is ambiguous."""
    idx = np.unique(np.linspace(0, len(label_files) - 1, min(16, len(label_files))).astype(int))
    values = np.unique(np.concatenate([np.unique(read_label(label_files[i])) for i in idx]))
    vals = values[values != ignore_label]
    top = int(vals.max()) if len(vals) else -1
    if num_classes == 2 and set(values.tolist()) <= {0, 255} and 255 in values and ignore_label == 255:
        raise DatasetError(
            f"{source}: the label maps hold only 0 and 255, and 255 is the ignore value, so class 1 would never be "
            "learned. If 255 marks the foreground, re-save the masks with value 1 (mask // 255); if 255 really means "
            "'not annotated', add a third class or set the ignore value explicitly in meta.json."
        )
    if top == num_classes:
        raise DatasetError(
            f"{source}: label values run up to {top} but there are {num_classes} classes (0..{num_classes - 1}). "
            "If 0 means 'unlabeled' and the classes are 1..K, set reduce_zero_label (\"reduce_zero_label\": true in "
            "meta.json, or data.reduce_zero_label=true): 0 -> ignore, c -> c-1. If 0 is a real class, the class "
            "list is missing one name."
        )
    return False


def folder(
    root: str | Path,
    split: str,
    *,
    ignore_label: int | None = None,
    default_ignore_label: int = 255,
    reduce_zero_label: bool | None = None,
    **kw,
) -> SegDataset:
    """A folder dataset: ROOT/images/{split}/ and ROOT/labels/{split}/ (split may be "") + ROOT/classes.txt (one name
    a line) or ROOT/meta.json {"classes", ...} (layout in the README, "Your own data"; also CamVid's).

    ignore_label / reduce_zero_label override meta.json; None = meta.json, else default_ignore_label / detection on a
    few label files: a map whose values run 1..K for K classes, or binary masks saved as 0/255 with 255 as the ignore
    value, is ambiguous and stops with an explanation of the two possible fixes.
    """
    root = Path(root)
    spec = read_class_spec(root)
    image_dir = find_dir([root / "images" / split, root / split / "images"], f"images of split {split!r}")
    labels = [root / "labels" / split, root / "annotations" / split, root / split / "labels"]
    label_dir = find_dir(labels, f"labels of split {split!r}")
    records = pair_by_name(image_dir, label_dir)
    ignore = int(spec.get("ignore_label", default_ignore_label) if ignore_label is None else ignore_label)
    meta = DatasetMeta(str(spec.get("name", root.name)), [str(c) for c in spec["classes"]], ignore_label=ignore)
    reduce = spec.get("reduce_zero_label") if reduce_zero_label is None else reduce_zero_label
    if reduce is None:
        reduce = detect_reduce_zero_label([r.sem_seg for r in records], meta.num_classes, ignore, str(label_dir))
    label_fn = partial(reduce_zero_label_map, ignore_label=ignore) if reduce else None
    return SegDataset(records, meta, source=str(root), label_fn=label_fn, **kw)
