"""Pictures people can look at: colour overlays with outlines and a legend, and side-by-side grids.
All functions take and return uint8 RGB numpy arrays [H, W, 3]."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from maskformer.data.meta import standard_palette
from maskformer.inference import Instances
from maskformer.io import to_numpy
from maskformer.structures import DatasetMeta, default_palette

Color = tuple[int, int, int]
BITMAP_FONT_SIZE = 11  # Pillow's built-in bitmap font: ~11 px per line


def palette_of(meta: DatasetMeta) -> list[Color]:
    """meta.palette, unless it is the generated one and the classes have a standard palette (older model dirs)."""
    if meta.palette == default_palette(meta.num_classes):
        return standard_palette(meta) or meta.palette
    return meta.palette


def text_size(image_shape: Sequence[int]) -> int:
    """Font size in pixels for an image [H, W, ...]: 1/60 of the long side (12 px or more): a 4000x3000 photo fitted
    to a 1000-px-wide window shows 67-px text at ~17 px."""
    return max(12, round(max(image_shape[:2]) / 60))


def _font(size: int):
    """Pillow's default font at `size` (FreeType, Pillow >= 10.1), else None (the bundled bitmap font, scaled)."""
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return None
    return font if isinstance(font, ImageFont.FreeTypeFont) else None


def _text_box(text: str, size: int) -> tuple[int, int]:
    """(width, height) that `draw_text` covers."""
    font = _font(size)
    if font is not None:
        return int(np.ceil(font.getlength(text))), size
    scale = max(1, round(size / BITMAP_FONT_SIZE))
    return int(ImageFont.load_default().getlength(text)) * scale, BITMAP_FONT_SIZE * scale


def draw_text(canvas: Image.Image, xy: tuple[int, int], text: str, size: int, fill: Color = (0, 0, 0)) -> None:
    """Draw `text` with its top-left corner at xy, about `size` px tall (the bitmap font scaled by an integer)."""
    font = _font(size)
    if font is not None:
        ImageDraw.Draw(canvas).text((xy[0], xy[1] - font.getbbox("Hg")[1] // 2), text, fill=fill, font=font)
        return
    w, h = _text_box(text, size)
    scale = h // BITMAP_FONT_SIZE
    mask = Image.new("L", (w // scale, BITMAP_FONT_SIZE), 0)
    ImageDraw.Draw(mask).text((0, 0), text, fill=255, font=ImageFont.load_default())
    canvas.paste(Image.new("RGB", (w, h), fill), xy, mask.resize((w, h), Image.NEAREST))


def caption(canvas: Image.Image, xy: tuple[int, int], text: str, size: int, background: Color) -> None:
    """Text on a box of `background` (black or white text, whichever contrasts), kept inside the canvas."""
    w, h = _text_box(text, size)
    pad = max(1, size // 6)
    x = int(min(max(0, xy[0]), max(0, canvas.width - w - 2 * pad)))
    y = int(min(max(0, xy[1]), max(0, canvas.height - h - 2 * pad)))
    ImageDraw.Draw(canvas).rectangle([x, y, x + w + 2 * pad, y + h + 2 * pad], fill=tuple(background))
    luma = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
    draw_text(canvas, (x + pad, y + pad), text, size, (0, 0, 0) if luma > 140 else (255, 255, 255))


def add_note(image: np.ndarray, text: str) -> np.ndarray:
    """`text` in a dark box at the top left of the image (e.g. "no instance with score >= 0.50")."""
    canvas = Image.fromarray(to_numpy(image))
    caption(canvas, (0, 0), text, text_size(image.shape), (40, 40, 40))
    return np.asarray(canvas)


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


def add_legend(image: np.ndarray, entries: Sequence[tuple[str, Color]], *, max_entries: int = 60) -> np.ndarray:
    """A panel right of the image with a colour swatch and a name per entry, text sized for the image (text_size);
    entries that do not fit the image height continue in further columns."""
    entries = list(entries)[:max_entries]
    if not entries:
        return image
    size = text_size(image.shape)
    line, pad = round(size * 1.35), max(4, size // 2)
    rows = max(1, (image.shape[0] - pad) // line)
    columns = [entries[i : i + rows] for i in range(0, len(entries), rows)]
    widths = [size + pad + max(_text_box(n, size)[0] for n, _ in col) + pad for col in columns]
    h = max(image.shape[0], line * min(rows, len(entries)) + pad)
    canvas = Image.new("RGB", (image.shape[1] + pad + sum(widths), h), (255, 255, 255))
    canvas.paste(Image.fromarray(image), (0, 0))
    draw = ImageDraw.Draw(canvas)
    x0 = image.shape[1] + pad
    for col, width in zip(columns, widths):
        for i, (name, color) in enumerate(col):
            y = pad // 2 + i * line
            box = [x0, y + (line - size) // 2, x0 + size, y + (line + size) // 2]
            draw.rectangle(box, fill=tuple(int(c) for c in color), outline=(0, 0, 0), width=max(1, size // 12))
            draw_text(canvas, (x0 + size + pad, y + (line - size) // 2), name, size)
        x0 += width
    return np.asarray(canvas)


def semantic_overlay(
    image, labels, meta: DatasetMeta, *, alpha: float = 0.5, legend: bool = True, ignore_label: int | None = None
) -> np.ndarray:
    """Class colours over the photo; `ignore_label` pixels (e.g. ground-truth void) are left as they are."""
    labels = to_numpy(labels).astype(np.int64)
    colors = palette_of(meta)
    palette = np.asarray(colors + [(0, 0, 0)], dtype=np.uint8)  # last: for ids outside the classes
    safe = np.where((labels >= 0) & (labels < meta.num_classes), labels, meta.num_classes)
    if ignore_label is not None:
        safe[labels == ignore_label] = meta.num_classes
    out = overlay(image, safe, palette, alpha=alpha, skip=None if ignore_label is None else meta.num_classes)
    area = np.bincount(safe.ravel(), minlength=meta.num_classes + 1)
    present = sorted((int(c) for c in np.unique(safe) if c < meta.num_classes), key=lambda c: -area[c])  # largest first
    return add_legend(out, [(meta.class_names[c], colors[c]) for c in present]) if legend else out


def shades(color: Color, n: int) -> list[Color]:
    """`n` variations of a colour for telling instances of one class apart, the first the colour itself; the others
    evenly spaced along the line black - colour - white, more of them on the side with more room (lighter shades of
    a dark colour), alternating sides so the first few differ most."""
    c = np.asarray(color, dtype=np.float64)
    n_up = round((n - 1) * (255 * 3 - c.sum()) / (255 * 3))
    n_down = n - 1 - n_up
    up = [c + (255 - c) * 0.85 * j / n_up for j in range(n_up, 0, -1)]
    down = [c * (1 - 0.85 * j / n_down) for j in range(n_down, 0, -1)]
    order = [x for pair in zip(up, down) for x in pair] + up[len(down) :] + down[len(up) :]
    return [tuple(int(v) for v in np.clip(np.round(x), 0, 255)) for x in [c] + order]


def panoptic_overlay(
    image, ids, segments: Sequence[dict], meta: DatasetMeta, *, alpha=0.5, legend=True, captions=None
) -> np.ndarray:
    """One colour per segment (stuff: the class colour; things: shades of it); VOID (0) pixels untouched.

    captions: {segment id: text} drawn at each segment's top left (instance overlays: class and score)."""
    ids = to_numpy(ids).astype(np.int64)
    palette = palette_of(meta)
    colors = np.zeros((max([int(ids.max(initial=0))] + [s["id"] for s in segments]) + 1, 3), dtype=np.uint8)
    things = [s["category_id"] for s in segments if s.get("isthing")]
    variants = {c: shades(palette[c], things.count(c)) for c in set(things)}
    for seg in segments:
        c = seg["category_id"]
        colors[seg["id"]] = variants[c].pop(0) if seg.get("isthing") else palette[c]
    out = overlay(image, ids, colors, alpha=alpha, skip=0)
    if not legend:
        return out
    if not segments:
        return add_note(out, "nothing segmented")
    if captions:
        canvas = Image.fromarray(out)
        size = max(12, round(text_size(out.shape) * 0.8))
        for seg_id, text in captions.items():
            ys, xs = np.nonzero(ids == seg_id)
            if len(ys):
                caption(canvas, (int(xs.min()), int(ys.min())), text, size, tuple(int(v) for v in colors[seg_id]))
        out = np.asarray(canvas)
    classes = list(dict.fromkeys(s["category_id"] for s in segments))
    return add_legend(out, [(meta.class_names[c], palette[c]) for c in classes])


def instance_overlay(
    image, instances: Instances, meta: DatasetMeta, *, threshold: float = 0.5, alpha=0.5, legend=True
) -> np.ndarray:
    """Instances (best first) with score >= threshold as thing segments, higher scores painted on top; with `legend`,
    each is captioned "class score", and a note says so when no instance reaches the threshold."""
    scores = to_numpy(instances.scores)
    keep = (scores >= threshold).nonzero()[0]
    ids = np.zeros(to_numpy(image).shape[:2], dtype=np.int64)
    for n, k in reversed(list(enumerate(keep, start=1))):  # ascending score: the best painted last
        ids[to_numpy(instances.masks[k])] = n
    labels = [int(instances.labels[k]) for k in keep]
    segments = [{"id": n, "category_id": c, "isthing": True} for n, c in enumerate(labels, 1)]
    if legend and not segments:
        best = f" (best {scores.max():.2f})" if len(scores) else ""
        return add_note(to_numpy(image), f"no instance with score >= {threshold:.2f}{best}")
    captions = {n: f"{meta.class_names[c]} {scores[k]:.2f}" for n, (c, k) in enumerate(zip(labels, keep), 1)}
    return panoptic_overlay(image, ids, segments, meta, alpha=alpha, legend=legend, captions=captions)


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
    for c, title in enumerate(titles or []):
        draw_text(canvas, (pad + sum(col_w[:c]) + pad * c, 2), title, 12)
    y = top + pad
    for r, panels in enumerate(rows):
        x = pad
        for c, panel in enumerate(panels):
            canvas.paste(Image.fromarray(to_numpy(panel).astype(np.uint8)), (x, y))
            x += col_w[c] + pad
        y += row_h[r] + pad
    return np.asarray(canvas)
