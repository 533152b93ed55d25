"""Geometric augmentations (reference section 6.3) in numpy/Pillow; the photometric one is color.ColorAugSSD.

A `Sample` carries the image and its label maps; every geometric transform moves them together (bilinear for the
image, nearest for label and panoptic-id maps, so label values are never interpolated). Each transform is called as
`t(sample, rng)` and draws all randomness from the passed numpy Generator: same seed -> same sample.
`shortest_edge_size` and `resize_image` are the package's only image resizing (training, datasets, maskformer.pipeline).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass
class Sample:
    """image: uint8 [h, w, 3] RGB; sem_seg: int32 [h, w] class ids (ignore kept) or None;
    pan_seg: int32 [h, w] panoptic segment ids (0 = VOID) or None."""

    image: np.ndarray
    sem_seg: np.ndarray | None = None
    pan_seg: np.ndarray | None = None

    @property
    def size(self) -> tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])

    def map(self, label_fn, image_fn=None) -> Sample:
        """Apply `label_fn` to each present label map and `image_fn` (default: `label_fn`) to the image."""
        sem = None if self.sem_seg is None else label_fn(self.sem_seg)
        pan = None if self.pan_seg is None else label_fn(self.pan_seg)
        return Sample((image_fn or label_fn)(self.image), sem, pan)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [h, w, 3] -> [H, W, 3] with PIL bilinear (as detectron2's ResizeTransform for uint8 images)."""
    if image.shape[:2] == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """int [h, w] -> int32 [H, W] with nearest neighbour (values are copied, never mixed)."""
    if label.shape == tuple(size):
        return label
    img = Image.fromarray(np.ascontiguousarray(label, dtype=np.int32))  # mode "I"
    return np.asarray(img.resize((size[1], size[0]), Image.NEAREST), dtype=np.int32)


def shortest_edge_size(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """Output (h, w) with the short side at `short` and the long side capped at `max_size` (detectron2 rounding)."""
    scale = short / min(h, w)
    newh, neww = (short, scale * w) if h < w else (scale * h, short)
    if max(newh, neww) > max_size:
        s = max_size / max(newh, neww)
        newh, neww = newh * s, neww * s
    return int(newh + 0.5), int(neww + 0.5)


class ResizeShortestEdge:
    """Resize so the short side is a size drawn uniformly from `sizes`, the long side at most `max_size`."""

    def __init__(self, *, sizes: Sequence[int], max_size: int):
        if len(sizes) == 0:
            raise ValueError("ResizeShortestEdge needs at least one short-side size")
        self.sizes, self.max_size = tuple(int(s) for s in sizes), int(max_size)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        short = self.sizes[0] if len(self.sizes) == 1 else self.sizes[int(rng.integers(len(self.sizes)))]
        size = shortest_edge_size(*sample.size, short, self.max_size)
        return sample.map(lambda x: resize_label(x, size), lambda x: resize_image(x, size))


class ResizeScale:
    """Large-scale jitter's resize (detectron2 ResizeScale, Mask2Former COCO): fit the image into `target` (h, w)
    times a scale drawn uniformly from [min_scale, max_scale], keeping the aspect ratio."""

    def __init__(self, *, min_scale: float, max_scale: float, target: tuple[int, int]):
        self.min_scale, self.max_scale, self.target = float(min_scale), float(max_scale), target

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        scale = rng.uniform(self.min_scale, self.max_scale)
        h, w = sample.size
        s = min(scale * self.target[0] / h, scale * self.target[1] / w)
        size = (max(1, int(round(h * s))), max(1, int(round(w * s))))
        return sample.map(lambda x: resize_label(x, size), lambda x: resize_image(x, size))


class RandomCrop:
    """Random crop of min(crop, image) per side; optional category-area constraint (up to 10 tries).

    crop_type "absolute": crop (h, w) = crop_size. "absolute_range": h and w each drawn uniformly from
    [crop_size[0], min(side, crop_size[1])] (the DETR recipe). With single_category_max_area < 1, a window is
    accepted when more than one non-ignore class is present and none covers >= that fraction of the non-ignore
    pixels; after 10 failed tries the last window is used (as detectron2).
    """

    def __init__(
        self,
        *,
        crop_size: tuple[int, int],
        crop_type: str = "absolute",
        single_category_max_area: float = 1.0,
        ignore_label: int | None = None,
    ):
        if crop_type not in ("absolute", "absolute_range"):
            raise ValueError(f"crop_type must be 'absolute' or 'absolute_range', got {crop_type!r}")
        self.crop_size, self.crop_type = (int(crop_size[0]), int(crop_size[1])), crop_type
        self.max_area, self.ignore_label = float(single_category_max_area), ignore_label

    def _window(self, sample: Sample, rng: np.random.Generator) -> tuple[int, int, int, int]:
        (h, w), (a, b) = sample.size, self.crop_size
        tries = 10 if self.max_area < 1.0 and sample.sem_seg is not None else 1
        for _ in range(tries):
            if self.crop_type == "absolute":
                ch, cw = min(a, h), min(b, w)
            else:
                ch, cw = int(rng.integers(min(h, a), min(h, b) + 1)), int(rng.integers(min(w, a), min(w, b) + 1))
            y0, x0 = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
            if tries == 1 or self._accept(sample.sem_seg[y0 : y0 + ch, x0 : x0 + cw]):
                break
        return y0, x0, ch, cw

    def _accept(self, window: np.ndarray) -> bool:
        labels, counts = np.unique(window, return_counts=True)
        if self.ignore_label is not None:
            counts = counts[labels != self.ignore_label]
        return len(counts) > 1 and counts.max() < counts.sum() * self.max_area

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        y0, x0, ch, cw = self._window(sample, rng)
        return sample.map(lambda x: x[y0 : y0 + ch, x0 : x0 + cw])


class RandomFlip:
    """Horizontal flip with probability `prob`."""

    def __init__(self, *, prob: float = 0.5):
        self.prob = prob

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if rng.random() >= self.prob:
            return sample
        return sample.map(lambda x: np.ascontiguousarray(x[:, ::-1]))


class PadTo:
    """Pad bottom/right to exactly `size` (h, w): image with 128, sem_seg with the ignore label, pan_seg with 0."""

    def __init__(self, *, size: tuple[int, int], ignore_label: int):
        self.size, self.ignore_label = (int(size[0]), int(size[1])), ignore_label

    def _pad(self, x: np.ndarray, value: int) -> np.ndarray:
        h, w = x.shape[:2]
        H, W = self.size
        if h > H or w > W:
            raise ValueError(f"PadTo: input {h}x{w} is larger than the pad size {H}x{W}; use a crop <= pad size")
        if (h, w) == (H, W):
            return x
        out = np.full((H, W) + x.shape[2:], value, dtype=x.dtype)
        out[:h, :w] = x
        return out

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        sem = None if sample.sem_seg is None else self._pad(sample.sem_seg, self.ignore_label)
        pan = None if sample.pan_seg is None else self._pad(sample.pan_seg, 0)
        return Sample(self._pad(sample.image, 128), sem, pan)


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence):
        self.transforms = list(transforms)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        for t in self.transforms:
            sample = t(sample, rng)
        return sample


class RandomChoice:
    """With probability `prob` apply `first`, otherwise `second` (the DETR recipe's two branches)."""

    def __init__(self, first, second, *, prob: float = 0.5):
        self.first, self.second, self.prob = first, second, prob

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        return self.first(sample, rng) if rng.random() < self.prob else self.second(sample, rng)
