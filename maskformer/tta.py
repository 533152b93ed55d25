"""Test-time resizing, multi-scale + flip augmentation and sliding-window inference (semantic scores).

- `shortest_edge_size`: detectron2's ResizeShortestEdge rule (short side to `short`, long side capped at `max_size`,
  sizes rounded with int(x + 0.5)); `resize_image` resizes uint8 RGB with PIL bilinear, as detectron2 does.
- `semantic_tta`: reference section 5.5: one copy per short-side size (x flip), each run through the model and the
  official semantic post-processing back to the original size; flipped maps are flipped back; arithmetic mean.
- `sliding_window_semantic`: overlapping windows of the model's training size over a large image, scores averaged
  where windows overlap (for images much larger than the training crops).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from maskformer.inference import semantic_inference
from maskformer.structures import ImageBatch

Size = tuple[int, int]


def shortest_edge_size(h: int, w: int, short: int, max_size: int) -> Size:
    """(new_h, new_w): short side -> `short`, then scaled down so the long side <= max_size (detectron2's rule)."""
    scale = short / min(h, w)
    new_h, new_w = (short, scale * w) if h < w else (scale * h, short)
    if max(new_h, new_w) > max_size:
        shrink = max_size / max(new_h, new_w)
        new_h, new_w = new_h * shrink, new_w * shrink
    return int(new_h + 0.5), int(new_w + 0.5)


def resize_image(image: np.ndarray, size: Size) -> np.ndarray:
    """uint8 RGB [h, w, 3] -> [size[0], size[1], 3] with PIL bilinear (no-op at the same size)."""
    if tuple(image.shape[:2]) == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))


def to_tensor(image: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """uint8 [h, w, 3] -> float [3, h, w] (0..255) on `device`."""
    return torch.tensor(image, device=device).permute(2, 0, 1).float()  # a copy: PIL arrays are read-only


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def forward_scores(
    model: nn.Module, images: Sequence[torch.Tensor], output_sizes: Sequence[Size], *, order: str = "official"
) -> list[torch.Tensor]:
    """Run the model on float [3, h, w] images (one padded batch) -> semantic scores [K, H, W] per output size."""
    batch = ImageBatch.from_images(list(images), size_divisibility=getattr(model, "size_divisibility", 32))
    outputs = model(batch)
    return semantic_inference(
        outputs, batch.image_sizes, output_sizes, order=order, padded_size=tuple(batch.tensor.shape[-2:])
    )


def tta_sizes(min_size_test: int, scales: Sequence[float], max_size_test: int) -> tuple[list[int], int]:
    """Official TTA short sides (scale x test size) and the long-side cap (largest scale x max size)."""
    return [int(min_size_test * s) for s in scales], int(max_size_test * max(scales))


@torch.no_grad()
def semantic_tta(
    model: nn.Module,
    image: np.ndarray,
    *,
    min_sizes: Sequence[int],
    max_size: int,
    flip: bool = True,
    order: str = "official",
    window: Size | None = None,
) -> torch.Tensor:
    """Mean semantic scores [K, h, w] over short-side sizes x (flip), at the original size of uint8 [h, w, 3] image.

    window: run each copy by sliding windows of this size when the copy is larger (None: whole image).
    """
    if len(min_sizes) == 0:
        raise ValueError("semantic_tta needs at least one size in min_sizes")
    h, w = image.shape[:2]
    device, total, n = model_device(model), None, 0
    for short in min_sizes:
        resized = to_tensor(resize_image(image, shortest_edge_size(h, w, short, max_size)), device)
        for flipped in (False, True) if flip else (False,):
            x = resized.flip(-1) if flipped else resized
            if window is not None and (x.shape[-2] > window[0] or x.shape[-1] > window[1]):
                scores = sliding_window_semantic(model, x, window=window, output_size=(h, w), order=order)
            else:
                scores = forward_scores(model, [x], [(h, w)], order=order)[0]
            scores = scores.flip(-1) if flipped else scores
            total = scores if total is None else total + scores
            n += 1
    return total / n


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Window offsets covering [0, length): every `stride`, the last one flush with the end."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window, stride))
    return starts + [length - window]


@torch.no_grad()
def sliding_window_semantic(
    model: nn.Module,
    image: torch.Tensor,
    *,
    window: Size,
    stride: Size | None = None,
    output_size: Size | None = None,
    batch_size: int = 4,
    order: str = "official",
) -> torch.Tensor:
    """Semantic scores [K, H, W] of float [3, h, w] image from overlapping windows (default stride 2/3 window).

    Each window's scores are computed at the window's size, summed into the full map and divided by the number of
    windows covering each pixel; the map is then resized bilinearly to output_size (default: the image size).
    """
    h, w = image.shape[-2:]
    stride = stride or (max(1, window[0] * 2 // 3), max(1, window[1] * 2 // 3))
    boxes = [
        (y, x, min(window[0], h), min(window[1], w))
        for y in window_starts(h, window[0], stride[0])
        for x in window_starts(w, window[1], stride[1])
    ]
    total, count = None, image.new_zeros(1, h, w)
    for b0 in range(0, len(boxes), batch_size):
        chunk = boxes[b0 : b0 + batch_size]
        crops = [image[:, y : y + wh, x : x + ww] for y, x, wh, ww in chunk]
        for (y, x, wh, ww), scores in zip(
            chunk, forward_scores(model, crops, [c.shape[-2:] for c in crops], order=order)
        ):
            if total is None:
                total = image.new_zeros(scores.shape[0], h, w)
            total[:, y : y + wh, x : x + ww] += scores
            count[:, y : y + wh, x : x + ww] += 1
    mean = total / count
    if output_size is None or tuple(output_size) == (h, w):
        return mean
    return torch.nn.functional.interpolate(mean[None], size=output_size, mode="bilinear", align_corners=False)[0]
