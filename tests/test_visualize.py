"""Overlays, legends and grids: pixel values checked against hand-computed blends and positions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskformer import visualize as vis
from maskformer.inference import Instances
from maskformer.structures import DatasetMeta

META = DatasetMeta(
    name="t",
    class_names=["road", "car", "sky"],
    is_thing=[False, True, False],
    palette=[(200, 0, 0), (0, 200, 0), (0, 0, 200)],
)


def photo(h=8, w=10, value=100):
    return np.full((h, w, 3), value, dtype=np.uint8)


def test_outline_marks_borders():
    ids = np.array([[0, 0, 1], [0, 0, 1], [2, 2, 2]])
    expected = np.array([[0, 1, 0], [1, 1, 1], [0, 0, 0]], dtype=bool)
    np.testing.assert_array_equal(vis.outline(ids), expected)


def test_overlay_blends_skips_and_outlines():
    ids = np.zeros((4, 6), dtype=np.int64)
    ids[:, 3:] = 1
    colors = np.array([[0, 0, 0], [250, 50, 0]], dtype=np.uint8)
    out = vis.overlay(photo(4, 6), ids, colors, alpha=0.4, skip=0)
    np.testing.assert_array_equal(out[0, 0], [100, 100, 100])  # skipped id
    np.testing.assert_array_equal(out[0, 5], [160, 80, 60])  # 0.6 * 100 + 0.4 * colour
    np.testing.assert_array_equal(out[0, 4], [160, 80, 60])
    ids[0, 5] = 2
    out = vis.overlay(photo(4, 6), ids, np.vstack([colors, [[9, 9, 9]]]), alpha=0.4, skip=0)
    np.testing.assert_array_equal(out[0, 4], [255, 255, 255])  # border with id 2
    with pytest.raises(ValueError, match="differ in size"):
        vis.overlay(photo(4, 5), ids, colors)


def test_semantic_overlay_legend_and_ignore():
    labels = np.zeros((8, 10), dtype=np.int64)
    labels[:, 5:] = 2
    labels[0, 0] = 255
    out = vis.semantic_overlay(photo(), torch.from_numpy(labels), META, alpha=1.0, ignore_label=255)
    assert out.shape[0] >= 8 and out.shape[1] > 10  # legend panel on the right
    np.testing.assert_array_equal(out[0, 0], [100, 100, 100])  # ignored: untouched
    np.testing.assert_array_equal(out[5, 2], [200, 0, 0])
    legend = out[:, 10:].reshape(-1, 3)
    for cls in (0, 2):  # swatches of the classes present, and not of the absent one
        assert (legend == META.palette[cls]).all(1).any()
    assert not (legend == META.palette[1]).all(1).any()
    assert vis.semantic_overlay(photo(), labels, META, legend=False, ignore_label=255).shape == (8, 10, 3)


def test_panoptic_overlay_shades_instances():
    ids = np.zeros((8, 10), dtype=np.int32)
    ids[:, :3], ids[:, 3:6], ids[:, 6:9] = 1, 2, 3
    segments = [
        {"id": 1, "category_id": 1, "isthing": True},
        {"id": 2, "category_id": 1, "isthing": True},
        {"id": 3, "category_id": 2, "isthing": False},
    ]
    out = vis.panoptic_overlay(photo(), ids, segments, META, alpha=1.0, legend=False)
    np.testing.assert_array_equal(out[4, 0], META.palette[1])  # first instance: the class colour
    assert not np.array_equal(out[4, 4], out[4, 0])  # second instance of the class: another shade
    np.testing.assert_array_equal(out[4, 7], META.palette[2])
    np.testing.assert_array_equal(out[4, 9], [100, 100, 100])  # VOID untouched


def test_instance_overlay_threshold_and_order():
    masks = torch.zeros(3, 8, 10, dtype=torch.bool)
    masks[0, :, :6] = True  # best, overlaps the second
    masks[1, :, 4:] = True
    masks[2, 0, :] = True  # below the threshold
    inst = Instances(masks, torch.tensor([0.9, 0.7, 0.2]), torch.tensor([1, 2, 0]))
    out = vis.instance_overlay(photo(), inst, META, threshold=0.5, alpha=1.0, legend=False)
    np.testing.assert_array_equal(out[4, 2], META.palette[1])
    np.testing.assert_array_equal(out[4, 4], META.palette[1])  # overlap: the higher score on top
    np.testing.assert_array_equal(out[4, 8], META.palette[2])
    assert not (out[0, 7] == META.palette[0]).all()  # the low-score instance is not drawn


def test_grid_places_panels():
    a, b, c = photo(4, 5, 10), photo(6, 3, 20), photo(2, 2, 30)
    out = vis.grid([[a, b], [c]], pad=2)
    assert out.shape == (2 + 6 + 2 + 2 + 2, 2 + 5 + 2 + 3 + 2, 3)
    np.testing.assert_array_equal(out[2, 2], [10, 10, 10])
    np.testing.assert_array_equal(out[2, 9], [20, 20, 20])
    np.testing.assert_array_equal(out[10, 2], [30, 30, 30])
    assert vis.grid([[a]], titles=["image"]).shape[0] == 16 + 4 + 4 + 4
    with pytest.raises(ValueError, match="non-empty"):
        vis.grid([])


def _swatch_side(legend: np.ndarray, color) -> int:
    """Height of the tallest run of `color` pixels in one column of a legend panel."""
    hit = (legend == color).all(-1)
    return int(hit.sum(0).max())


def test_legend_text_scales_with_the_image():
    labels = np.zeros((3000, 4000), dtype=np.int64)
    labels[:, 2000:] = 2
    big = vis.semantic_overlay(photo(3000, 4000), labels, META, alpha=1.0)
    small = vis.semantic_overlay(photo(300, 400), labels[::10, ::10], META, alpha=1.0)
    big_side, small_side = _swatch_side(big[:, 4000:], META.palette[2]), _swatch_side(small[:, 400:], META.palette[2])
    assert vis.text_size((3000, 4000)) == round(4000 / 60) and vis.text_size((300, 400)) == 12
    # swatch: text size + 1 px, less its outline (1/12 of the text size) on both sides
    assert big_side == 67 + 1 - 2 * 5 and small_side == 12 + 1 - 2 * 1
    # the legend names are drawn: dark text pixels in the big panel, tall enough to read at 1/4 scale (>= 12 px)
    rows = np.nonzero((big[:, 4000 + 67 :] < 80).all(-1).any(1))[0]
    assert rows.size and rows.max() - rows.min() >= 40


def test_bitmap_font_fallback_is_scaled(monkeypatch):
    monkeypatch.setattr(vis, "_font", lambda size: None)  # Pillow without FreeType: the bitmap font, scaled
    canvas = vis.Image.new("RGB", (400, 100), "white")
    vis.draw_text(canvas, (0, 0), "Hello", 44)
    ink = np.nonzero((np.asarray(canvas) < 128).all(-1))
    assert ink[0].max() - ink[0].min() >= 20  # 4x the ~7 px glyphs
    assert vis._text_box("Hello", 44) == (4 * int(vis.ImageFont.load_default().getlength("Hello")), 44)


def test_standard_palettes_replace_generated_colours():
    from maskformer.data.meta import ade20k_150, cityscapes_19, coco_panoptic_133

    assert ade20k_150().palette[:2] == [(120, 120, 120), (180, 120, 120)]  # ADE20K wall, building
    assert cityscapes_19().palette[0] == (128, 64, 128) and cityscapes_19().palette[13] == (0, 0, 142)  # road, car
    assert coco_panoptic_133().palette[0] == (220, 20, 60)  # person
    names = "sky|building|pole|road|pavement|tree|sign_symbol|fence|car|pedestrian|bicyclist".split("|")
    camvid = DatasetMeta("camvid", names)  # generated colours, e.g. an older model directory
    out = vis.semantic_overlay(photo(), np.full((8, 10), 8), camvid, alpha=1.0, legend=False)
    np.testing.assert_array_equal(out[4, 4], [64, 0, 128])  # CamVid's car
    assert vis.palette_of(META) == META.palette  # a palette of one's own is kept


def test_shades_of_one_class_are_far_apart():
    for color in [(200, 0, 0), (20, 20, 20), (240, 240, 240), (0, 0, 142), (128, 128, 128)]:
        for n in (1, 2, 7):
            shades = np.array(vis.shades(color, n), dtype=int)
            assert len(shades) == n and tuple(shades[0]) == color
            dist = np.abs(shades[:, None] - shades[None]).sum(-1)  # L1 over RGB, pairwise
            assert n == 1 or dist[~np.eye(n, dtype=bool)].min() >= 0.85 * 765 / (2 * (n - 1)), (color, shades)


def test_instance_captions_and_empty_note():
    masks = torch.zeros(2, 300, 400, dtype=torch.bool)
    masks[0, 100:200, 50:150] = True
    masks[1, 150:250, 250:350] = True
    inst = Instances(masks, torch.tensor([0.9, 0.3]), torch.tensor([1, 2]))
    plain = vis.instance_overlay(photo(300, 400), inst, META, threshold=0.5, alpha=1.0, legend=False)
    out = vis.instance_overlay(photo(300, 400), inst, META, threshold=0.5, alpha=1.0)
    assert out.shape[1] > 400  # legend
    box = out[100:112, 50:150]  # the caption "car 0.90" on the instance colour at the mask's top left
    assert (box == META.palette[1]).all(-1).mean() > 0.3 and (box != META.palette[1]).any()
    np.testing.assert_array_equal(out[150:200, 60:140], plain[150:200, 60:140])  # below the caption: the overlay
    none = vis.instance_overlay(photo(300, 400), inst, META, threshold=0.95)
    assert none.shape == (300, 400, 3)  # no legend: nothing to list
    assert (none[0:2, 0:100] == 40).all() and (none[2:14, 2:100] > 200).any()  # dark box, light text
    np.testing.assert_array_equal(none[100:], photo(300, 400)[100:])  # the photo otherwise untouched
