"""Reading label maps and COCO panoptic PNGs into numpy, fast.

`np.asarray(pil_image)` goes through `Image.tobytes()`, a chunked re-packing of the pixels that costs about as much
as decoding the PNG. Pillow (>= 11.2) also exports its pixel memory through the Arrow C data interface; reading that
buffer directly (a zero-copy view, copied once into the result) makes reading a PNG cost little more than decoding
it. The Arrow layout is checked (format strings, length, single block) and anything unexpected - an older Pillow,
an image split over several memory blocks - falls back to `tobytes()`, with identical results.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
from PIL import Image


class _ArrowSchema(ctypes.Structure):
    pass


_ArrowSchema._fields_ = [
    ("format", ctypes.c_char_p),
    ("name", ctypes.c_char_p),
    ("metadata", ctypes.c_char_p),
    ("flags", ctypes.c_int64),
    ("n_children", ctypes.c_int64),
    ("children", ctypes.POINTER(ctypes.POINTER(_ArrowSchema))),
    ("dictionary", ctypes.c_void_p),
    ("release", ctypes.c_void_p),
    ("private_data", ctypes.c_void_p),
]


class _ArrowArray(ctypes.Structure):
    pass


_ArrowArray._fields_ = [
    ("length", ctypes.c_int64),
    ("null_count", ctypes.c_int64),
    ("offset", ctypes.c_int64),
    ("n_buffers", ctypes.c_int64),
    ("n_children", ctypes.c_int64),
    ("buffers", ctypes.POINTER(ctypes.c_void_p)),
    ("children", ctypes.POINTER(ctypes.POINTER(_ArrowArray))),
    ("dictionary", ctypes.c_void_p),
    ("release", ctypes.c_void_p),
    ("private_data", ctypes.c_void_p),
]

_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]

# mode -> (numpy dtype of a pixel, Arrow format of the exported array); RGB is a fixed-size list of 4 bytes
_MODES = {
    "L": (np.dtype(np.uint8), b"C"),
    "P": (np.dtype(np.uint8), b"C"),
    "I;16": (np.dtype("<u2"), b"s"),
    "I": (np.dtype("<i4"), b"i"),
    "RGB": (np.dtype("<u4"), b"+w:4"),
}


_RGB_MASK = np.uint32(0xFFFFFF)


def _pixels(im: Image.Image) -> np.ndarray:
    """A new [h, w] array of a loaded image's pixels (RGB: uint32 R + 256 G + 256^2 B, the pad byte cleared)."""
    out = _pixels_arrow(im)
    if out is not None:
        return out
    w, h = im.size
    if im.mode == "RGB":
        rgbx = np.frombuffer(bytearray(im.tobytes("raw", "RGBX")), dtype="<u4").reshape(h, w)
        return np.bitwise_and(rgbx, _RGB_MASK, out=rgbx)
    return np.array(im)


def _pixels_arrow(im: Image.Image) -> np.ndarray | None:
    dtype, fmt = _MODES.get(im.mode, (None, None))
    if dtype is None or not hasattr(im, "__arrow_c_array__"):
        return None
    try:
        schema_capsule, array_capsule = im.__arrow_c_array__()  # keeps the pixel memory alive until released
    except (ValueError, OSError, TypeError):  # e.g. an image in several memory blocks
        return None
    schema = ctypes.cast(_capsule_pointer(schema_capsule, b"arrow_schema"), ctypes.POINTER(_ArrowSchema)).contents
    array = ctypes.cast(_capsule_pointer(array_capsule, b"arrow_array"), ctypes.POINTER(_ArrowArray)).contents
    if schema.format != fmt:
        return None
    if fmt == b"+w:4":  # RGB: the bytes are in the single child array
        if array.n_children != 1 or schema.children[0].contents.format != b"C":
            return None
        array = array.children[0].contents
    w, h = im.size
    nbytes = w * h * dtype.itemsize
    elem = 1 if fmt == b"+w:4" else dtype.itemsize
    if array.n_buffers != 2 or array.offset != 0 or array.length * elem != nbytes or not array.buffers[1]:
        return None
    view = np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(array.buffers[1]))
    pixels = view.view(dtype).reshape(h, w)
    if fmt == b"+w:4":  # copy and clear the pad byte in one pass
        return np.bitwise_and(pixels, _RGB_MASK, out=np.empty((h, w), dtype))
    return pixels.copy()  # copied while the capsules (and the memory) are alive


def _open(path: str | Path) -> Image.Image:
    try:
        im = Image.open(path)
        im.load()
        return im
    except OSError as e:  # missing file, not an image, truncated
        raise ValueError(f"{path}: cannot read the image ({type(e).__name__}: {e})") from None


def read_panoptic_png(path: str | Path) -> np.ndarray:
    """COCO panoptic PNG -> uint32 [h, w] segment ids (R + 256 G + 256^2 B; 0 = VOID)."""
    with _open(path) as im:
        ids = _pixels(im if im.mode == "RGB" else im.convert("RGB"))  # little-endian (R, G, B, 0) is the id
    return ids.astype(np.uint32, copy=False)


def read_label_map(path: str | Path) -> np.ndarray:
    """Single-channel label map (PNG "L"/"P"/"I;16"/"I", TIFF) -> integer [h, w]; colour images are an error."""
    with _open(path) as im:
        if im.mode in ("RGB", "RGBA", "LA", "CMYK", "YCbCr"):
            raise ValueError(f"{path}: a label map must have one channel of class indices, got mode {im.mode}")
        return _pixels(im)
