"""Reading and writing the standard on-disk formats: RGB images, label maps (PNG/TIFF), panoptic PNGs, JSON.

Every reader turns a failure into a `DatasetError` naming the file and the problem, instead of a deep stack trace.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
LABEL_EXTS = (".png", ".tif", ".tiff")


class DatasetError(ValueError):
    """Bad dataset input; the message names the file (or folder) and the problem."""


def _open(path: str | Path, what: str) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: {what} file not found")
    try:
        img = Image.open(path)
        img.load()  # decode now so a truncated/corrupt file fails here, with its name
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        problem = f"cannot decode {what} ({type(e).__name__}: {e}); the file is corrupt or truncated"
        raise DatasetError(f"{path}: {problem}") from None
    return img


def read_image(path: str | Path) -> np.ndarray:
    """An RGB image as uint8 [h, w, 3], EXIF orientation applied (as detectron2's read_image does)."""
    img = _open(path, "image")
    img = ImageOps.exif_transpose(img)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img)


def image_size(path: str | Path) -> tuple[int, int]:
    """(h, w) of an image without decoding the pixels."""
    try:
        with Image.open(path) as img:
            w, h = img.size
    except (OSError, UnidentifiedImageError) as e:
        raise DatasetError(f"{path}: cannot read image header ({e})") from None
    return h, w


def read_label(path: str | Path) -> np.ndarray:
    """A single-channel label map (PNG L/P/I;16/I or TIFF) as int32 [h, w]."""
    img = _open(path, "label")
    if img.mode in ("RGB", "RGBA", "LA"):
        raise DatasetError(
            f"{path}: label map has mode {img.mode} (colour); expected one channel of class ids "
            "(8-bit L/P, 16-bit I;16 or 32-bit I)"
        )
    arr = np.asarray(img)
    if arr.ndim != 2:
        raise DatasetError(f"{path}: label map has shape {arr.shape}; expected [h, w]")
    return arr.astype(np.int32, copy=False)


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    """Panoptic segment ids from an RGB PNG array [h, w, 3]: id = R + 256 G + 256^2 B, as int32 [h, w]."""
    rgb = rgb.astype(np.int32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """Inverse of rgb2id: int [h, w] -> uint8 [h, w, 3]."""
    ids = np.asarray(ids, dtype=np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)


def read_panoptic(path: str | Path) -> np.ndarray:
    """A COCO-format panoptic PNG as segment ids int32 [h, w] (0 = VOID)."""
    img = _open(path, "panoptic PNG")
    if img.mode != "RGB":
        raise DatasetError(f"{path}: panoptic PNG has mode {img.mode}; expected RGB (id = R + 256 G + 256^2 B)")
    return rgb2id(np.asarray(img))


def _save_kwargs(path: str | Path, quality: int, compress_level: int) -> dict:
    ext = str(path).lower()
    if ext.endswith((".jpg", ".jpeg")):
        return {"quality": quality}
    return {"compress_level": compress_level} if ext.endswith(".png") else {}


def write_image(path: str | Path, image: np.ndarray, quality: int = 95, compress_level: int = 6) -> None:
    """Write uint8 [h, w, 3] RGB; the format follows the extension."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    kwargs = _save_kwargs(path, quality, compress_level)
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(path, **kwargs)


def write_label(path: str | Path, label: np.ndarray, compress_level: int = 6) -> None:
    """Write a label map: uint8 PNG when values fit in 0..255, else uint16 (PNG or TIFF by extension)."""
    label = np.asarray(label)
    if label.min(initial=0) < 0 or label.max(initial=0) > 65535:
        raise ValueError(f"{path}: label values must lie in 0..65535, got {label.min()}..{label.max()}")
    dtype = np.uint8 if label.max(initial=0) <= 255 and not str(path).lower().endswith((".tif", ".tiff")) else np.uint16
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(label, dtype=dtype)).save(path, **_save_kwargs(path, 95, compress_level))


def write_panoptic(path: str | Path, ids: np.ndarray, compress_level: int = 6) -> None:
    """Write segment ids int [h, w] as a COCO-format RGB PNG."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(id2rgb(ids)).save(path, compress_level=compress_level)


def load_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: JSON file not found")
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: invalid JSON ({e})") from None


def save_json(path: str | Path, obj) -> None:
    """Write JSON atomically (temp file + rename), so an interrupted write never leaves a half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def list_files(folder: str | Path, exts: tuple[str, ...], recursive: bool = False) -> list[Path]:
    """Sorted files under `folder` whose suffix (lower-case) is in `exts`."""
    folder = Path(folder)
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if p.is_file() and p.suffix.lower() in exts)
