"""Pictures people can look at: colour overlays with outlines and a legend, and side-by-side grids.

All functions take and return uint8 RGB numpy arrays [H, W, 3]; colours come from `DatasetMeta.palette`. Things in
panoptic/instance overlays get a per-segment shade of their class colour so neighbouring instances stay distinct.
The training demo reuses `semantic_overlay` and `grid` (image / ground truth / prediction).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from maskformer.inference import Instances
from maskformer.io import to_numpy
from maskformer.structures import DatasetMeta

Color = tuple[int, int, int]


def outline(ids: np.ndarray) -> np.ndarray:
    """bool [H, W]: pixels whose right or lower neighbour has another id (segment borders)."""
    edge = np.zeros(ids.shape, dtype=bool)
    edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    edge[:-1, :] |= ids[:-1, :] != ids[1:, :]
    return edge


def overlay(
    image: np.ndarray, ids: np.ndarray, colors: np.ndarray, *, alpha: float = 0.5, skip: int | None = None
) -> np.ndarray:
    """Blend colors[ids] (colors uint8 [n, 3]) over image, draw borders in white; pixels with id == skip untouched."""
    image, ids = to_numpy(image), to_numpy(ids).astype(np.int64)
    if image.shape[:2] != ids.shape:
        raise ValueError(f"image {image.shape[:2]} and segmentation {ids.shape} differ in size")
    painted = ids != skip if skip is not None else np.ones(ids.shape, dtype=bool)
    col = np.asarray(colors, dtype=np.float32)[np.where(painted, ids, 0)]
    out = image.astype(np.float32)
    out[painted] = (1 - alpha) * out[painted] + alpha * col[painted]
    out[outline(ids) & painted] = 255
    return out.round().clip(0, 255).astype(np.uint8)


def add_legend(image: np.ndarray, entries: Sequence[tuple[str, Color]], *, max_entries: int = 40) -> np.ndarray:
    """A panel right of the image with a colour swatch and a name per entry (PIL's default font)."""
    entries = list(entries)[:max_entries]
    if not entries:
        return image
    font = ImageFont.load_default()
    line = 14
    width = 24 + max(int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(n, font=font)) for n, _ in entries)
    h = max(image.shape[0], line * len(entries) + 8)
    canvas = Image.new("RGB", (image.shape[1] + width + 8, h), (255, 255, 255))
    canvas.paste(Image.fromarray(image), (0, 0))
    draw = ImageDraw.Draw(canvas)
    x0 = image.shape[1] + 6
    for i, (name, color) in enumerate(entries):
        y = 4 + i * line
        draw.rectangle([x0, y + 1, x0 + 12, y + 11], fill=tuple(int(c) for c in color), outline=(0, 0, 0))
        draw.text((x0 + 18, y), name, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def _by_area(values: np.ndarray, ids: Sequence[int]) -> list[int]:
    counts = np.bincount(values.ravel(), minlength=max(ids, default=0) + 1)
    return sorted(ids, key=lambda i: -counts[i])


def semantic_overlay(
    image, labels, meta: DatasetMeta, *, alpha: float = 0.5, legend: bool = True, ignore_label: int | None = None
) -> np.ndarray:
    """Class colours over the photo; `ignore_label` pixels (e.g. ground-truth void) are left as they are."""
    labels = to_numpy(labels).astype(np.int64)
    palette = np.asarray(meta.palette + [(0, 0, 0)], dtype=np.uint8)  # last: for ids outside the classes
    safe = np.where((labels >= 0) & (labels < meta.num_classes), labels, meta.num_classes)
    skip = meta.num_classes if ignore_label is not None else None
    if ignore_label is not None:
        safe = np.where(labels == ignore_label, meta.num_classes, safe)
    out = overlay(image, safe, palette, alpha=alpha, skip=skip)
    present = [int(c) for c in np.unique(safe) if c < meta.num_classes]
    entries = [(meta.class_names[c], meta.palette[c]) for c in _by_area(safe, present)]
    return add_legend(out, entries) if legend else out


def shade(color: Color, k: int) -> Color:
    """The k-th variation of a colour (k = 0: itself), for telling instances of one class apart."""
    if k == 0:
        return tuple(int(c) for c in color)
    rng = np.random.default_rng(k)
    return tuple(int(v) for v in np.clip(np.asarray(color) + rng.integers(-60, 61, 3), 0, 255))


def panoptic_overlay(image, ids, segments: Sequence[dict], meta: DatasetMeta, *, alpha=0.5, legend=True) -> np.ndarray:
    """One colour per segment (stuff: the class colour; things: shades of it); VOID (0) pixels untouched."""
    ids = to_numpy(ids).astype(np.int64)
    colors = np.zeros((max([int(ids.max(initial=0))] + [s["id"] for s in segments]) + 1, 3), dtype=np.uint8)
    seen: dict[int, int] = {}
    for seg in segments:
        c = seg["category_id"]
        colors[seg["id"]] = shade(meta.palette[c], seen.get(c, 0) if seg.get("isthing") else 0)
        seen[c] = seen.get(c, 0) + 1
    out = overlay(image, ids, colors, alpha=alpha, skip=0)
    classes = list(dict.fromkeys(s["category_id"] for s in segments))
    entries = [(meta.class_names[c], meta.palette[c]) for c in classes]
    return add_legend(out, entries) if legend else out


def instance_overlay(
    image, instances: Instances, meta: DatasetMeta, *, threshold: float = 0.5, alpha=0.5, legend=True
) -> np.ndarray:
    """Instances (best first) with score >= threshold as thing segments, higher scores painted on top."""
    keep = (to_numpy(instances.scores) >= threshold).nonzero()[0]
    ids = np.zeros(to_numpy(image).shape[:2], dtype=np.int64)
    for n, k in reversed(list(enumerate(keep, start=1))):  # ascending score: the best painted last
        ids[to_numpy(instances.masks[k])] = n
    segments = [{"id": n, "category_id": int(instances.labels[k]), "isthing": True} for n, k in enumerate(keep, 1)]
    return panoptic_overlay(image, ids, segments, meta, alpha=alpha, legend=legend)


def prediction_overlay(image, pred, meta: DatasetMeta, *, threshold: float = 0.5, **kw) -> np.ndarray:
    """The overlay of the result a `maskformer.pipeline.Prediction` holds (semantic, panoptic or instances)."""
    if pred.semantic is not None:
        return semantic_overlay(image, pred.semantic, meta, **kw)
    if pred.panoptic is not None:
        return panoptic_overlay(image, pred.panoptic, pred.segments, meta, **kw)
    return instance_overlay(image, pred.instances, meta, threshold=threshold, **kw)


def grid(rows: Sequence[Sequence[np.ndarray]], titles: Sequence[str] | None = None, *, pad: int = 4) -> np.ndarray:
    """Panels side by side, one row per list (e.g. [image, ground truth, prediction]); optional column titles."""
    if not rows or not all(rows):
        raise ValueError("grid needs at least one non-empty row of panels")
    n_cols = max(len(r) for r in rows)
    col_w = [max(r[c].shape[1] for r in rows if c < len(r)) for c in range(n_cols)]
    row_h = [max(p.shape[0] for p in r) for r in rows]
    top = 16 if titles else 0
    canvas = Image.new("RGB", (sum(col_w) + pad * (n_cols + 1), top + sum(row_h) + pad * (len(rows) + 1)), "white")
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    for c, title in enumerate(titles or []):
        draw.text((pad + sum(col_w[:c]) + pad * c, 2), title, fill=(0, 0, 0), font=font)
    y = top + pad
    for r, panels in enumerate(rows):
        x = pad
        for c, panel in enumerate(panels):
            canvas.paste(Image.fromarray(to_numpy(panel).astype(np.uint8)), (x, y))
            x += col_w[c] + pad
        y += row_h[r] + pad
    return np.asarray(canvas)
