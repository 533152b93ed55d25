"""The SSD colour augmentation (detectron2 `ColorAugSSDTransform`) with OpenCV-compatible 8-bit HSV in numpy.

OpenCV's 8-bit BGR<->HSV is reproduced bit for bit (checked against cv2 4.14 on 2^18 random pixels): hue in 0..180
(degrees / 2), saturation and value in 0..255, fixed-point division tables with 12 fractional bits forward, the
float32 sector formula of OpenCV's vectorized path for the inverse. No OpenCV dependency.
"""

from __future__ import annotations

import numpy as np

_SHIFT = 12
_HALF = 1 << (_SHIFT - 1)
_I = np.arange(1, 256, dtype=np.float64)
# round-half-even of (255 << 12) / v and (180 << 12) / (6 diff), index 0 -> 0 (as OpenCV's tables)
_SDIV = np.concatenate([[0], np.rint((255 << _SHIFT) / _I)]).astype(np.int64)
_HDIV = np.concatenate([[0], np.rint((180 << _SHIFT) / (6.0 * _I))]).astype(np.int64)
# per hue sector: which of (v, p, q, t) gives b, g, r
_SECTOR = np.array([[1, 3, 0], [1, 0, 2], [3, 0, 1], [0, 2, 1], [0, 1, 3], [2, 1, 0]])


def bgr_to_hsv(bgr: np.ndarray) -> np.ndarray:
    """uint8 [h, w, 3] BGR -> uint8 [h, w, 3] HSV (H in 0..179), as cv2.cvtColor(COLOR_BGR2HSV)."""
    x = bgr.astype(np.int64)
    b, g, r = x[..., 0], x[..., 1], x[..., 2]
    v = x.max(axis=-1)
    diff = v - x.min(axis=-1)
    s = (diff * _SDIV[v] + _HALF) >> _SHIFT
    # hue numerator per max channel (r wins ties, then g), in units of diff/60 degrees
    h = np.where(v == r, g - b, np.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (h * _HDIV[diff] + _HALF) >> _SHIFT
    h = np.where(h < 0, h + 180, h)
    return np.stack([h, s, v], axis=-1).astype(np.uint8)


def hsv_to_bgr(hsv: np.ndarray) -> np.ndarray:
    """uint8 [h, w, 3] HSV (H in 0..179) -> uint8 [h, w, 3] BGR, as cv2.cvtColor(COLOR_HSV2BGR).

    Follows OpenCV 4.x's vectorized 8-bit path: float32 sector formula, 1 - s*f as a fused multiply-add,
    truncation (not rounding) of value * 255.
    """
    f32 = np.float32
    h = hsv[..., 0].astype(f32) * (f32(6.0) / f32(180.0))
    s = hsv[..., 1].astype(f32) * f32(1.0 / 255.0)
    v = hsv[..., 2].astype(f32) * f32(1.0 / 255.0)
    pre = np.trunc(h)
    f = h - pre
    sector = (pre - np.trunc(pre * f32(1.0 / 6.0)) * f32(6.0)).astype(np.int64)
    s64 = s.astype(np.float64)
    q = (1.0 - s64 * f.astype(np.float64)).astype(f32)  # fused 1 - s*f (one rounding)
    t = (1.0 - s64 * (f32(1.0) - f).astype(np.float64)).astype(f32)
    tab = np.stack([v, v * (f32(1.0) - s), v * q, v * t], axis=-1)  # [h, w, 4]: v, p, q, t
    bgr = np.take_along_axis(tab, _SECTOR[sector], axis=-1)  # [h, w, 3]
    return np.clip(np.trunc(bgr * f32(255.0)), 0, 255).astype(np.uint8)


def _convert(x: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """x * alpha + beta in float32, clipped to 0..255, truncated to uint8 (the SSD transform's `convert`)."""
    return np.clip(x.astype(np.float32) * np.float32(alpha) + np.float32(beta), 0, 255).astype(np.uint8)


class ColorAugSSD:
    """Photometric distortion of SSD, applied to an RGB uint8 image in BGR/HSV space.

    Brightness (p=0.5, +-32), then with p=0.5 either contrast -> saturation -> hue or saturation -> hue -> contrast,
    each step firing with p=0.5: contrast x U(0.5, 1.5), saturation (S channel) x U(0.5, 1.5), hue + randint(-18, 18)
    mod 180. All draws come from the passed numpy Generator.
    """

    def __init__(
        self,
        *,
        brightness_delta: float = 32,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_delta: int = 18,
    ):
        self.brightness_delta = brightness_delta
        self.contrast_range = contrast_range
        self.saturation_range = saturation_range
        self.hue_delta = hue_delta

    def apply(self, rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """uint8 [h, w, 3] RGB -> augmented uint8 [h, w, 3] RGB."""
        img = rgb[..., ::-1]  # RGB -> BGR
        if rng.random() < 0.5:
            img = _convert(img, beta=rng.uniform(-self.brightness_delta, self.brightness_delta))
        steps = (self._contrast, self._saturation, self._hue)
        if rng.random() >= 0.5:
            steps = (self._saturation, self._hue, self._contrast)
        for step in steps:
            img = step(img, rng)
        return np.ascontiguousarray(img[..., ::-1])

    def _contrast(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() < 0.5:
            return _convert(img, alpha=rng.uniform(*self.contrast_range))
        return img

    def _saturation(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() < 0.5:
            hsv = bgr_to_hsv(img)
            hsv[..., 1] = _convert(hsv[..., 1], alpha=rng.uniform(*self.saturation_range))
            return hsv_to_bgr(hsv)
        return img

    def _hue(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() < 0.5:
            hsv = bgr_to_hsv(img)
            delta = int(rng.integers(-self.hue_delta, self.hue_delta + 1))
            hsv[..., 0] = (hsv[..., 0].astype(np.int64) + delta) % 180
            return hsv_to_bgr(hsv)
        return img
