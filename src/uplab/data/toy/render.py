"""Drawing primitives shared by the toy generators: coordinate grids, shapes, textures, image I/O.

Shapes are functions of coordinates, so one shape can be evaluated on the pixel-centre grid (for
labels and boxes) and on a finer grid (for anti-aliased images and fractional alpha).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

JPEG_QUALITY = 95


def pixel_grid(height: int, width: int, supersample: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates ``(y, x)`` in pixel units of the sample points of a ``height x width`` image.

    With ``supersample = s`` there are ``s x s`` points per pixel, at the centres of its sub-cells.
    """
    ys = (np.arange(height * supersample) + 0.5) / supersample
    xs = (np.arange(width * supersample) + 0.5) / supersample
    return np.meshgrid(ys, xs, indexing="ij")


def box_downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor x factor`` blocks of an ``[H*f, W*f, ...]`` array (area anti-aliasing)."""
    if factor == 1:
        return image
    h, w = image.shape[0] // factor, image.shape[1] // factor
    blocks = image.reshape(h, factor, w, factor, *image.shape[2:])
    return blocks.mean(axis=(1, 3))


def disc(y, x, cy, cx, radius):
    return (y - cy) ** 2 + (x - cx) ** 2 <= radius**2


def ellipse(y, x, cy, cx, ry, rx, angle):
    c, s = np.cos(angle), np.sin(angle)
    u, v = (x - cx) * c + (y - cy) * s, -(x - cx) * s + (y - cy) * c
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0


def rotated_box(y, x, cy, cx, half_h, half_w, angle):
    c, s = np.cos(angle), np.sin(angle)
    u, v = (x - cx) * c + (y - cy) * s, -(x - cx) * s + (y - cy) * c
    return (np.abs(u) <= half_w) & (np.abs(v) <= half_h)


def ring(y, x, cy, cx, radius, thickness):
    return np.abs(np.hypot(y - cy, x - cx) - radius) <= thickness / 2


def segment(y, x, y0, x0, y1, x1, width):
    """Points within ``width / 2`` of the segment from ``(y0, x0)`` to ``(y1, x1)``."""
    dy, dx = y1 - y0, x1 - x0
    t = np.clip(((y - y0) * dy + (x - x0) * dx) / max(dy * dy + dx * dx, 1e-12), 0.0, 1.0)
    return np.hypot(y - (y0 + t * dy), x - (x0 + t * dx)) <= width / 2


def triangle(y, x, cy, cx, radius, angle):
    """Equilateral triangle inscribed in the circle of ``radius`` around ``(cy, cx)``."""
    inside = np.ones(np.broadcast(y, x).shape, bool)
    for k in range(3):
        a = angle + 2 * np.pi * k / 3
        # Half-planes bounded by the edges, at distance radius / 2 from the centre.
        inside &= (x - cx) * np.cos(a) + (y - cy) * np.sin(a) <= radius / 2
    return inside


def stripes(y, x, period, angle, phase=0.0):
    """Sinusoidal stripes in [0, 1]."""
    t = (x * np.cos(angle) + y * np.sin(angle)) / period
    return 0.5 + 0.5 * np.sin(2 * np.pi * t + phase)


def smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int, channels: int = 1):
    """Value noise in [0, 1]: a coarse random grid bilinearly interpolated to ``height x width``."""
    gh, gw = height // cell + 2, width // cell + 2
    coarse = rng.random((gh, gw, channels))
    ys = np.arange(height) / cell
    xs = np.arange(width) / cell
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = coarse[y0][:, x0] * (1 - fx) + coarse[y0][:, x0 + 1] * fx
    bottom = coarse[y0 + 1][:, x0] * (1 - fx) + coarse[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def save_jpeg(path: Path, rgb: np.ndarray) -> None:
    """RGB float [0, 1] as JPEG at quality 95, as the real datasets store photographs."""
    Image.fromarray(to_uint8(rgb), mode="RGB").save(path, quality=JPEG_QUALITY, subsampling=0)


def save_png(path: Path, array: np.ndarray) -> None:
    """uint8 (grey or RGB) or uint16 (grey) array as a lossless PNG."""
    if array.dtype == np.uint16:
        Image.fromarray(array).save(path)  # PIL stores uint16 arrays as 16-bit greyscale PNG
    elif array.dtype == np.uint8:
        Image.fromarray(array).save(path)
    else:
        raise ValueError(f"save_png takes uint8 or uint16 arrays; got {array.dtype}")
