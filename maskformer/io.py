"""Every file format maskformer reads or writes: images, label PNGs, COCO panoptic PNG + JSON, COCO RLE, JSON.

One dtype convention in memory (what readers return and writers take; writers also take torch tensors, by duck
typing: torch is never imported here):
- image: uint8 [H, W, 3] RGB, EXIF orientation applied (as detectron2's read_image);
- label map: int32 [H, W] class ids (ignore value included); written 8-bit when the values fit, else 16-bit;
- panoptic id map: int32 [H, W], id = R + 256 G + 256^2 B of the COCO panoptic PNG, 0 = VOID;
- mask: bool [H, W]; COCO RLE {"size": [H, W], "counts": str}: column-major runs starting with 0s, 5-bit chars.
COCO panoptic JSON: "annotations" [{"image_id", "file_name", "segments_info": [{"id", "category_id", "area", "bbox",
"iscrowd"}]}] + "categories" [{"id", "name", "isthing", "color"}] (dataset ids); instance results: [{"image_id",
"category_id", "segmentation": RLE, "score", "bbox", "area"}]. Every write is atomic (temp file + os.replace); every
read error is a `FormatError` naming the file and the problem.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import json
import math
import os
import struct
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # Pillow is imported where used: PNGs that a fast decoder decodes (maskformer score) need none
    from PIL import Image

    from maskformer.inference import Instances
    from maskformer.structures import DatasetMeta

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
LABEL_EXTS = (".png", ".tif", ".tiff")


class FormatError(ValueError):
    """A file (or folder) that is missing or not in the expected format; the message names it and the problem."""


DatasetError = FormatError  # the name maskformer.data raises it under (bad dataset input)


def to_numpy(x) -> np.ndarray:
    """Tensor (any device) or array-like -> numpy array (no copy for numpy input or CPU tensors)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


# ------------------------------------------------------------------------------------------------ reading
def open_image(path: str | Path, what: str = "image") -> Image.Image:
    """The decoded Pillow image, mode unchanged; decoding happens here, so a bad file fails with its name."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: {what} file not found")
    try:
        img = Image.open(path)
        img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        problem = f"cannot read the image ({type(e).__name__}: {e}); the file is corrupt or truncated"
        raise FormatError(f"{path}: {problem}") from None
    return img


def image_size(path: str | Path) -> tuple[int, int]:
    """(h, w) of an image from its header, without decoding the pixels."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            w, h = img.size
    except OSError as e:
        raise FormatError(f"{path}: cannot read the image header ({e})") from None
    return h, w


def read_image(path: str | Path) -> np.ndarray:
    """An image file -> uint8 [H, W, 3] RGB, EXIF orientation applied."""
    from PIL import ImageOps

    img = ImageOps.exif_transpose(open_image(path))
    return np.asarray(img if img.mode == "RGB" else img.convert("RGB"))


def read_label(path: str | Path) -> np.ndarray:
    """A one-channel label map (PNG L/P/I;16/I or TIFF) -> int32 [H, W]; a colour image is an error."""
    fast = _fast_png(path, _GRAY_PNG)  # 8-bit grey: uint8 [H, W]
    if fast is not None:
        return fast.astype(np.int32)
    img = open_image(path, "label map")
    arr = np.asarray(img)
    if arr.ndim != 2 or arr.dtype.kind not in "biu":
        raise FormatError(
            f"{path}: a label map must have one channel of class ids, got mode {img.mode}; "
            "expected one channel (8-bit L/P, 16-bit I;16 or 32-bit I)"
        )
    return arr.astype(np.int32, copy=False)


def read_panoptic(path: str | Path) -> np.ndarray:
    """A COCO panoptic PNG -> segment ids int32 [H, W] (0 = VOID)."""
    rgb = _fast_png(path, _COLOUR_PNG)
    if rgb is None:
        img = open_image(path, "panoptic PNG")
        if img.mode not in ("RGB", "RGBA", "P"):
            raise FormatError(f"{path}: panoptic PNG has mode {img.mode}; expected RGB (id = R + 256 G + 256^2 B)")
        img = img if img.mode == "RGB" else img.convert("RGB")
        rgb = np.frombuffer(img.tobytes("raw", "RGBX"), np.uint8).reshape(img.height, img.width, 4)  # Pillow's layout
    h, w, c = rgb.shape  # c = 3 (RGB) or 4 (RGBA, RGBX)
    flat, ids = rgb.reshape(-1), np.empty(h * w, dtype="<u4")
    # each pixel's bytes (R, G, B, next byte) read as one little-endian uint32 and cut to 24 bits: the id, in one
    # pass and no casts; the last pixel's read would pass the end, so it is assembled on its own
    np.bitwise_and(np.ndarray((h * w - 1,), "<u4", flat, strides=(c,)), np.uint32(0xFFFFFF), out=ids[:-1])
    ids[-1] = int.from_bytes(flat[-c:][:3].tobytes(), "little")
    return ids.view(np.int32).reshape(h, w)


# PNG (colour type, bit depth) the readers send to a fast decoder; anything else (and every error path) goes through
# Pillow. wuffs turns RGBA into RGB by compositing over black (panoptic ids need the raw bytes): RGBA is libspng's.
_GRAY_PNG = {(0, 8)}
_COLOUR_PNG = {(2, 8), (6, 8), (3, 1), (3, 2), (3, 4), (3, 8)}
_DECODES = {"wuffs": _GRAY_PNG | _COLOUR_PNG - {(6, 8)}, "libspng": _GRAY_PNG | _COLOUR_PNG}
PNG_DECODER_PACKAGES = {"wuffs": "pywuffs", "libspng": "imagecodecs"}  # fast decoder -> the module that provides it


@functools.cache
def png_decoders() -> tuple[str, ...]:
    """The fast PNG decoders installed (the "fast-png" extra), fastest first: "wuffs" (pywuffs: a COCO-size panoptic
    PNG in 0.45-0.6x libspng's time) and "libspng" (imagecodecs: ~0.5x Pillow's); () = Pillow only. All three release
    the GIL (two threads decode at twice one thread's rate)."""
    packages = PNG_DECODER_PACKAGES.items()
    return tuple(name for name, module in packages if importlib.util.find_spec(module) is not None)


_wuffs_decoders = threading.local()  # a wuffs decoder keeps state: one per thread and pixel format


def _wuffs_decode(data: bytes, grey: bool) -> np.ndarray:
    """pywuffs: grey uint8 [H, W] or RGB [H, W, 3], the zlib checksum verified (wuffs' aux API skips it by default,
    which would let a corrupt file through as wrong pixels); a decoding error raises ValueError with wuffs' message."""
    key = "grey" if grey else "rgb"
    decoder = getattr(_wuffs_decoders, key, None)
    if decoder is None:
        from pywuffs import ImageDecoderQuirks, ImageDecoderType, PixelFormat
        from pywuffs.aux import ImageDecoder, ImageDecoderConfig

        config = ImageDecoderConfig()
        config.enabled_decoders = [ImageDecoderType.PNG]
        config.pixel_format = PixelFormat.Y if grey else PixelFormat.RGB
        config.quirks = {ImageDecoderQuirks.IGNORE_CHECKSUM: 0}
        decoder = ImageDecoder(config)
        setattr(_wuffs_decoders, key, decoder)
    result = decoder.decode(data)
    if result.error_message:
        raise ValueError(result.error_message)
    return result.pixbuf[..., 0] if grey else result.pixbuf


def _fast_png(path: str | Path, kinds: set) -> np.ndarray | None:
    """Decode a PNG with the fastest installed decoder that takes its kind (grey: uint8 [H, W]; colour: uint8
    [H, W, 3 or 4]), or None to use Pillow: no fast decoder for it, not a .png, a (colour type, bit depth) outside
    `kinds`, or more pixels than Pillow's bomb limit. The same pixels as Pillow (tests/test_io.py); a file the
    decoder rejects is a FormatError naming it."""
    path = Path(path)
    if not png_decoders() or path.suffix.lower() != ".png" or not path.is_file():
        return None
    data = path.read_bytes()
    if len(data) < 33 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    w, h, depth, colour = struct.unpack(">IIBB", data[16:26])
    pil = sys.modules.get("PIL.Image")  # Pillow's MAX_IMAGE_PIXELS, its default if Pillow is not imported
    limit = (pil.MAX_IMAGE_PIXELS if pil else 1024 * 1024 * 1024 // 4 // 3) or 1 << 62
    decoder = next((d for d in png_decoders() if (colour, depth) in _DECODES[d]), None)
    if decoder is None or (colour, depth) not in kinds or not 0 < w * h <= limit:
        return None
    try:
        if decoder == "wuffs":
            return _wuffs_decode(data, grey=colour == 0)
        import imagecodecs

        return imagecodecs.spng_decode(data)
    except (RuntimeError, ValueError) as e:
        raise FormatError(f"{path}: cannot read the image ({decoder}: {e}); the file is corrupt or truncated") from None


def rgb2id(rgb) -> np.ndarray:
    """RGB array uint8 [..., 3] -> panoptic ids int32 [...]: id = R + 256 G + 256^2 B."""
    rgb = np.asarray(rgb).astype(np.int32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def id2rgb(ids) -> np.ndarray:
    """Inverse of rgb2id: int [...] -> uint8 [..., 3]."""
    ids = to_numpy(ids).astype(np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)


def load_json(path: str | Path):
    """Parsed JSON; a missing or invalid file is a FormatError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: JSON file not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"{path}: invalid JSON ({e})") from None


def read_names(path: str | Path) -> list[str]:
    """Class names from a JSON list or a text file (one name a line, blank lines skipped)."""
    if str(path).endswith(".json"):
        return [str(n) for n in load_json(path)]
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def list_files(folder: str | Path, exts: tuple[str, ...], recursive: bool = False) -> list[Path]:
    """Sorted files under `folder` whose suffix (lower-case) is in `exts`."""
    folder = Path(folder)
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if p.is_file() and p.suffix.lower() in exts)


# ------------------------------------------------------------------------------------------------ writing
@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path` (same extension) to write; renamed onto `path` when the block succeeds.

    The library's one atomic writer (models, checkpoints, ONNX, JSON, images): readers never see a half-written file,
    and the file is created by an ordinary open, so its permissions follow the user's umask (mkstemp's are 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.urandom(6).hex()}.tmp{path.suffix}")  # keeps the format's extension
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def image_bytes(arr: np.ndarray, fmt: str = "PNG", *, compress_level: int = 6, quality: int = 95) -> bytes:
    """uint8 [H, W] / [H, W, 3] or uint16 [H, W] -> the bytes of an image file in Pillow format `fmt` (PNG, JPEG,
    TIFF, ...): what every writer here writes, and what the server sends (maskformer.serve.encode)."""
    from PIL import Image

    options = {"PNG": {"compress_level": compress_level}, "JPEG": {"quality": quality}}.get(fmt, {})
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format=fmt, **options)
    return buf.getvalue()


def _save_image(path: str | Path, arr: np.ndarray, compress_level: int = 6, quality: int = 95) -> None:
    """Array -> image file, atomically; the format (and its option) follows the extension."""
    from PIL import Image

    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown image file extension; use one of {', '.join(IMAGE_EXTS)}")
    data = image_bytes(arr, fmt, compress_level=compress_level, quality=quality)
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def write_image(path: str | Path, image, quality: int = 95, compress_level: int = 6) -> None:
    """uint8 [H, W, 3] RGB -> image file; the format follows the extension."""
    _save_image(path, np.ascontiguousarray(to_numpy(image), dtype=np.uint8), compress_level, quality)


def label_pixels(label, name: str = "label map", *, wide: bool = False) -> np.ndarray:
    """Label map int [H, W] -> uint8 when its values fit in 0..255 (and not `wide`), else uint16; values outside
    0..65535 are a ValueError naming `name`."""
    label = to_numpy(label)
    lo, hi = int(label.min(initial=0)), int(label.max(initial=0))
    if lo < 0 or hi > 65535:
        raise ValueError(f"{name}: label values must lie in 0..65535, got {lo}..{hi}")
    return np.ascontiguousarray(label, dtype=np.uint16 if wide or hi > 255 else np.uint8)


def write_label(path: str | Path, label, compress_level: int = 6) -> None:
    """Label map int [H, W] -> 8-bit PNG when values fit in 0..255, else 16-bit (PNG or TIFF by the extension)."""
    wide = str(path).lower().endswith((".tif", ".tiff"))
    _save_image(path, label_pixels(label, str(path), wide=wide), compress_level)


def write_semantic(path: str | Path, labels, meta: DatasetMeta | None = None, *, dataset_ids: bool = False) -> None:
    """Label map int [H, W] (contiguous ids) -> PNG; dataset_ids=True writes meta.dataset_ids[label] instead."""
    labels = to_numpy(labels).astype(np.int64)
    if dataset_ids:
        if meta is None:
            raise ValueError(f"{path}: dataset_ids=True needs a DatasetMeta")
        labels = np.asarray(meta.dataset_ids, dtype=np.int64)[labels]
    write_label(path, labels)


def write_panoptic(path: str | Path, ids, compress_level: int = 6) -> None:
    """Panoptic ids int [H, W] -> COCO panoptic RGB PNG."""
    _save_image(path, id2rgb(ids), compress_level)


def _json_safe(x):
    """NaN -> None, numpy scalars -> Python numbers, tuples -> lists, dict keys -> str (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    if hasattr(x, "item"):  # numpy / torch scalars
        x = x.item()
    return None if isinstance(x, float) and math.isnan(x) else x


def save_json(path: str | Path, obj, *, indent: int | None = None) -> None:
    """Write strict JSON (NaN -> null) atomically, creating the parent folder."""
    text = json.dumps(_json_safe(obj), indent=indent, allow_nan=False)
    with atomic_file(path) as tmp:
        tmp.write_text(text)


# ------------------------------------------------------------------------------------------------ COCO panoptic
def bboxes(ids, n: int) -> np.ndarray:
    """COCO boxes [x, y, w, h] of ids 0..n in an id map [H, W] (zeros for absent ids): int64 [n + 1, 4]."""
    ids = to_numpy(ids).astype(np.int64)
    out = np.zeros((n + 1, 4), dtype=np.int64)
    for dim, col in ((1, 0), (0, 1)):  # x from the columns (dim 1), y from the rows (dim 0)
        present = np.zeros((n + 1, ids.shape[dim]), dtype=bool)
        present[ids, np.indices(ids.shape)[dim]] = True  # [n + 1, W or H]: which columns / rows hold each id
        has, first = present.any(1), present.argmax(1)
        last = present.shape[1] - 1 - present[:, ::-1].argmax(1)
        out[has, col] = first[has]
        out[has, col + 2] = (last - first + 1)[has]
    return out


def panoptic_annotation(ids, segments: list[dict], *, image_id, file_name: str) -> dict:
    """COCO panoptic annotation of one id map int [H, W] and its segments_info (from panoptic_inference)."""
    ids = to_numpy(ids).astype(np.int64)
    n = int(ids.max(initial=0))
    areas, boxes = np.bincount(ids.ravel(), minlength=n + 1), bboxes(ids, n)
    info = []
    for seg in segments:
        i = int(seg["id"])
        if 1 <= i <= n and areas[i] > 0:  # an id never painted is not listed
            cat = int(seg.get("dataset_category_id", seg["category_id"]))
            info.append({"id": i, "category_id": cat, "area": int(areas[i]), "bbox": boxes[i].tolist(), "iscrowd": 0})
    return {"image_id": image_id, "file_name": file_name, "segments_info": info}


def write_panoptic_json(path: str | Path, annotations: list[dict], meta: DatasetMeta) -> None:
    """COCO panoptic JSON: the annotations and the "categories" of `meta` (dataset ids)."""
    categories = [{"id": int(d), "name": n, "isthing": int(t), "color": list(c)}
                  for d, n, t, c in zip(meta.dataset_ids, meta.class_names, meta.is_thing, meta.palette)]  # fmt: skip
    save_json(path, {"annotations": annotations, "categories": categories})


# ------------------------------------------------------------------------------------------------ COCO RLE
def rle_counts(mask) -> np.ndarray:
    """Column-major run lengths of bool [H, W], starting with a (possibly empty) run of 0s: int64 [R]."""
    flat = to_numpy(mask).astype(bool).T.ravel()  # column-major, as COCO
    bounds = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1, [flat.size]])
    counts = np.diff(bounds)
    return np.concatenate([[0], counts]) if flat.size and flat[0] else counts


def _encode_counts(counts: np.ndarray) -> str:
    """COCO's compressed string: each count (minus the one two back, from the third on) in 5-bit groups."""
    chars = []
    for i, x in enumerate(counts.tolist()):
        if i > 2:
            x -= int(counts[i - 2])
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            chars.append(chr(c + 48 + (0x20 if more else 0)))
    return "".join(chars)


def _decode_string(s: str) -> list[int]:
    """Inverse of _encode_counts."""
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        counts.append(x + counts[-2] if len(counts) > 2 else x)
    return counts


def rle_encode(mask) -> dict:
    """bool [H, W] -> {"size": [H, W], "counts": compressed string} (COCO RLE)."""
    mask = to_numpy(mask)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": _encode_counts(rle_counts(mask))}


def rle_decode(rle: dict) -> np.ndarray:
    """COCO RLE (compressed string or list of counts) -> bool [H, W]."""
    h, w = rle["size"]
    counts = rle["counts"]
    if isinstance(counts, str | bytes):
        counts = _decode_string(counts.decode() if isinstance(counts, bytes) else counts)
    flat = np.repeat(np.arange(len(counts)) % 2 == 1, counts)  # runs alternate 0s, 1s, ...
    if flat.size != h * w:
        raise ValueError(f"RLE covers {flat.size} pixels, expected {h} x {w}")
    return flat.reshape(w, h).T


def mask_bbox(mask: np.ndarray) -> list[int]:
    """[x, y, w, h] of a bool mask [H, W] ([0, 0, 0, 0] when empty)."""
    ys, xs = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if len(ys) == 0:
        return [0, 0, 0, 0]
    return [int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)]


def instance_results(instances: Instances, *, image_id, meta: DatasetMeta | None = None) -> list[dict]:
    """COCO instance results of one image (category ids = meta.dataset_ids, else contiguous)."""
    ids = to_numpy(instances.labels).astype(np.int64)
    if meta is not None:
        ids = np.asarray(meta.dataset_ids, dtype=np.int64)[ids]
    results = []
    for m, s, c in zip(to_numpy(instances.masks), to_numpy(instances.scores), ids):
        result = {"image_id": image_id, "category_id": int(c), "segmentation": rle_encode(m), "score": float(s)}
        results.append({**result, "bbox": mask_bbox(m), "area": int(m.sum())})
    return results
