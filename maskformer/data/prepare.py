"""`maskformer prepare DATASET --root ...`: convert raw downloads into the training formats (reference section 7)."""

from __future__ import annotations

import pickle
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .. import io as fmt
from ..io import DatasetError
from . import meta as builtin
from .coco_panoptic import ADE_SPLITS
from .dataset import paint_semantic
from .semantic import find_dir

Log = Callable[[str], None]


def prepare_ade20k(root: str | Path, log: Log = print) -> Path:
    """ADEChallengeData2016 annotations -> annotations_detectron2 (reduce zero label with uint8 wrap)."""
    base = find_dir([Path(root) / "ADEChallengeData2016", Path(root)], "ADEChallengeData2016 folder")
    for split in ADE_SPLITS:
        src = base / "annotations" / split
        if not src.is_dir():
            continue
        files = fmt.list_files(src, (".png",))
        for f in files:
            labels = fmt.read_label(f).astype(np.uint8) - np.uint8(1)  # 0 (unlabelled) wraps to 255 = ignore
            fmt.write_label(base / "annotations_detectron2" / split / f.name, labels)
        log(f"ade20k: {split}: {len(files)} label maps -> {base / 'annotations_detectron2' / split}")
    return base


def read_mat_labels(path: Path) -> np.ndarray:
    """Label array S [h, w] of a COCO-Stuff .mat file (MATLAB v5 with scipy, v7.3/HDF5 with h5py, transposed)."""
    import scipy.io

    try:
        return np.asarray(scipy.io.loadmat(str(path))["S"])
    except NotImplementedError:  # MATLAB v7.3 is HDF5
        try:
            import h5py
        except ImportError:
            raise DatasetError(f"{path}: MATLAB v7.3 (HDF5) file; `pip install h5py` to read it") from None
        with h5py.File(path, "r") as f:
            return np.array(f["S"]).T
    except (ValueError, KeyError, OSError) as e:
        raise DatasetError(f"{path}: cannot read the label array 'S' ({type(e).__name__}: {e})") from None


def prepare_coco_stuff_10k(root: str | Path, log: Log = print) -> Path:
    """coco_stuff_10k/{imageLists,images,annotations} -> images_detectron2 + annotations_detectron2 with labels
    uint8(S - 2) (1 = unlabeled -> 255)."""
    base = find_dir([Path(root, "coco", "coco_stuff_10k"), Path(root, "coco_stuff_10k"), root], "coco_stuff_10k folder")
    for split in ("train", "test"):
        names = fmt.read_names(base / "imageLists" / f"{split}.txt")
        for name in names:
            image = base / "images" / f"{name}.jpg"
            img_dir = base / "images_detectron2" / split
            img_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(image, img_dir / image.name)
            s = read_mat_labels(base / "annotations" / f"{name}.mat").astype(np.uint8) - np.uint8(2)
            h, w = fmt.image_size(image)
            if s.shape != (h, w):
                raise DatasetError(f"{base / 'annotations' / (name + '.mat')}: labels {s.shape} vs image {(h, w)}")
            fmt.write_label(base / "annotations_detectron2" / split / f"{name}.png", s)
        log(f"coco_stuff_10k: {split}: {len(names)} images")
    return base


def ade_full_class_mask(seg_png: Path) -> np.ndarray:
    """int32 [h, w] ADE20K class index (R // 10) * 256 + G of a *_seg.png."""
    rgb = fmt.read_image(seg_png).astype(np.int32)
    return rgb[..., 0] // 10 * 256 + rgb[..., 1]


def ade_full_size(h: int, w: int, short: int = 512) -> tuple[int, int] | None:
    """New (h, w) when the short side exceeds `short` (Python round, as the official script), else None."""
    if w >= h > short:
        return short, round(w / float(h) * short)
    if h >= w > short:
        return round(h / float(w) * short), short
    return None


def _resize_cv2_like(img: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """cv2.resize semantics: INTER_LINEAR (half-pixel centres, no antialias) or INTER_NEAREST (floor)."""
    x = torch.from_numpy(np.array(img)).double()
    x = x.permute(2, 0, 1)[None] if x.ndim == 3 else x[None, None]  # [1, C, h, w]
    kw = {"align_corners": False} if mode == "bilinear" else {}
    y = F.interpolate(x, size=size, mode=mode, **kw)[0]
    y = y.permute(1, 2, 0) if img.ndim == 3 else y[0]
    return (y.round().clamp(0, 255).to(torch.uint8) if img.ndim == 3 else y.to(torch.int32)).numpy()


def derive_ade_full_categories(index: dict, base: Path) -> list[dict]:
    """Classes present in both training and validation images, ordered by the number of images containing them.

    Official checkpoints use the official trainIds (pass them with --categories); this fallback only needs the
    index file and reproduces the rule "the classes present in both splits".
    """
    seen = {"training": Counter(), "validation": Counter()}  # class -> number of images containing it
    for folder, name in zip(index["folder"], index["filename"]):
        split = "validation" if name.split("_")[1] == "val" else "training"
        classes = np.unique(ade_full_class_mask(base.parent / folder / name.replace(".jpg", "_seg.png")))
        seen[split].update(classes.tolist())
    both = [c for c in seen["training"] if c in seen["validation"] and c != 0]
    both.sort(key=lambda c: (-(seen["training"][c] + seen["validation"][c]), c))
    names = list(index.get("objectnames", []))
    name = lambda c: str(names[c - 1]) if 0 < c <= len(names) else f"class_{c}"  # noqa: E731
    return [{"id": c, "trainId": t, "name": name(c)} for t, c in enumerate(both)]


def prepare_ade20k_full(root: str | Path, categories: str | Path | None = None, log: Log = print) -> Path:
    """ADE20K_2021_17_01 -> images_detectron2/{split}/*.jpg + annotations_detectron2/{split}/*.tif (uint16 trainIds,
    65535 = ignore), short side capped at 512; the split comes from the file name (*_val_*)."""
    base = find_dir([Path(root) / "ADE20K_2021_17_01", root], "ADE20K_2021_17_01 folder")
    index = pickle.loads((base / "index_ade20k.pkl").read_bytes())
    cats = fmt.load_json(categories) if categories else derive_ade_full_categories(index, base)
    if not cats:
        raise DatasetError(f"{base / 'index_ade20k.pkl'}: no classes found (none present in both splits?)")
    train_ids = np.full(1 << 16, 65535, np.uint16)  # ADE class index (< 26 * 256) -> trainId, else ignore
    train_ids[[int(c["id"]) for c in cats]] = [int(c["trainId"]) for c in cats]
    for folder, name in zip(index["folder"], index["filename"]):
        split = "validation" if name.split("_")[1] == "val" else "training"
        img = fmt.read_image(base.parent / folder / name)
        lab = ade_full_class_mask(base.parent / folder / name.replace(".jpg", "_seg.png"))
        size = ade_full_size(*img.shape[:2])
        if size is not None:
            img, lab = _resize_cv2_like(img, size, "bilinear"), _resize_cv2_like(lab, size, "nearest")
        (base / "images_detectron2" / split).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(base / "images_detectron2" / split / name)
        fmt.write_label(base / "annotations_detectron2" / split / name.replace(".jpg", ".tif"), train_ids[lab])
    fmt.save_json(base / "ade20k_full_categories.json", cats)
    log(f"ade20k_full: {len(index['filename'])} images, {len(cats)} classes -> {base}")
    return base


def new_segment_ids(palette: list[tuple[int, int, int]], seed: int) -> Callable[[int], int]:
    """category -> a new segment id, unique in the image (panopticapi IdGenerator's rule): a category's colour while
    free, else a random (seeded) jitter of it; id = R + 256 G + 256^2 B."""
    rng, taken = np.random.default_rng(seed), set()

    def next_id(category: int) -> int:
        color = tuple(int(v) for v in palette[category])
        while color in taken:
            color = tuple(int(v) for v in np.clip(np.array(palette[category]) + rng.integers(-30, 31, 3), 0, 255))
        taken.add(color)
        return int(fmt.rgb2id(np.array(color)))

    return next_id


def ade_panoptic_image(sem: np.ndarray, ins: np.ndarray, meta, seed: int, path: Path):
    """(segment ids int32 [h, w], segments_info) from sem (class 0..149 / 255) and the instance PNG [h, w, 3]:
    one segment per stuff class, then the thing instances on top."""
    ids = np.zeros(sem.shape, np.int32)
    new_id = new_segment_ids(meta.palette, seed)
    inst_to_sem = [t - 1 for t in builtin.ADE20K_PANOPTIC_THING_IDS]
    ins_cat, ins_id = ins[..., 0].astype(np.int32) - 1, ins[..., 1]
    parts = [(int(c), sem == c) for c in np.unique(sem) if c != 255 and not meta.is_thing[c]]  # (class, mask)
    for k in np.setdiff1d(ins_id, 0):  # instance numbers, 0 = none
        m = ins_id == k
        cats = np.unique(ins_cat[m])
        if len(cats) != 1 or not 0 <= cats[0] < len(inst_to_sem):
            raise DatasetError(f"{path}: instance {k} has instance classes {cats.tolist()} (expected one of 1..100)")
        parts.append((inst_to_sem[cats[0]], m))
    segments = [{"id": new_id(c), "category_id": c, "iscrowd": 0} for c, _ in parts]
    for s, (_, m) in zip(segments, parts):
        ids[m] = s["id"]
    area = {s["id"]: int((ids == s["id"]).sum()) for s in segments}
    segments = [dict(s, area=area[s["id"]], bbox=fmt.mask_bbox(ids == s["id"])) for s in segments if area[s["id"]] > 0]
    return ids, segments


def prepare_ade20k_panoptic(root: str | Path, log: Log = print) -> Path:
    """ADEChallengeData2016 semantic + annotations_instance -> ade20k_panoptic_{train,val}/ PNGs + JSON."""
    base = prepare_ade20k(root, log=log)  # the reader also needs annotations_detectron2
    meta = builtin.ade20k_panoptic()
    cats = [
        {"id": i, "name": n, "isthing": int(t), "color": list(c)}
        for i, (n, t, c) in enumerate(zip(meta.class_names, meta.is_thing, meta.palette))
    ]
    for split, short in ADE_SPLITS.items():
        if not (base / "annotations_instance" / split).is_dir():
            continue
        images, annotations = [], []
        for i, f in enumerate(fmt.list_files(base / "images" / split, (".jpg",))):
            sem = fmt.read_label(base / "annotations_detectron2" / split / f"{f.stem}.png")
            ins_path = base / "annotations_instance" / split / f"{f.stem}.png"
            ids, segments = ade_panoptic_image(sem, fmt.read_image(ins_path), meta, seed=i, path=ins_path)
            fmt.write_panoptic(base / f"ade20k_panoptic_{short}" / f"{f.stem}.png", ids)
            images.append({"id": f.stem, "file_name": f.name, "height": sem.shape[0], "width": sem.shape[1]})
            annotations.append({"image_id": f.stem, "file_name": f"{f.stem}.png", "segments_info": segments})
        data = {"images": images, "annotations": annotations, "categories": cats}
        fmt.save_json(base / f"ade20k_panoptic_{short}.json", data)
        log(f"ade20k_panoptic: {split}: {len(images)} images -> {base / f'ade20k_panoptic_{short}'}")
    return base


def prepare_coco_panoptic_semantic(root: str | Path, splits=("train2017", "val2017"), log: Log = print) -> Path:
    """COCO panoptic PNGs -> panoptic_semseg_{split}/*.png: each segment (crowd too) painted with its contiguous id
    (= position in the JSON categories), VOID -> 255."""
    root = Path(root)
    base = root / "coco" if (root / "coco" / "annotations").is_dir() else root
    for split in splits:
        json_file = base / "annotations" / f"panoptic_{split}.json"
        if not json_file.is_file():
            continue
        data = fmt.load_json(json_file)
        contiguous = {int(c["id"]): i for i, c in enumerate(data["categories"])}
        for ann in data["annotations"]:
            ids = fmt.read_panoptic(base / f"panoptic_{split}" / ann["file_name"])
            seg_ids = np.array([s["id"] for s in ann["segments_info"]], dtype=np.int64)
            classes = np.array([contiguous[s["category_id"]] for s in ann["segments_info"]], dtype=np.int64)
            sem = paint_semantic(ids, seg_ids, classes, 255)[0]
            fmt.write_label(base / f"panoptic_semseg_{split}" / ann["file_name"], sem.astype(np.uint8))
        log(f"coco_panoptic_semantic: {split}: {len(data['annotations'])} label maps")
    return base


PREPARERS = {
    "ade20k": prepare_ade20k,
    "coco_stuff_10k": prepare_coco_stuff_10k,
    "ade20k_full": prepare_ade20k_full,
    "ade20k_panoptic": prepare_ade20k_panoptic,
    "coco_panoptic_semantic": prepare_coco_panoptic_semantic,
}
