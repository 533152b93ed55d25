"""The one image -> prediction path, used by `Predictor`, `maskformer eval`, the demo and the server.

    image (path, PIL, array, tensor) --load_image--> uint8 RGB [h, w, 3]
      --resize_image to run_size (short side min_size_test, long side <= max_size_test; maskformer.data.transforms)
      --ImageBatch.from_images--> one padded batch [B, 3, H, W] --model--> {"pred_logits", "pred_masks"} | {"sem_seg"}
      --maskformer.inference (fast path when cfg.inference.fast)--> a `Prediction` per image at its output size

plus test-time augmentation (`semantic_tta`) and overlapping windows (`sliding_window_semantic`) for semantic scores.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn

from maskformer.config import InferenceConfig
from maskformer.data.transforms import resize_image, shortest_edge_size
from maskformer.inference import Instances, instance_inference, panoptic_inference, semantic_inference, semantic_labels
from maskformer.io import FormatError, open_image, to_numpy
from maskformer.structures import TASKS, DatasetMeta, ImageBatch

Size = tuple[int, int]
ImageError = FormatError  # an input image that cannot be read or converted; the message names it


@dataclass
class Prediction:
    """Results for one image at its original size (h, w); fields of other tasks are None."""

    image_size: tuple[int, int]
    semantic: torch.Tensor | None = None  # int64 [h, w] contiguous class ids
    panoptic: torch.Tensor | None = None  # int32 [h, w] segment ids, 0 = VOID
    segments: list[dict] = field(default_factory=list)  # segments_info of `panoptic`
    instances: Instances | None = None  # masks bool [N, h, w], scores, labels


@dataclass
class Region:
    """One region of a prediction: its value in the prediction's map (class id, panoptic segment id, or instance rank
    + 1), its class, score (None for semantic: a label map has no per-class score) and mask bool [h, w]."""

    id: int
    label_id: int
    score: float | None
    mask: np.ndarray


def regions(pred: Prediction, threshold: float = 0.5) -> list[Region]:
    """The regions of a prediction in the order transformers' segmentation pipeline lists them: classes ascending
    (semantic), segments in order (panoptic), instances best first with score >= threshold."""
    if pred.semantic is not None:
        labels = to_numpy(pred.semantic)
        return [Region(int(c), int(c), None, labels == c) for c in np.unique(labels)]
    if pred.panoptic is not None:
        ids = to_numpy(pred.panoptic)
        return [Region(int(s["id"]), int(s["category_id"]), float(s["score"]), ids == s["id"]) for s in pred.segments]
    masks, scores, labels = (to_numpy(x) for x in (pred.instances.masks, pred.instances.scores, pred.instances.labels))
    keep = [i for i, s in enumerate(scores) if s >= threshold]
    return [Region(r + 1, int(labels[i]), float(scores[i]), masks[i].astype(bool)) for r, i in enumerate(keep)]


# ------------------------------------------------------------------------------------------------ image input
def load_image(image, name: str = "") -> np.ndarray:
    """A path, PIL image, numpy array ([h, w], [h, w, 1|3|4], or [1|3|4, h, w]) or tensor -> uint8 RGB [h, w, 3].

    Grayscale, RGBA, palette, 16-bit and float inputs are converted; EXIF orientation is applied to files."""
    if isinstance(image, str | os.PathLike):
        name = str(image)
        image = ImageOps.exif_transpose(open_image(image))
    if isinstance(image, Image.Image):
        name = name or "PIL image"
        if not (image.mode.startswith("I") or image.mode == "F"):  # else 16/32-bit integer or float grayscale
            return np.asarray(image.convert("RGB"))
        image = np.asarray(image)
    if torch.is_tensor(image) or isinstance(image, np.ndarray):
        return _from_array(to_numpy(image), name or "array")
    kind = type(image).__name__
    raise ImageError(f"{name or 'input'}: expected a path, PIL image, numpy array or tensor, got {kind}")


def _from_array(a: np.ndarray, name: str) -> np.ndarray:
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = a.transpose(1, 2, 0)  # CHW -> HWC
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] not in (3, 4) or min(a.shape[:2]) < 1:
        raise ImageError(f"{name}: cannot use an image of shape {a.shape}; expected [h, w], [h, w, 3] or [h, w, 4]")
    a = a[..., :3]  # 8-bit as is; 16-bit (or larger ints up to 65535) scaled by 1/256; floats in [0, 1] scaled by 255
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.integer):
        if a.min(initial=0) < 0 or a.max(initial=0) > 65535:
            raise ImageError(f"{name}: integer pixel values {a.min()}..{a.max()} are outside 0..65535")
        return (a >> 8).astype(np.uint8) if a.max(initial=0) > 255 or a.dtype == np.uint16 else a.astype(np.uint8)
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ImageError(f"{name}: float image has NaN or infinite values")
        scale = 255.0 if a.max(initial=0) <= 1.0 else 1.0
        return (a * scale).round().clip(0, 255).astype(np.uint8)
    raise ImageError(f"{name}: unsupported pixel type {a.dtype}")


# ------------------------------------------------------------------------------------------------ batch + forward
def run_size(h: int, w: int, min_size: int, max_size: int) -> Size:
    """The size an (h, w) image runs at: short side min_size, long side <= max_size; min_size <= 0 keeps it."""
    return shortest_edge_size(h, w, min_size, max_size) if min_size > 0 else (h, w)


def to_tensor(image: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """uint8 [h, w, 3] -> float [3, h, w] (0..255) on `device`."""
    return torch.tensor(image, device=device).permute(2, 0, 1).float()  # a copy: PIL arrays are read-only


def model_device(model) -> torch.device:
    """The device of a module's parameters; CPU for a module without any, or a non-module runner (onnxruntime)."""
    p = next(model.parameters(), None) if isinstance(model, nn.Module) else None
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def forward(model: nn.Module, images: Sequence[torch.Tensor]) -> tuple[dict, ImageBatch]:
    """float [3, h_i, w_i] images (0..255) as one padded batch -> (model outputs, the ImageBatch they ran as)."""
    batch = ImageBatch.from_images(list(images), size_divisibility=getattr(model, "size_divisibility", 32))
    return model(batch), batch


def forward_scores(
    model: nn.Module, images: Sequence[torch.Tensor], output_sizes: Sequence[Size]
) -> list[torch.Tensor]:
    """Run the model on float [3, h, w] images (one padded batch) -> semantic scores [K, H, W] per output size."""
    outputs, batch = forward(model, images)
    return semantic_inference(outputs, batch.image_sizes, output_sizes, padded_size=tuple(batch.tensor.shape[-2:]))


def num_classes(outputs: dict) -> int:
    """K, the classes a model's outputs score (no-object excluded)."""
    return outputs["sem_seg"].shape[1] if "sem_seg" in outputs else outputs["pred_logits"].shape[-1] - 1


def check_label_space(k: int, meta: DatasetMeta) -> None:
    if k != meta.num_classes:
        raise ValueError(f"the model predicts {k} classes but DatasetMeta {meta.name!r} has {meta.num_classes}")


def postprocess(
    outputs: dict, batch: ImageBatch, sizes: Sequence[Size], *, task: str, meta: DatasetMeta,
    inference: InferenceConfig, rule: str = "maskformer",
) -> list[Prediction]:  # fmt: skip
    """Model outputs of `batch` -> a Prediction per image at its output size (maskformer.inference, on the CPU).
    rule: the model's cfg.model.arch, for the panoptic painting rule ("maskformer" | "mask2former")."""
    images = batch.image_sizes
    kw = dict(padded_size=tuple(batch.tensor.shape[-2:]), fast=inference.fast)
    if task == "semantic":
        labels = semantic_labels(outputs, images, sizes, before_inference=inference.postprocess_before_inference, **kw)
        return [Prediction(image_size=tuple(s), semantic=x.cpu()) for s, x in zip(sizes, labels)]
    if task == "panoptic":
        rules = {k: getattr(inference, k) for k in ("object_mask_threshold", "overlap_threshold")}
        res = panoptic_inference(outputs, images, sizes, thing_ids=meta.thing_ids, meta=meta, rule=rule, **rules, **kw)
        return [Prediction(image_size=tuple(s), panoptic=ids.cpu(), segments=seg) for s, (ids, seg) in zip(sizes, res)]
    if task == "instance":
        things = meta.thing_ids if any(meta.is_thing) else None
        res = instance_inference(outputs, images, sizes, thing_ids=things, topk=inference.instance_topk, **kw)
        found = [Instances(r.masks.cpu(), r.scores.cpu(), r.labels.cpu()) for r in res]
        return [Prediction(image_size=tuple(s), instances=x) for s, x in zip(sizes, found)]
    raise ValueError(f"task={task!r}; choose one of {', '.join(TASKS)}")


@torch.no_grad()
def predict(
    model: nn.Module, images: Sequence[np.ndarray], *, task: str, meta: DatasetMeta, inference: InferenceConfig,
    output_sizes: Sequence[Size] | None = None, tta: bool = False, names: Sequence[str] = (), rule: str = "maskformer",
) -> list[Prediction]:  # fmt: skip
    """uint8 RGB [h, w, 3] images -> a Prediction each, at output_sizes (default: each image's own size).

    model: an nn.Module, or what maskformer.backends.build_runner makes of it (another precision or backend). Each
    image is resized to the test size (inference.min_size_test, max_size_test) of its output size (an image a dataset
    already resized is left as it is); images of one padded size run as one batch. tta: semantic multi-scale + flip
    (inference.tta_scales, tta_flip), one original-size image at a time. rule: as postprocess's.
    """
    sizes = [tuple(s) for s in output_sizes] if output_sizes is not None else [a.shape[:2] for a in images]
    if tta and task != "semantic":
        raise ValueError(f"test-time augmentation is defined for semantic segmentation only, not task={task!r}")
    if tta:
        min_sizes, cap = tta_sizes(inference.min_size_test, inference.tta_scales, inference.max_size_test)
        preds = []
        for image, size, name in zip(images, sizes, list(names) or [""] * len(images)):
            if tuple(image.shape[:2]) != tuple(size):
                raise ValueError(f"{name or 'image'}: test-time augmentation needs the image at its original size")
            scores = semantic_tta(model, image, min_sizes=min_sizes, max_size=cap, flip=inference.tta_flip)
            check_label_space(scores.shape[0], meta)
            preds.append(Prediction(image_size=tuple(size), semantic=scores.argmax(0).cpu()))
        return preds
    device = model_device(model)
    run_sizes = [run_size(*s, inference.min_size_test, inference.max_size_test) for s in sizes]
    tensors = [to_tensor(resize_image(a, size), device) for a, size in zip(images, run_sizes)]
    preds = [None] * len(tensors)
    for group in padded_size_groups(tensors, getattr(model, "size_divisibility", 32)):
        outputs, batch = forward(model, [tensors[i] for i in group])
        check_label_space(num_classes(outputs), meta)
        kw = dict(task=task, meta=meta, inference=inference, rule=rule)
        for i, p in zip(group, postprocess(outputs, batch, [sizes[i] for i in group], **kw)):
            preds[i] = p
    return preds


def padded_size_groups(tensors: Sequence[torch.Tensor], divisor: int) -> list[list[int]]:
    """Indices of the images [3, h, w] grouped by the size they are padded to (a multiple of divisor), in order.

    One forward per group keeps predictions batch-invariant: the official network (edge convolutions, GroupNorm
    statistics, the sine encoding's normalization, attention without a padding mask) and the official upsampling
    before the crop both see the padding, so an image padded beyond its own size would get other labels."""
    divisor = max(1, int(divisor or 1))
    groups: dict[tuple[int, int], list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((-(-t.shape[-2] // divisor), -(-t.shape[-1] // divisor)), []).append(i)
    return list(groups.values())


# ------------------------------------------------------------------------------------------------ TTA + windows
def tta_sizes(min_size_test: int, scales: Sequence[float], max_size_test: int) -> tuple[list[int], int]:
    """Official TTA short sides (scale x test size) and the long-side cap (largest scale x max size)."""
    return [int(min_size_test * s) for s in scales], int(max_size_test * max(scales))


@torch.no_grad()
def semantic_tta(
    model: nn.Module, image: np.ndarray, *, min_sizes: Sequence[int], max_size: int, flip: bool = True
) -> torch.Tensor:
    """Official TTA (reference section 5.5): mean semantic scores [K, h, w] over short-side sizes x (flip), each copy
    through a forward and back to the original size of uint8 [h, w, 3] image."""
    if len(min_sizes) == 0:
        raise ValueError("semantic_tta needs at least one size in min_sizes")
    h, w = image.shape[:2]
    total = None
    for short in min_sizes:
        resized = to_tensor(resize_image(image, shortest_edge_size(h, w, short, max_size)), model_device(model))
        for flipped in (False, True) if flip else (False,):
            scores = forward_scores(model, [resized.flip(-1) if flipped else resized], [(h, w)])[0]
            scores = scores.flip(-1) if flipped else scores
            total = scores if total is None else total + scores
    return total / (len(min_sizes) * (2 if flip else 1))


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Window offsets covering [0, length): every `stride`, the last one flush with the end."""
    if length <= window:
        return [0]
    return list(range(0, length - window, stride)) + [length - window]


@torch.no_grad()
def sliding_window_semantic(
    model: nn.Module, image: torch.Tensor, *, window: Size, stride: Size | None = None, output_size: Size | None = None,
    batch_size: int = 4,
) -> torch.Tensor:  # fmt: skip
    """Semantic scores [K, H, W] of float [3, h, w] image from overlapping windows (default stride 2/3 window).

    Each window's scores are computed at the window's size, summed into the full map and divided by the number of
    windows covering each pixel; the map is then resized bilinearly to output_size (default: the image size).
    """
    h, w = image.shape[-2:]
    stride = stride or (max(1, window[0] * 2 // 3), max(1, window[1] * 2 // 3))
    ys, xs = window_starts(h, window[0], stride[0]), window_starts(w, window[1], stride[1])
    boxes = [(y, x, min(window[0], h), min(window[1], w)) for y in ys for x in xs]
    total = None
    count = image.new_zeros(1, h, w)
    for b0 in range(0, len(boxes), batch_size):
        chunk = boxes[b0 : b0 + batch_size]
        crops = [image[:, y : y + wh, x : x + ww] for y, x, wh, ww in chunk]
        per_crop = forward_scores(model, crops, [c.shape[-2:] for c in crops])
        for (y, x, wh, ww), scores in zip(chunk, per_crop):
            if total is None:
                total = image.new_zeros(scores.shape[0], h, w)
            total[:, y : y + wh, x : x + ww] += scores
            count[:, y : y + wh, x : x + ww] += 1
    mean = total / count
    if output_size is None or tuple(output_size) == (h, w):
        return mean
    return torch.nn.functional.interpolate(mean[None], size=output_size, mode="bilinear", align_corners=False)[0]
