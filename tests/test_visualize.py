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
