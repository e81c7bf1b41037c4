"""Toy monocular depth in the NYU Depth v2 layout used by BTS.

Indoor-like layered scenes: a slanted back wall and a floor receding to the horizon, boxes on
slanted planes in front of it and thin poles, which leave depth discontinuities at every object
boundary. Appearance carries depth the way a room does: texture period shrinks and haze grows
with distance, so depth can be read from the image but its edges need fine features. Depth is a
16-bit PNG in millimetres (0 = no measurement, as the holes in NYU's Kinect depth); RGB is JPEG.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from uplab.data.toy import render

FOCAL = 518.8579  # NYUv2's focal length in pixels, written into the file lists like BTS's
MIN_DEPTH, MAX_DEPTH = 0.5, 9.5
SUPERSAMPLE = 2
_SCENES = ("living_room", "kitchen", "office", "bedroom")


def _plane(y, x, size, z0, gy, gx):
    return z0 + gy * (y / size - 0.5) + gx * (x / size - 0.5)


def _surfaces(rng: np.random.Generator, size: int):
    """Scene surfaces, far to near: ``(mask_fn, depth_fn, colour, period)`` each."""
    wall_z, gy, gx = rng.uniform(5.5, 8.5), rng.uniform(-1, 1), rng.uniform(-1.5, 1.5)
    horizon = rng.uniform(0.5, 0.7) * size
    near_z = rng.uniform(1.2, 2.0)
    wall_at_horizon = _plane(horizon, size / 2, size, wall_z, gy, gx)

    def wall_depth(y, x):
        return _plane(y, x, size, wall_z, gy, gx)

    def floor_depth(y, x):
        t = np.clip((y - horizon) / (size - horizon), 0, 1)
        return wall_at_horizon + (near_z - wall_at_horizon) * t

    surfaces = [
        (lambda y, x: y < horizon, wall_depth, rng.uniform(0.5, 0.9, 3), 4.0),
        (lambda y, x: y >= horizon, floor_depth, rng.uniform(0.3, 0.7, 3), 3.0),
    ]
    objects = []
    for _ in range(rng.integers(2, 6)):
        z = rng.uniform(1.0, wall_z - 1.0)
        cy, cx = rng.uniform(0.15, 0.85, 2) * size
        hh, hw = rng.uniform(3, 14, 2) * size / 64
        angle = rng.uniform(-0.4, 0.4)
        oy, ox = rng.uniform(-0.8, 0.8, 2)
        objects.append(
            (
                z,
                lambda y, x, cy=cy, cx=cx, hh=hh, hw=hw, a=angle: render.rotated_box(
                    y, x, cy, cx, hh, hw, a
                ),
                lambda y, x, z=z, oy=oy, ox=ox: _plane(y, x, size, z, oy, ox),
                rng.uniform(0.1, 1.0, 3),
                rng.uniform(2.5, 6.0),
            )
        )
    for _ in range(rng.integers(0, 3)):
        z = rng.uniform(1.0, 4.0)
        x0, width = rng.uniform(0.1, 0.9) * size, rng.uniform(1.0, 2.5)
        tilt = rng.uniform(-6, 6) * size / 64
        objects.append(
            (
                z,
                lambda y, x, x0=x0, w=width, t=tilt: render.segment(
                    y, x, 0, x0 - t, size, x0 + t, w
                ),
                lambda y, x, z=z: np.full(np.shape(y), z),
                rng.uniform(0.1, 1.0, 3),
                2.0,
            )
        )
    objects.sort(key=lambda o: -o[0])
    return surfaces + [o[1:] for o in objects]


def _depth_and_surface(surfaces, y, x):
    depth = np.full(y.shape, np.inf)
    index = np.zeros(y.shape, np.int64)
    for k, (mask_fn, depth_fn, _, _) in enumerate(surfaces):
        mask = mask_fn(y, x)
        z = np.where(mask, depth_fn(y, x), np.inf)
        closer = z < depth
        depth[closer], index[closer] = z[closer], k
    return np.clip(depth, MIN_DEPTH, MAX_DEPTH), index


def render_sample(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One RGB image (float ``[size, size, 3]``) and its depth in millimetres (uint16)."""
    surfaces = _surfaces(rng, size)
    hy, hx = render.pixel_grid(size, size, SUPERSAMPLE)
    depth_fine, index = _depth_and_surface(surfaces, hy, hx)
    image = np.zeros(hy.shape + (3,))
    for k, (_, _, colour, period) in enumerate(surfaces):
        mask = index == k
        # Perspective: the texture's period on screen shrinks with distance.
        pattern = render.stripes(
            hy[mask], hx[mask], period * 3.0 / depth_fine[mask], rng.uniform(0, np.pi)
        )
        image[mask] = colour * (0.65 + 0.35 * pattern)[:, None]
    haze = (depth_fine / MAX_DEPTH)[..., None]
    image = image * (1 - 0.7 * haze) + 0.7 * haze * np.array([0.75, 0.78, 0.85])
    image = render.box_downsample(image, SUPERSAMPLE) + rng.normal(0, 0.015, (size, size, 3))
    ly, lx = render.pixel_grid(size, size)
    depth, _ = _depth_and_surface(surfaces, ly, lx)
    depth_mm = np.round(depth * 1000).astype(np.uint16)
    for _ in range(rng.integers(0, 3)):  # sensor holes: no measurement
        y0, x0 = rng.integers(0, size - 4, 2)
        h, w = rng.integers(1, 5, 2)
        depth_mm[y0 : y0 + h, x0 : x0 + w] = 0
    return image, depth_mm


def write(out: Path, rng_for, num_train: int, num_val: int, image_size: int) -> None:
    """Write BTS's NYUv2 layout under ``out``.

    ``sync/<scene>/rgb_XXXXX.jpg`` + ``sync_depth_XXXXX.png`` (training),
    ``official_splits/test/<scene>/...`` (test), and the lists
    ``nyudepthv2_{train,test}_files_with_gt.txt`` with lines ``rgb_path depth_path focal``.
    """
    for split, count, folder, list_name in (
        ("train", num_train, out / "sync", "nyudepthv2_train_files_with_gt.txt"),
        ("test", num_val, out / "official_splits" / "test", "nyudepthv2_test_files_with_gt.txt"),
    ):
        lines = []
        for i in range(count):
            scene = f"{_SCENES[i % len(_SCENES)]}_{i // 25:04d}"
            (folder / scene).mkdir(parents=True, exist_ok=True)
            image, depth_mm = render_sample(rng_for(split, i), image_size)
            render.save_jpeg(folder / scene / f"rgb_{i:05d}.jpg", image)
            render.save_png(folder / scene / f"sync_depth_{i:05d}.png", depth_mm)
            lines.append(f"/{scene}/rgb_{i:05d}.jpg /{scene}/sync_depth_{i:05d}.png {FOCAL}")
        (out / list_name).write_text("\n".join(lines) + "\n")
