"""The built-in synthetic dataset: textured stuff regions with occluding thing instances of several shapes.

Written in the COCO panoptic format (JSON + RGB PNGs) plus semantic PNGs (ignore 255) and a meta.json, so it flows
through the same readers as real data (data.format="synthetic" or "coco_panoptic"):
    OUT/{split}/NAME.png  OUT/panoptic_{split}/NAME.png  OUT/annotations/panoptic_{split}.json
    OUT/panoptic_semseg_{split}/NAME.png  OUT/meta.json
Every image is a pure function of (seed, split, index). Each class has a colour and a texture cue (stuff: gradient,
noise, waves, stripes, blotches; things: shape + colour + shading) so a small model learns it in minutes on a CPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..io import panoptic_annotation, save_json, write_image, write_label, write_panoptic
from ..structures import DatasetMeta

STUFF_COLORS = {
    "sky": (120, 180, 240),
    "grass": (70, 150, 50),
    "water": (30, 90, 170),
    "stripes": (170, 120, 80),
    "sand": (215, 190, 140),
}
THING_COLORS = {
    "circle": (220, 40, 40),
    "square": (235, 205, 40),
    "triangle": (200, 60, 210),
    "star": (250, 140, 20),
    "ellipse": (40, 210, 200),
    "cross": (240, 240, 240),
}


@dataclass
class SynthConfig:
    """What `maskformer synth` writes. Defaults: 8 classes, 128x128, 200 train / 50 val images."""

    image_size: tuple[int, int] = (128, 128)
    num_train: int = 200
    num_val: int = 50
    stuff: tuple[str, ...] = ("sky", "grass", "water", "stripes")
    things: tuple[str, ...] = ("circle", "square", "triangle", "star")
    min_instances: int = 1
    max_instances: int = 4
    min_area: int = 16  # thing instances with fewer visible pixels are dropped
    seed: int = 0

    def __post_init__(self) -> None:
        for kind, table in (("stuff", STUFF_COLORS), ("things", THING_COLORS)):
            unknown = [n for n in getattr(self, kind) if n not in table]
            if unknown or not getattr(self, kind):
                raise ValueError(f"synthetic {kind} {unknown or '(none)'} invalid; choose from {sorted(table)}")
        if len(self.stuff) < 2:
            raise ValueError("synthetic data needs at least 2 stuff classes")
        if min(self.image_size) < 32:
            raise ValueError(f"image_size {self.image_size} is too small (>= 32 px per side)")

    def meta(self) -> DatasetMeta:
        """Things first (dataset ids 1..T), then stuff, as in COCO."""
        names = list(self.things) + list(self.stuff)
        palette = [THING_COLORS[n] for n in self.things] + [STUFF_COLORS[n] for n in self.stuff]
        is_thing = [True] * len(self.things) + [False] * len(self.stuff)
        ids = list(range(1, len(names) + 1))
        return DatasetMeta("synthetic", names, is_thing=is_thing, palette=palette, dataset_ids=ids)


def _stuff_texture(kind: str, yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """float [h, w, 3] texture of one stuff class (colour + a class-specific pattern)."""
    h, w = yy.shape
    base = np.array(STUFF_COLORS[kind], np.float32) + rng.uniform(-15, 15, 3)
    img = np.broadcast_to(base, (h, w, 3)).copy()
    if kind == "sky":
        img += (yy / h)[..., None] * np.array([60, 40, 15], np.float32)  # brighter towards the horizon
    elif kind == "grass":
        img[..., 1] += rng.normal(0, 28, (h, w))
        img[..., 0] += rng.normal(0, 10, (h, w))
    elif kind == "water":
        phase = rng.uniform(0, 2 * np.pi)
        img += 30 * np.sin(2 * np.pi * yy / 7 + 0.8 * np.sin(2 * np.pi * xx / 23) + phase)[..., None]
    elif kind == "stripes":
        period = rng.uniform(8, 12)
        img -= 50 * (((xx + yy) / period) % 2 < 1)[..., None]
    elif kind == "sand":
        coarse = rng.normal(0, 20, (h // 8 + 1, w // 8 + 1))
        img += np.kron(coarse, np.ones((8, 8)))[:h, :w, None]
    return img


def _thing_mask(kind: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float, rng) -> np.ndarray:
    """bool [h, w] silhouette of one instance centred at (cy, cx) with radius ~r."""
    dy, dx = yy - cy, xx - cx
    if kind == "circle":
        return dx**2 + dy**2 <= r**2
    if kind == "square":
        return (np.abs(dx) <= r * 0.85) & (np.abs(dy) <= r * 0.85)
    if kind == "triangle":  # apex up: inside the three half-planes
        return (dy <= r * 0.8) & (dy >= -r + 1.8 * np.abs(dx))
    if kind == "ellipse":
        a = rng.uniform(1.3, 1.8)
        return (dx / r) ** 2 + (dy * a / r) ** 2 <= 1
    if kind == "cross":
        return ((np.abs(dx) <= r * 0.3) & (np.abs(dy) <= r)) | ((np.abs(dy) <= r * 0.3) & (np.abs(dx) <= r))
    # star: radius alternates between r and 0.45 r over five points
    theta = (np.arctan2(dy, dx) + np.pi / 2) % (2 * np.pi / 5) / (2 * np.pi / 5)  # [0, 1) within one point
    radius = r * (0.45 + 0.55 * np.abs(2 * theta - 1))
    return np.hypot(dx, dy) <= radius


def _thing_texture(kind: str, yy, xx, cy: float, cx: float, r: float, rng) -> np.ndarray:
    """float [h, w, 3]: class colour with jitter and radial shading (a 3-D look that differs from stuff)."""
    base = np.array(THING_COLORS[kind], np.float32) + rng.uniform(-20, 20, 3)
    shade = 1.0 - 0.35 * np.clip(np.hypot(yy - cy, xx - cx) / max(r, 1.0), 0, 1)
    return base * shade[..., None]


def _stuff_layout(cfg: SynthConfig, yy, xx, rng) -> np.ndarray:
    """int [h, w] stuff index (into cfg.stuff): a wavy horizon, the lower part optionally split by a wavy line."""
    h, w = yy.shape
    n = min(len(cfg.stuff), int(rng.integers(2, 4)))
    kinds = rng.choice(len(cfg.stuff), size=n, replace=False)
    level, period = h * rng.uniform(0.3, 0.6), w * rng.uniform(0.4, 1.0)
    horizon = level + h * 0.06 * np.sin(2 * np.pi * xx / period + rng.uniform(0, 6))
    layout = np.where(yy < horizon, kinds[0], kinds[1])
    if n == 3:
        split = w * rng.uniform(0.3, 0.7) + w * 0.08 * np.sin(2 * np.pi * yy / h + rng.uniform(0, 6))
        layout = np.where((yy >= horizon) & (xx > split), kinds[2], layout)
    return layout


def render(cfg: SynthConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """One image: (uint8 [h, w, 3] RGB, int32 [h, w] segment ids 1..n (no VOID), segments [{id, category}]) with
    category = contiguous class index (things first)."""
    h, w = cfg.image_size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    layout = _stuff_layout(cfg, yy, xx, rng)
    nt = len(cfg.things)
    inst = np.full((h, w), -1, np.int32)  # thing instance index per pixel; later instances occlude earlier ones
    things = []
    for k in range(int(rng.integers(cfg.min_instances, cfg.max_instances + 1))):
        c = int(rng.integers(nt))
        r = rng.uniform(0.09, 0.22) * min(h, w)
        cy, cx = rng.uniform(r * 0.6, h - r * 0.6), rng.uniform(r * 0.6, w - r * 0.6)
        inst[_thing_mask(cfg.things[c], yy, xx, cy, cx, r, rng)] = k
        things.append((c, cy, cx, r))
    image = np.zeros((h, w, 3), np.float32)
    present = np.unique(layout)
    for s in present:
        m = layout == s
        image[m] = _stuff_texture(cfg.stuff[s], yy, xx, rng)[m]
    ids = np.zeros((h, w), np.int32)
    segments = []
    for k, (c, cy, cx, r) in enumerate(things):
        m = inst == k
        if m.sum() < cfg.min_area:
            continue  # too small to keep: its pixels stay the stuff underneath
        image[m] = _thing_texture(cfg.things[c], yy, xx, cy, cx, r, rng)[m]
        segments.append({"id": len(segments) + 1, "category": c})
        ids[m] = segments[-1]["id"]
    for s in present:
        m = (layout == s) & (ids == 0)
        if m.any():
            segments.append({"id": len(segments) + 1, "category": int(s) + nt})
            ids[m] = segments[-1]["id"]
    image = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
    return image, ids, segments


def _write_split(out: Path, split: str, count: int, cfg: SynthConfig, split_index: int) -> None:
    meta = cfg.meta()
    images, annotations = [], []
    for i in range(count):
        image, ids, segments = render(cfg, np.random.default_rng([cfg.seed, split_index, i]))
        name, image_id = f"{split}_{i:05d}.png", split_index * 1_000_000 + i
        sem = np.array([255] + [seg["category"] for seg in segments], np.uint8)[ids]  # segment k -> its class
        write_image(out / split / name, image, compress_level=1)  # fast; lossless either way
        write_panoptic(out / f"panoptic_{split}" / name, ids, compress_level=1)
        write_label(out / f"panoptic_semseg_{split}" / name, sem, compress_level=1)
        images.append({"id": image_id, "file_name": name, "height": ids.shape[0], "width": ids.shape[1]})
        segs = [{"id": seg["id"], "category_id": meta.dataset_ids[seg["category"]]} for seg in segments]
        annotations.append(panoptic_annotation(ids, segs, image_id=image_id, file_name=name))
    categories = [
        dict(id=d, name=n, isthing=int(t), color=list(c), supercategory="shape" if t else "texture")
        for d, n, t, c in zip(meta.dataset_ids, meta.class_names, meta.is_thing, meta.palette)
    ]
    data = {"info": {"description": "maskformer synthetic"}, "images": images, "annotations": annotations}
    save_json(out / "annotations" / f"panoptic_{split}.json", dict(data, categories=categories))


def write_synthetic(out: str | Path, cfg: SynthConfig | None = None) -> Path:
    """Write the dataset described by `cfg` (default SynthConfig()) under `out`; returns `out`."""
    cfg = cfg or SynthConfig()
    out = Path(out)
    for split_index, (split, count) in enumerate((("train", cfg.num_train), ("val", cfg.num_val))):
        if count > 0:
            _write_split(out, split, count, cfg, split_index)
    meta = cfg.meta().to_dict()
    save_json(out / "meta.json", dict(meta, format="synthetic", ignore_label=255, generator=asdict(cfg)))
    return out
