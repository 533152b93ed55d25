"""The map-style dataset every reader returns: records (file paths + panoptic segments) + meta + transforms.

Items are `(image uint8 [3, h, w], SegTarget, info)`. At test time the target stays at the original resolution
(what the evaluators compare against); `info` keeps the original size, the file names and the JSON segments.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

from ..io import DatasetError, read_image, read_label, read_panoptic
from ..structures import DatasetMeta, SegTarget
from .transforms import Sample

TARGETS = ("semantic", "panoptic")


@dataclass
class Record:
    """One image. sem_seg / pan_seg: label-map and panoptic-PNG paths (either may be None);
    segments: the panoptic JSON segments_info (dataset category ids); json_file names their source in errors."""

    image: str
    sem_seg: str | None = None
    pan_seg: str | None = None
    segments: list[dict] = field(default_factory=list)
    image_id: int | str = ""
    json_file: str = ""


class SegDataset(Dataset):
    """Records of one split, decoded and (in training) augmented on access.

    label_fn: optional raw-label -> class-id map (e.g. reduce-zero-label for raw ADE20K PNGs).
    target: "semantic" (one target per class present) or "panoptic" (one per non-crowd segment; needs pan_seg).
    transform: `t(sample, rng) -> sample`; applied to image + labels when train, to the image alone otherwise.
    """

    def __init__(
        self,
        records: list[Record],
        meta: DatasetMeta,
        *,
        source: str,
        target: str = "semantic",
        transform: Callable | None = None,
        train: bool = False,
        label_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    ):
        if not records:
            raise DatasetError(f"{source}: the dataset is empty (no image/label pairs found)")
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        if target == "panoptic" and any(r.pan_seg is None for r in records):
            raise DatasetError(f"{source}: panoptic targets need panoptic PNGs, which this dataset does not have")
        self.records, self.meta, self.source, self.target = records, meta, source, target
        self.transform, self.train, self.label_fn = transform, train, label_fn
        self._rng: np.random.Generator | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        mode = "train" if self.train else "test"
        return f"SegDataset({self.meta.name!r}, {len(self)} images, {self.target}, {mode}, source={self.source!r})"

    def load(self, index: int) -> tuple[Sample, list[dict]]:
        """Decode record `index` (no augmentation): the Sample and its segments with contiguous category ids."""
        r = self.records[index]
        image = read_image(r.image)
        sem, pan, segs = None, None, []
        if r.sem_seg:
            sem = read_label(r.sem_seg)
            sem = sem if self.label_fn is None else self.label_fn(sem)
            k, ignore = self.meta.num_classes, self.meta.ignore_label
            bad = (sem < 0) | ((sem >= k) & (sem != ignore))  # neither a class id in [0, K) nor the ignore label
            if bad.any():
                raise DatasetError(
                    f"{r.sem_seg}: label values {np.unique(sem[bad])[:8].tolist()} are outside the {k} classes "
                    f"0..{k - 1} of {self.meta.name!r} and are not the ignore value {ignore}"
                )
        if r.pan_seg:
            pan, segs, painted = self._read_panoptic(r)
            sem = painted if sem is None else sem
        for path, lab in ((r.sem_seg, sem), (r.pan_seg, pan)):
            if path and lab.shape != image.shape[:2]:
                h, w = image.shape[:2]
                raise DatasetError(
                    f"{path}: size {lab.shape[0]}x{lab.shape[1]} does not match the image {r.image} ({h}x{w})"
                )
        return Sample(image, sem, pan), segs

    def _read_panoptic(self, r: Record) -> tuple[np.ndarray, list[dict], np.ndarray]:
        """Panoptic ids int32 [h, w], segments (contiguous ids), and the semantic map painted from them
        (Mask2Former's rule: every segment, crowd included, gets its class; VOID -> ignore)."""
        ids = read_panoptic(r.pan_seg)
        seg_ids = np.array([int(s["id"]) for s in r.segments], dtype=np.int64)
        classes = np.array([self.meta.contiguous_id(int(s["category_id"])) for s in r.segments], dtype=np.int64)
        sem, found, pos, sorted_ids = paint_semantic(ids, seg_ids, classes, self.meta.ignore_label)
        stray = ~found & (ids != 0)  # every PNG id must be listed in segments_info ...
        if stray.any():
            vals = np.unique(ids[stray])[:8].tolist()
            raise DatasetError(
                f"{r.pan_seg}: segment ids {vals} appear in the PNG but not in segments_info of image "
                f"{r.image_id!r} in {r.json_file}"
            )
        counts = np.bincount(pos[found], minlength=len(sorted_ids))  # ... and every listed segment appear in the PNG
        if (counts == 0).any():
            missing = sorted_ids[counts == 0][:8].tolist()
            raise DatasetError(
                f"{r.json_file}: segments {missing} of image {r.image_id!r} are listed in segments_info but "
                f"absent from the PNG {r.pan_seg}"
            )
        segs = [
            {"id": int(s["id"]), "category_id": int(c), "iscrowd": int(s.get("iscrowd", 0))}
            for s, c in zip(r.segments, classes)
        ]
        return ids, segs, sem

    def __getitem__(self, key: int | tuple[int, int]):
        """key: an index, or (index, seed) as yielded by `ResumableSampler` (seeded, worker-independent)."""
        if isinstance(key, tuple):
            index, rng = int(key[0]), np.random.default_rng(int(key[1]))
        else:
            if self._rng is None:  # plain integer keys: one generator per process, from torch's (per-worker) seed
                self._rng = np.random.default_rng(torch.initial_seed() % 2**63)
            index, rng = int(key), self._rng
        sample, segs = self.load(index)
        r, (h, w) = self.records[index], sample.size
        info = dict(file_name=r.image, image_id=r.image_id, height=h, width=w)
        info.update(sem_seg_file_name=r.sem_seg, pan_seg_file_name=r.pan_seg)
        if r.pan_seg:
            info["segments_info"] = [dict(s) for s in r.segments]
        if self.train and self.transform is not None:
            sample = self.transform(sample, rng)
        target, image = self._target(sample, segs), sample.image
        if not self.train and self.transform is not None:  # test time: the image alone is resized
            image = self.transform(Sample(image), rng).image
        info["image_size"] = (int(image.shape[0]), int(image.shape[1]))
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), target, info

    def _target(self, sample: Sample, segs: list[dict]) -> SegTarget:
        sem = None if sample.sem_seg is None else torch.from_numpy(sample.sem_seg.astype(np.int64))
        if self.target == "panoptic":
            return SegTarget.from_panoptic(torch.from_numpy(sample.pan_seg.astype(np.int64)), segs, sem)
        if sem is None:
            raise DatasetError(f"{self.source}: semantic targets need label maps, which this dataset does not have")
        return SegTarget.from_semantic(sample.sem_seg, self.meta.ignore_label)  # one mask per class present


def paint_semantic(ids: np.ndarray, seg_ids: np.ndarray, classes: np.ndarray, ignore_label: int):
    """Semantic map int32 [h, w] from panoptic ids [h, w]: each listed segment's class, other pixels ignore.

    Returns (sem, found [h, w] bool, pos [h, w] index into sorted_ids, sorted_ids) for the consistency checks.
    """
    order = np.argsort(seg_ids)
    sorted_ids = seg_ids[order]
    pos = np.searchsorted(sorted_ids, ids).clip(0, max(len(sorted_ids) - 1, 0))  # [h, w]
    found = sorted_ids[pos] == ids if len(sorted_ids) else np.zeros(ids.shape, bool)
    sem = np.where(found, classes[order][pos] if len(sorted_ids) else 0, ignore_label).astype(np.int32)
    return sem, found, pos, sorted_ids
