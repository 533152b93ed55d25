"""Plain data structures shared by the model, the loss, the data layer and the evaluators: `ImageBatch` (padded
images), `SegTarget` (a training target), `DatasetMeta` (every dataset fact) and `TASKS` (the prediction tasks)."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch

TASKS = ("semantic", "panoptic", "instance")  # what a model is asked to predict; defined here only
PIXEL_MEAN = (123.675, 116.280, 103.530)
PIXEL_STD = (58.395, 57.120, 57.375)


@dataclass
class ImageBatch:
    """Images padded bottom/right into one tensor.

    tensor: float [B, 3, H_pad, W_pad], RGB in 0..255 (not normalized: the model normalizes).
    image_sizes: the (h, w) of each image before padding.
    """

    tensor: torch.Tensor
    image_sizes: list[tuple[int, int]]

    @classmethod
    def from_images(cls, images: Sequence[torch.Tensor], size_divisibility: int = 32) -> ImageBatch:
        """Pad [3, h_i, w_i] images to a common [B, 3, H, W], H and W rounded up to `size_divisibility`, with the
        pixel mean: after the model's normalization padded pixels are exactly 0, as in the official batching."""
        if len(images) == 0:
            raise ValueError("ImageBatch.from_images needs at least one image")
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        H, W = (max(s[i] for s in sizes) for i in (0, 1))
        if size_divisibility > 1:
            H, W = (-(-v // size_divisibility) * size_divisibility for v in (H, W))
        mean = torch.as_tensor(PIXEL_MEAN, dtype=torch.float32, device=images[0].device)
        out = mean.view(1, 3, 1, 1).repeat(len(images), 1, H, W)  # [B, 3, H, W]
        for i, im in enumerate(images):
            out[i, :, : im.shape[-2], : im.shape[-1]] = im
        return cls(out, sizes)

    def to(self, device: torch.device | str) -> ImageBatch:
        return ImageBatch(self.tensor.to(device), list(self.image_sizes))

    def __len__(self) -> int:
        return self.tensor.shape[0]


@dataclass
class SegTarget:
    """Training target of one image.

    labels: int64 [T], contiguous class ids in [0, K).
    masks: bool [T, h, w], one binary mask per segment at the image's (crop) resolution.
    sem_seg: optional int64 [h, w] label map (ignore value kept), used by the per-pixel losses and evaluation.
    """

    labels: torch.Tensor
    masks: torch.Tensor
    sem_seg: torch.Tensor | None = None

    @classmethod
    def from_semantic(cls, label_map: torch.Tensor | np.ndarray, ignore_label: int) -> SegTarget:
        """One target per distinct class present in `label_map` [h, w] (ignore excluded, classes ascending),
        mask = (label == c). Computed with numpy bincount (torch.unique is ~20x slower on the CPU)."""
        sem = label_map.cpu().numpy() if torch.is_tensor(label_map) else np.asarray(label_map)
        sem = sem.astype(np.int64, copy=False)
        if sem.size and sem.min() < 0:
            raise ValueError(f"label map has negative values (min {sem.min()})")
        values = sem[sem != ignore_label]
        classes = np.flatnonzero(np.bincount(values.ravel())) if values.size else np.zeros(0, np.int64)
        masks = torch.from_numpy(sem[None] == classes[:, None, None])  # [T, h, w]
        return cls(torch.from_numpy(classes.astype(np.int64)), masks, torch.from_numpy(sem))

    @classmethod
    def from_panoptic(
        cls, segment_ids: torch.Tensor | np.ndarray, segments: Sequence[dict], sem_seg: torch.Tensor | None = None
    ) -> SegTarget:
        """One target per non-crowd segment.

        segment_ids: int [h, w] panoptic id map (0 = VOID).
        segments: dicts with "id", "category_id" (contiguous) and optionally "iscrowd". Crowd segments are dropped
        (their pixels are not marked ignore, as in the official mapper).
        """
        ids = torch.as_tensor(segment_ids).long()
        kept = [s for s in segments if not s.get("iscrowd", 0)]
        seg_ids = torch.tensor([int(s["id"]) for s in kept], dtype=torch.long)
        labels = torch.tensor([int(s["category_id"]) for s in kept], dtype=torch.long)
        masks = ids.unsqueeze(0) == seg_ids.view(-1, 1, 1)  # [T, h, w]
        return cls(labels, masks, sem_seg)

    def to(self, device: torch.device | str) -> SegTarget:
        sem = None if self.sem_seg is None else self.sem_seg.to(device)
        return SegTarget(self.labels.to(device), self.masks.to(device), sem)


def default_palette(n: int) -> list[tuple[int, int, int]]:
    """`n` distinct, saturated RGB colours (golden-ratio hue walk), deterministic."""
    out = []
    for i in range(n):
        h = (0.61803398875 * i) % 1.0
        s, v = 0.55 + 0.4 * ((i * 7) % 5) / 4, 0.65 + 0.35 * ((i * 3) % 4) / 3
        r, g, b = colorsys.hsv_to_rgb(h, s, v)
        out.append((int(r * 255), int(g * 255), int(b * 255)))
    return out


@dataclass
class DatasetMeta:
    """Every fact about a dataset's label space. Contiguous ids are 0..K-1 in `class_names` order.

    is_thing: per contiguous id, True for countable things (panoptic), False for stuff.
    dataset_ids: per contiguous id, the id used in the dataset's files/JSON (e.g. COCO category ids).
    ignore_label: label-map value that means "not annotated".
    """

    name: str
    class_names: list[str]
    is_thing: list[bool] = field(default_factory=list)
    ignore_label: int = 255
    palette: list[tuple[int, int, int]] = field(default_factory=list)
    dataset_ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        k = len(self.class_names)
        self.is_thing = self.is_thing or [False] * k
        self.palette = [tuple(int(v) for v in c) for c in self.palette or default_palette(k)]
        self.dataset_ids = self.dataset_ids or list(range(k))
        for key in ("is_thing", "palette", "dataset_ids"):
            n = len(getattr(self, key))
            if n != k:
                raise ValueError(f"DatasetMeta {self.name!r}: {key} has {n} entries, expected {k}")
        if len(set(self.dataset_ids)) != k:
            raise ValueError(f"DatasetMeta {self.name!r}: dataset_ids are not unique")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def thing_ids(self) -> list[int]:
        return [i for i, t in enumerate(self.is_thing) if t]

    def contiguous_id(self, dataset_id: int) -> int:
        """Dataset id -> contiguous id; a clear KeyError for an unknown id."""
        lut = {d: i for i, d in enumerate(self.dataset_ids)}
        if dataset_id not in lut:
            raise KeyError(f"{self.name}: unknown category id {dataset_id} (known: {sorted(lut)[:10]}...)")
        return lut[dataset_id]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DatasetMeta:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})
