"""Toy image matting in the Composition-1k (Adobe Deep Image Matting) layout.

Foregrounds are blobs with hair: dozens of thin curved strands, a quarter to half a pixel wide and
partly transparent, leaving the blob. Alpha is rendered at 4x and box-filtered, so it is
fractional along the blob's edge and on every strand, as real hair mattes are. Training data are
composited on the fly from ``fg/``, ``alpha/`` and ``bg/`` (as DIM, IndexNet and A2U train); the
test set is pre-composited into ``merged/`` with ``trimaps/`` (0 / 128 / 255), as Composition-1k.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from uplab.data.toy import render

SUPERSAMPLE = 4
TEST_TRIMAP_RADIUS = 3


def render_alpha(rng: np.random.Generator, size: int) -> np.ndarray:
    """A hairy-blob alpha matte, float ``[size, size]`` in [0, 1]."""
    s = size * SUPERSAMPLE
    hy, hx = render.pixel_grid(size, size, SUPERSAMPLE)
    body = np.zeros((s, s), bool)
    centre = rng.uniform(0.35, 0.65, 2) * size
    for _ in range(rng.integers(1, 4)):
        cy, cx = centre + rng.normal(0, 0.08 * size, 2)
        ry, rx = rng.uniform(0.12, 0.25, 2) * size
        body |= render.ellipse(hy, hx, cy, cx, ry, rx, rng.uniform(0, np.pi))
    alpha = body.astype(np.float64)
    edge_y, edge_x = np.nonzero(body & ~ndimage.binary_erosion(body))
    if edge_y.size == 0:
        return render.box_downsample(alpha, SUPERSAMPLE)
    for _ in range(rng.integers(15, 45)):
        k = rng.integers(edge_y.size)
        y, x = edge_y[k] + 0.5, edge_x[k] + 0.5
        heading = np.arctan2(y - centre[0] * SUPERSAMPLE, x - centre[1] * SUPERSAMPLE)
        opacity = rng.uniform(0.5, 1.0)
        thickness = int(rng.integers(1, 3))  # fine pixels: 1/4 or 1/2 of an image pixel
        steps = int(rng.uniform(6, 18) * SUPERSAMPLE * 2)
        turns = np.cumsum(rng.normal(0, 0.08, steps))
        ys = y + np.cumsum(0.5 * np.sin(heading + turns))
        xs = x + np.cumsum(0.5 * np.cos(heading + turns))
        iy, ix = np.floor(ys).astype(int), np.floor(xs).astype(int)
        for dy in range(thickness):
            inside = (iy + dy >= 0) & (iy + dy < s) & (ix >= 0) & (ix < s)
            np.maximum.at(alpha, (iy[inside] + dy, ix[inside]), opacity)
    return render.box_downsample(alpha, SUPERSAMPLE)


def render_foreground(rng: np.random.Generator, size: int) -> np.ndarray:
    """Saturated striped foreground, float RGB ``[size, size, 3]`` (defined everywhere, as DIM's)."""
    y, x = render.pixel_grid(size, size)
    colour = rng.uniform(0.55, 1.0, 3)
    colour[rng.integers(3)] = rng.uniform(0.0, 0.3)
    shade = render.smooth_noise(rng, size, size, 12)
    pattern = render.stripes(y, x, rng.uniform(2.5, 5), rng.uniform(0, np.pi))[..., None]
    return colour * (0.75 + 0.25 * pattern) * (0.8 + 0.2 * shade)


def render_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Cluttered, muted background scene, float RGB ``[size, size, 3]``."""
    y, x = render.pixel_grid(size, size)
    noise = 0.7 * render.smooth_noise(rng, size, size, 8, 3) + 0.3 * render.smooth_noise(
        rng, size, size, 4, 3
    )
    image = 0.15 + 0.5 * (0.4 * noise + 0.6 * noise.mean(axis=2, keepdims=True))
    for _ in range(rng.integers(2, 6)):
        cy, cx = rng.uniform(0, size, 2)
        mask = render.rotated_box(
            y, x, cy, cx, *rng.uniform(2, 10, 2) * size / 64, rng.uniform(0, np.pi)
        )
        image[mask] = (
            rng.uniform(0.1, 0.6, 3)
            * (0.7 + 0.3 * render.stripes(y[mask], x[mask], 3.0, 0.5))[:, None]
        )
    return image


def trimap_from_alpha(alpha: np.ndarray, radius: int) -> np.ndarray:
    """uint8 trimap: 255 where alpha is 1 after eroding, 0 where it is 0 after dilating, else 128.

    ``alpha`` is uint8 (0..255); the band is ``radius`` pixels wide on each side of the partial
    region, as DIM draws its trimaps by dilating the unknown region of the ground truth.
    """
    structure = np.ones((2 * radius + 1, 2 * radius + 1), bool)
    foreground = ndimage.binary_erosion(alpha == 255, structure, border_value=1)
    possible = ndimage.binary_dilation(alpha > 0, structure)
    trimap = np.full(alpha.shape, 128, np.uint8)
    trimap[foreground] = 255
    trimap[~possible] = 0
    return trimap


def composite(fg: np.ndarray, bg: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``alpha * fg + (1 - alpha) * bg`` for float images in [0, 1]; alpha ``[H, W]``."""
    return alpha[..., None] * fg + (1 - alpha[..., None]) * bg


def write(out: Path, rng_for, num_train: int, num_val: int, image_size: int) -> None:
    """Write ``Combined_Dataset/{Training_set,Test_set}`` under ``out``.

    Training_set: ``fg/*.png``, ``alpha/*.png``, ``bg/*.jpg`` and ``training_fg_names.txt`` /
    ``training_bg_names.txt`` (the i-th training sample composites fg ``i // (n_bg // n_fg)`` over
    bg ``i``, DIM's pairing). Test_set: ``merged/``, ``alpha/``, ``trimaps/`` (one name each).
    """
    train = out / "Combined_Dataset" / "Training_set"
    for folder in ("fg", "alpha", "bg"):
        (train / folder).mkdir(parents=True)
    fg_names, bg_names = [], []
    for i in range(num_train):
        rng = rng_for("train", i)
        name = f"toy_fg_{i:05d}"
        render.save_png(
            train / "alpha" / f"{name}.png", render.to_uint8(render_alpha(rng, image_size))
        )
        render.save_png(
            train / "fg" / f"{name}.png", render.to_uint8(render_foreground(rng, image_size))
        )
        render.save_jpeg(train / "bg" / f"toy_bg_{i:05d}.jpg", render_background(rng, image_size))
        fg_names.append(f"{name}.png")
        bg_names.append(f"toy_bg_{i:05d}.jpg")
    (train / "training_fg_names.txt").write_text("\n".join(fg_names) + "\n")
    (train / "training_bg_names.txt").write_text("\n".join(bg_names) + "\n")

    test = out / "Combined_Dataset" / "Test_set"
    for folder in ("merged", "alpha", "trimaps"):
        (test / folder).mkdir(parents=True)
    for i in range(num_val):
        rng = rng_for("test", i)
        alpha = render.to_uint8(render_alpha(rng, image_size))
        fg, bg = render_foreground(rng, image_size), render_background(rng, image_size)
        merged = composite(fg, bg, alpha / 255.0)
        name = f"toy_test_{i:05d}.png"
        render.save_png(test / "merged" / name, render.to_uint8(merged))
        render.save_png(test / "alpha" / name, alpha)
        render.save_png(test / "trimaps" / name, trimap_from_alpha(alpha, TEST_TRIMAP_RADIUS))
