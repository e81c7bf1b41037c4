"""OpenCV's uint8 RGB <-> HSV conversions (``cv2.COLOR_RGB2HSV`` / ``COLOR_HSV2RGB`` on 8-bit
images, which mmcv's ``bgr2hsv``/``hsv2bgr`` call with the channels swapped), in numpy.

8-bit HSV holds hue in 2-degree steps (0..179), saturation and value in 0..255. The forward
conversion is OpenCV's fixed-point one (12 fractional bits, ``RGB2HSV_b``), the inverse its float
one rounded to uint8 (``HSV2RGB_b``), so the photometric distortion of the mmseg releases
quantises as theirs does.
"""

from __future__ import annotations

import numpy as np

_SHIFT = 12
_HALF = 1 << (_SHIFT - 1)
_DIVISORS = np.arange(256, dtype=np.float64)
with np.errstate(divide="ignore"):
    # OpenCV's sdiv_table and hdiv_table180: round((255 << 12) / v), round((180 << 12) / (6 diff))
    _SATURATION_DIV = np.where(_DIVISORS > 0, np.round((255 << _SHIFT) / _DIVISORS), 0).astype(np.int64)
    _HUE_DIV = np.where(_DIVISORS > 0, np.round((180 << _SHIFT) / (6.0 * _DIVISORS)), 0).astype(np.int64)
# which of (v, v(1-s), v(1-s f), v(1-s(1-f))) is r, g and b in each 60-degree sector
_SECTOR_RGB = np.array([[0, 3, 1], [2, 0, 1], [1, 0, 3], [1, 2, 0], [3, 1, 0], [0, 1, 2]])


def rgb_to_hsv_uint8(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB ``[..., 3]`` -> uint8 HSV (H in 0..179), as ``cv2.cvtColor(rgb, COLOR_RGB2HSV)``."""
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    v = np.maximum(np.maximum(r, g), b)
    diff = v - np.minimum(np.minimum(r, g), b)
    s = (diff * _SATURATION_DIV[v] + _HALF) >> _SHIFT
    h = np.where(v == r, g - b, np.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (h * _HUE_DIV[diff] + _HALF) >> _SHIFT
    h = np.where(h < 0, h + 180, h)
    return np.stack([h, s, v], axis=-1).astype(np.uint8)


def hsv_to_rgb_uint8(hsv: np.ndarray) -> np.ndarray:
    """uint8 HSV (H in 0..179) ``[..., 3]`` -> uint8 RGB, as ``cv2.cvtColor(hsv, COLOR_HSV2RGB)``.

    Float32 arithmetic as OpenCV's, whose vector path fuses ``1 - s * f`` into one multiply-add
    (one rounding; emulated here in float64, exact for float32 inputs).
    """
    f32 = np.float32
    h = hsv[..., 0].astype(f32) * f32(6.0 / 180.0)
    s = hsv[..., 1].astype(f32) * f32(1.0 / 255.0)
    v = hsv[..., 2].astype(f32) * f32(1.0 / 255.0)
    sector = np.floor(h).astype(np.int64)
    f = (h - sector.astype(f32)).astype(np.float64)
    s64 = s.astype(np.float64)
    table = np.stack(
        [
            v,
            v * (1.0 - s64).astype(f32),
            v * (1.0 - s64 * f).astype(f32),
            v * (1.0 - s64 * (f32(1.0) - f.astype(f32))).astype(f32),
        ],
        axis=-1,
    )
    rgb = np.take_along_axis(table, _SECTOR_RGB[sector], axis=-1)
    rgb = np.where((s == 0)[..., None], v[..., None], rgb)
    return np.clip(np.rint(rgb * f32(255.0)), 0, 255).astype(np.uint8)
