"""The SSD colour augmentation (detectron2 `ColorAugSSDTransform`) with OpenCV-compatible 8-bit HSV in numpy.

OpenCV's 8-bit BGR<->HSV is reproduced bit for bit (checked against cv2 4.14 on 2^18 random pixels): hue in 0..180
(degrees / 2), saturation and value in 0..255, fixed-point division tables with 12 fractional bits forward, the
float32 sector formula of OpenCV's vectorized path for the inverse. No OpenCV dependency.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

_SHIFT = 12
_HALF = 1 << (_SHIFT - 1)
_I = np.arange(1, 256, dtype=np.float64)
# round-half-even of (255 << 12) / v and (180 << 12) / (6 diff), index 0 -> 0 (as OpenCV's tables)
_SDIV = np.concatenate([[0], np.rint((255 << _SHIFT) / _I)]).astype(np.int32)
_HDIV = np.concatenate([[0], np.rint((180 << _SHIFT) / (6.0 * _I))]).astype(np.int32)
# per hue sector: which of (v, p, q, t) gives b, g, r
_SECTOR = np.array([[1, 3, 0], [1, 0, 2], [3, 0, 1], [0, 2, 1], [0, 1, 3], [2, 1, 0]])


def _inverse_factors() -> np.ndarray:
    """float32 [3, 256, 256]: per output channel (b, g, r) and (H, S), the factor F with out = trunc(v F 255).

    OpenCV's vectorized path: h = H * (6/180) (float32), sector = trunc(h) mod 6, f = h - trunc(h),
    s = S / 255, factors 1, 1 - s, 1 - s f and 1 - s (1 - f), the last two as fused multiply-adds (one rounding).
    """
    f32 = np.float32
    h = np.arange(256, dtype=f32)[:, None] * (f32(6.0) / f32(180.0))  # [256, 1]
    s = np.arange(256, dtype=f32)[None, :] * f32(1.0 / 255.0)  # [1, 256]
    pre = np.trunc(h)
    f = h - pre
    sector = (pre - np.trunc(pre * f32(1.0 / 6.0)) * f32(6.0)).astype(np.int64)[:, 0]  # [256]
    one = np.ones((256, 256), f32)
    p = np.broadcast_to(f32(1.0) - s, (256, 256))
    q = (1.0 - s.astype(np.float64) * f.astype(np.float64)).astype(f32)  # fused 1 - s*f
    t = (1.0 - s.astype(np.float64) * (f32(1.0) - f).astype(np.float64)).astype(f32)
    tab = np.stack([one, p, q, t])  # [4, H, S]
    pick = _SECTOR[sector].T  # [3, H]: which factor each channel takes
    return np.stack([tab[pick[c], np.arange(256)] for c in range(3)])  # [3, H, S]


_FACTORS = _inverse_factors()
_V = (np.arange(256, dtype=np.float32) * np.float32(1.0 / 255.0)).astype(np.float32)


def _forward_tables() -> tuple[np.ndarray, np.ndarray]:
    """uint8 lookup tables of OpenCV's fixed-point forward formulas: S[v * 256 + diff] and
    H[(num + 255) * 256 + diff], num = the hue numerator in [-255, 1275]."""
    v, diff = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    s = (diff * _SDIV[v] + _HALF) >> _SHIFT
    num, diff = np.meshgrid(np.arange(-255, 1276), np.arange(256), indexing="ij")
    h = (num * _HDIV[diff] + _HALF) >> _SHIFT
    h = np.where(h < 0, h + 180, h)
    return s.astype(np.uint8).ravel(), (h % 256).astype(np.uint8).ravel()


_S_TABLE, _H_TABLE = _forward_tables()


def bgr_to_hsv(bgr: np.ndarray) -> np.ndarray:
    """uint8 [h, w, 3] BGR -> uint8 [h, w, 3] HSV (H in 0..179), as cv2.cvtColor(COLOR_BGR2HSV)."""
    b, g, r = (bgr[..., i].astype(np.int32) for i in range(3))
    v = np.maximum(np.maximum(b, g), r)
    diff = v - np.minimum(np.minimum(b, g), r)
    # hue numerator per max channel (r wins ties, then g), in units of diff/60 degrees
    num = np.where(v == r, g - b, np.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    out = np.empty(bgr.shape, np.uint8)
    out[..., 0] = _H_TABLE[(num + 255) * 256 + diff]
    out[..., 1] = _S_TABLE[v * 256 + diff]
    out[..., 2] = v
    return out


def hsv_to_bgr(hsv: np.ndarray) -> np.ndarray:
    """uint8 [h, w, 3] HSV (H in 0..179) -> uint8 [h, w, 3] BGR, as cv2.cvtColor(COLOR_HSV2BGR), via _FACTORS."""
    hs = hsv[..., 0].astype(np.intp) * 256 + hsv[..., 1]  # [h, w] index into the flattened (H, S) table
    v = _V[hsv[..., 2]]
    out = np.empty(hsv.shape, np.uint8)
    for c in range(3):
        out[..., c] = np.trunc(v * _FACTORS[c].ravel()[hs] * np.float32(255.0))  # values lie in 0..255
    return out


def _convert(x: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """x * alpha + beta in float32, clipped to 0..255, truncated to uint8 (the SSD transform's `convert`)."""
    return np.clip(x.astype(np.float32) * np.float32(alpha) + np.float32(beta), 0, 255).astype(np.uint8)


class ColorAugSSD:
    """Photometric distortion of SSD, applied to an RGB uint8 image in BGR/HSV space.

    Brightness (p=0.5, +-32), then with p=0.5 either contrast -> saturation -> hue or saturation -> hue -> contrast,
    each step firing with p=0.5: contrast x U(0.5, 1.5), saturation (S channel) x U(0.5, 1.5), hue + randint(-18, 18)
    mod 180. All draws come from the passed numpy Generator.
    """

    brightness_delta = 32
    contrast_range = saturation_range = (0.5, 1.5)

    def __init__(self, *, hue_delta: int = 18):
        self.hue_delta = hue_delta

    def __call__(self, sample, rng: np.random.Generator):
        """As a transform (maskformer.data.transforms): the image augmented, the label maps untouched."""
        return replace(sample, image=self.apply(sample.image, rng))

    def apply(self, rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """uint8 [h, w, 3] RGB -> augmented uint8 [h, w, 3] RGB."""
        img = rgb[..., ::-1]  # RGB -> BGR
        if rng.random() < 0.5:
            img = _convert(img, beta=rng.uniform(-self.brightness_delta, self.brightness_delta))
        steps = (self._contrast, self._saturation, self._hue)
        if rng.random() >= 0.5:
            steps = (self._saturation, self._hue, self._contrast)
        for step in steps:
            if rng.random() < 0.5:
                img = step(img, rng)
        return np.ascontiguousarray(img[..., ::-1])

    def _contrast(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return _convert(img, alpha=rng.uniform(*self.contrast_range))

    def _saturation(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        hsv = bgr_to_hsv(img)
        hsv[..., 1] = _convert(hsv[..., 1], alpha=rng.uniform(*self.saturation_range))
        return hsv_to_bgr(hsv)

    def _hue(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        hsv = bgr_to_hsv(img)
        delta = int(rng.integers(-self.hue_delta, self.hue_delta + 1))
        hsv[..., 0] = (hsv[..., 0].astype(np.int64) + delta) % 180
        return hsv_to_bgr(hsv)
