"""Transforms and recipes (reference section 6.3): sizes, label values, flip/crop/pad consistency, area constraint,
determinism, and the OpenCV-exact HSV conversion of the SSD colour augmentation."""

from __future__ import annotations

import numpy as np
import pytest

from maskformer.config import DataConfig
from maskformer.data.color import ColorAugSSD, bgr_to_hsv, hsv_to_bgr
from maskformer.data.recipes import detr_recipe, eval_transform, semantic_recipe
from maskformer.data.transforms import (
    PadTo,
    RandomCrop,
    RandomFlip,
    ResizeShortestEdge,
    Sample,
    resize_label,
    shortest_edge_size,
)

# cv2 4.14.0 outputs (cv2.cvtColor on a 64x64 tiling of these 16 BGR pixels, the vectorized path), recorded once.
BGR = [[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 200, 30], [200, 10, 30], [30, 10, 200],
       [128, 128, 127], [1, 2, 3], [250, 251, 249], [90, 45, 200], [17, 230, 231], [240, 120, 60], [60, 120, 240],
       [77, 77, 200]]  # fmt: skip
CV2_HSV = [[0, 0, 0], [0, 0, 255], [120, 255, 255], [60, 255, 255], [0, 255, 255], [57, 242, 200], [123, 242, 200],
           [177, 242, 200], [90, 2, 128], [15, 170, 3], [75, 2, 251], [171, 198, 200], [30, 236, 231],
           [110, 191, 240], [10, 191, 240], [0, 157, 200]]  # fmt: skip
# cv2 HSV2BGR of CV2_HSV after S x 1.37 (float32, clipped, truncated) and H + 13 mod 180
CV2_BACK = [[0, 0, 0], [255, 255, 255], [255, 0, 110], [110, 255, 0], [0, 110, 255], [66, 200, 0], [200, 0, 106],
            [0, 66, 200], [128, 127, 126], [0, 2, 3], [250, 251, 249], [0, 26, 200], [0, 231, 130], [240, 0, 24],
            [0, 184, 240], [31, 104, 200]]  # fmt: skip


def _tile(rows) -> np.ndarray:
    return np.tile(np.array(rows, np.uint8).reshape(4, 4, 3), (16, 16, 1))  # [64, 64, 3]


def test_hsv_matches_opencv_both_ways():
    hsv = bgr_to_hsv(_tile(BGR))
    np.testing.assert_array_equal(hsv[:4, :4].reshape(-1, 3), np.array(CV2_HSV))
    hsv[..., 1] = np.clip(hsv[..., 1].astype(np.float32) * np.float32(1.37), 0, 255).astype(np.uint8)
    hsv[..., 0] = (hsv[..., 0].astype(int) + 13) % 180
    np.testing.assert_array_equal(hsv_to_bgr(hsv)[:4, :4].reshape(-1, 3), np.array(CV2_BACK))


def test_hsv_round_trip_is_close():
    x = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    back = hsv_to_bgr(bgr_to_hsv(x)).astype(int)
    assert np.abs(back - x).max() <= 6  # 8-bit HSV quantization (hue has 180 steps)


class _Fixed:
    """A stand-in Generator returning scripted draws, to check each SSD step against the formula."""

    def __init__(self, randoms, uniforms, integers=()):
        self.r, self.u, self.i = list(randoms), list(uniforms), list(integers)

    def random(self):
        return self.r.pop(0)

    def uniform(self, lo, hi):
        return self.u.pop(0)

    def integers(self, lo, hi):
        return self.i.pop(0)


def test_color_aug_ssd_brightness_and_contrast_formula():
    img = np.array([[[10, 100, 250], [0, 128, 255]]], np.uint8)  # RGB [1, 2, 3]
    # brightness fires (+20.7), order A (contrast first), contrast fires (x1.5), saturation and hue skip
    out = ColorAugSSD().apply(img, _Fixed([0.1, 0.2, 0.3, 0.9, 0.9], [20.7, 1.5]))
    ref = np.floor(np.clip(np.floor(np.clip(img.astype(np.float64) + 20.7, 0, 255)) * 1.5, 0, 255))
    np.testing.assert_array_equal(out, ref.astype(np.uint8))


def test_color_aug_ssd_hue_shift_rotates_hue_only():
    img = np.array([[[200, 30, 30]]], np.uint8)  # red (RGB)
    # no brightness; order B: saturation skip, hue fires with +60 (= 120 degrees), contrast skip
    out = ColorAugSSD(hue_delta=60).apply(img, _Fixed([0.9, 0.7, 0.9, 0.1, 0.9], [], [60]))
    assert out[0, 0].argmax() == 1  # red + 120 degrees = green
    np.testing.assert_allclose(np.sort(out[0, 0]), np.sort(img[0, 0]), atol=2)  # a channel permutation


def test_shortest_edge_size_hand_values():
    assert shortest_edge_size(360, 480, 256, 2048) == (256, 341)  # 480 * 256 / 360 = 341.3
    assert shortest_edge_size(480, 360, 256, 2048) == (341, 256)
    assert shortest_edge_size(100, 1000, 512, 2048) == (205, 2048)  # (512, 5120) capped: x 0.4 -> (204.8, 2048)
    assert shortest_edge_size(512, 512, 512, 2048) == (512, 512)


def test_resize_keeps_label_values_and_is_exact_nearest_for_integer_scales():
    rng = np.random.default_rng(0)
    lab = rng.choice(np.array([3, 7, 200, 65535]), size=(13, 17)).astype(np.int32)
    out = resize_label(lab, (29, 41))
    assert set(np.unique(out)) <= set(np.unique(lab))
    np.testing.assert_array_equal(resize_label(lab, (26, 34)), np.kron(lab, np.ones((2, 2), np.int32)))


def test_resize_shortest_edge_moves_image_and_labels_together():
    s = Sample(np.zeros((40, 60, 3), np.uint8), np.zeros((40, 60), np.int32), np.ones((40, 60), np.int32))
    out = ResizeShortestEdge(sizes=(20, 30, 50), max_size=1000)(s, np.random.default_rng(3))
    assert out.image.shape[:2] == out.sem_seg.shape == out.pan_seg.shape
    assert min(out.size) in (20, 30, 50) and out.size[1] == round(out.size[0] * 1.5)


def _coded_sample(h=48, w=64, seed=0) -> Sample:
    """Image red channel == label, blocks of 8 px; panoptic ids = label + 1000."""
    rng = np.random.default_rng(seed)
    lab = np.kron(rng.integers(0, 5, (h // 8, w // 8)), np.ones((8, 8), int)).astype(np.int32)
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = lab
    return Sample(img, lab, lab + 1000)


def test_semantic_recipe_crop_flip_pad_consistent():
    cfg = DataConfig(crop_size=(32, 40), min_size_train=(48,), max_size_train=1000, pad_size=56, color_aug_ssd=False)
    recipe = semantic_recipe(cfg, ignore_label=255)
    flipped = 0
    for seed in range(6):
        src = _coded_sample(seed=seed)
        out = recipe(src, np.random.default_rng(seed))
        assert out.image.shape == (56, 56, 3) and out.sem_seg.shape == (56, 56)
        np.testing.assert_array_equal(out.image[:32, :40, 0], out.sem_seg[:32, :40])
        np.testing.assert_array_equal(out.pan_seg[:32, :40], out.sem_seg[:32, :40] + 1000)
        assert (out.image[32:] == 128).all() and (out.image[:, 40:] == 128).all()
        assert (out.sem_seg[32:] == 255).all() and (out.pan_seg[:, 40:] == 0).all()
        # the crop is a window of the source, possibly mirrored
        windows = [src.sem_seg[y : y + 32, x : x + 40] for y in range(17) for x in range(25)]
        plain = any(np.array_equal(out.sem_seg[:32, :40], win) for win in windows)
        mirrored = any(
            np.array_equal(
                out.sem_seg[
                    :32,
                    :40,
                ][:, ::-1],
                win,
            )
            for win in windows
        )
        assert plain or mirrored
        flipped += int(mirrored and not plain)
    assert 0 < flipped < 6


def test_flip_is_a_mirror_of_all_maps():
    s = _coded_sample()
    out = RandomFlip(prob=1.0)(s, np.random.default_rng(0))
    np.testing.assert_array_equal(out.image, s.image[:, ::-1])
    np.testing.assert_array_equal(out.sem_seg, s.sem_seg[:, ::-1])
    np.testing.assert_array_equal(out.pan_seg, s.pan_seg[:, ::-1])


def test_pad_values_and_too_large_input():
    s = Sample(np.full((3, 4, 3), 7, np.uint8), np.full((3, 4), 2, np.int32), np.full((3, 4), 9, np.int32))
    out = PadTo(size=(5, 6), ignore_label=99)(s, None)
    assert out.image[3:].min() == 128 and out.image[:3, :4].max() == 7
    assert (out.sem_seg[:, 4:] == 99).all() and (out.pan_seg[3:] == 0).all()
    with pytest.raises(ValueError, match="larger than the pad size"):
        PadTo(size=(2, 6), ignore_label=99)(s, None)


def _dominated(h=40, w=40) -> np.ndarray:
    lab = np.zeros((h, w), np.int32)
    lab[:, 16:24] = 1  # a band: 40 % of 16-px-wide windows have class 1 on < 5 columns (class 0 > 75 %)
    lab[:4] = 255
    return lab


def _violates(lab: np.ndarray, ratio: float) -> bool:
    vals, cnt = np.unique(lab, return_counts=True)
    cnt = cnt[vals != 255]
    return not (len(cnt) > 1 and cnt.max() < cnt.sum() * ratio)


def test_category_area_constraint_is_honoured():
    lab = _dominated()
    s = Sample(np.zeros((40, 40, 3), np.uint8), lab)
    kw = dict(crop_size=(16, 16), ignore_label=255)
    with_rule = [RandomCrop(single_category_max_area=0.75, **kw)(s, np.random.default_rng(i)) for i in range(15)]
    without = [RandomCrop(single_category_max_area=1.0, **kw)(s, np.random.default_rng(i)) for i in range(15)]
    assert not any(_violates(o.sem_seg, 0.75) for o in with_rule)
    assert any(_violates(o.sem_seg, 0.75) for o in without)  # the rule changed something


def test_crop_absolute_range_sizes():
    s = Sample(np.zeros((500, 700, 3), np.uint8))
    crop = RandomCrop(crop_size=(384, 600), crop_type="absolute_range")
    sizes = {crop(s, np.random.default_rng(i)).size for i in range(20)}
    assert all(384 <= h <= 500 and 384 <= w <= 600 for h, w in sizes) and len(sizes) > 10


def test_same_seed_same_sample_and_color_aug_changes_only_image():
    cfg = DataConfig(crop_size=(32, 32), min_size_train=(40, 48, 56), pad_size=32)
    recipe = semantic_recipe(cfg, ignore_label=255)
    src = _coded_sample()
    a, b = recipe(src, np.random.default_rng(7)), recipe(src, np.random.default_rng(7))
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.sem_seg, b.sem_seg)
    outs = [recipe(src, np.random.default_rng(i)) for i in range(8)]
    assert len({o.image.tobytes() for o in outs}) >= 6
    assert all(set(np.unique(o.sem_seg)) <= set(range(5)) | {255} for o in outs)


def test_detr_recipe_output_sizes():
    cfg = DataConfig(min_size_train=(480, 512, 544), max_size_train=700, color_aug_ssd=False)
    recipe = detr_recipe(cfg)
    src = Sample(np.zeros((300, 450, 3), np.uint8), None, np.ones((300, 450), np.int32))
    for i in range(12):
        out = recipe(src, np.random.default_rng(i))
        h, w = out.size
        assert min(h, w) in (480, 512, 544) or max(h, w) == 700, (h, w)
        assert out.pan_seg.shape == (h, w) and set(np.unique(out.pan_seg)) == {1}


def test_eval_transform_resizes_short_side():
    out = eval_transform(64, 100)(Sample(np.zeros((30, 40, 3), np.uint8)), None)
    assert out.size == (64, 85)
    out = eval_transform(64, 100)(Sample(np.zeros((30, 120, 3), np.uint8)), None)
    assert out.size == (25, 100)
