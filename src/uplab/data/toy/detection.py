"""Toy object detection in the COCO 2017 layout (``instances_{train,val}2017.json``).

Textured squares, discs and triangles of log-uniform size (from a few pixels, COCO "small", to
medium) on a cluttered background, never overlapping, with tight boxes from their pixel masks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from uplab.data.toy import render

CATEGORIES = ("square", "disc", "triangle")
_COLOURS = ((0.9, 0.3, 0.2), (0.2, 0.7, 0.9), (0.95, 0.85, 0.3))
SUPERSAMPLE = 2


def _shape(category: int, cy: float, cx: float, radius: float, angle: float):
    if category == 1:
        return lambda y, x: render.rotated_box(y, x, cy, cx, radius * 0.8, radius * 0.8, angle)
    if category == 2:
        return lambda y, x: render.disc(y, x, cy, cx, radius)
    return lambda y, x: render.triangle(y, x, cy, cx, radius * 1.1, angle)


def render_sample(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[dict]]:
    """One image (float RGB) and its objects: ``{"category_id", "bbox" (xywh), "area"}``."""
    hy, hx = render.pixel_grid(size, size, SUPERSAMPLE)
    ly, lx = render.pixel_grid(size, size)
    image = 0.25 + 0.35 * render.smooth_noise(
        rng, size * SUPERSAMPLE, size * SUPERSAMPLE, 10 * SUPERSAMPLE, 3
    )
    occupied = np.zeros((size, size), bool)
    objects = []
    for _ in range(rng.integers(2, 9)):
        radius = float(np.exp(rng.uniform(np.log(3.0), np.log(size / 4))))
        cy, cx = rng.uniform(radius, size - radius, 2)
        category = int(rng.integers(1, len(CATEGORIES) + 1))
        shape = _shape(category, cy, cx, radius, rng.uniform(0, np.pi))
        mask = shape(ly, lx)
        if not mask.any() or (mask & _grow(occupied)).any():
            continue
        occupied |= mask
        fine = shape(hy, hx)
        colour = np.clip(np.array(_COLOURS[category - 1]) + rng.normal(0, 0.08, 3), 0, 1)
        pattern = render.stripes(hy[fine], hx[fine], rng.uniform(2.5, 5), rng.uniform(0, np.pi))
        image[fine] = colour * (0.7 + 0.3 * pattern)[:, None]
        rows, cols = np.nonzero(mask)
        x0, y0 = int(cols.min()), int(rows.min())
        bbox = [float(x0), float(y0), float(cols.max() + 1 - x0), float(rows.max() + 1 - y0)]
        objects.append({"category_id": category, "bbox": bbox, "area": float(mask.sum())})
    image = render.box_downsample(image, SUPERSAMPLE) + rng.normal(0, 0.02, (size, size, 3))
    return image, objects


def _grow(mask: np.ndarray) -> np.ndarray:
    """The mask grown by one pixel, so that objects keep a gap between them."""
    grown = mask.copy()
    grown[1:] |= mask[:-1]
    grown[:-1] |= mask[1:]
    grown[:, 1:] |= mask[:, :-1]
    grown[:, :-1] |= mask[:, 1:]
    return grown


def write(out: Path, rng_for, num_train: int, num_val: int, image_size: int) -> None:
    """Write ``train2017/``, ``val2017/`` (JPEG) and ``annotations/instances_{train,val}2017.json``."""
    (out / "annotations").mkdir(parents=True)
    categories = [
        {"id": i, "name": n, "supercategory": "shape"} for i, n in enumerate(CATEGORIES, 1)
    ]
    annotation_id = 1
    for split, count in (("train", num_train), ("val", num_val)):
        folder = out / f"{split}2017"
        folder.mkdir()
        images, annotations = [], []
        for i in range(count):
            image, objects = render_sample(rng_for(split, i), image_size)
            image_id = i + 1
            file_name = f"{image_id:012d}.jpg"
            render.save_jpeg(folder / file_name, image)
            images.append(
                {"id": image_id, "file_name": file_name, "width": image_size, "height": image_size}
            )
            for obj in objects:
                annotations.append(
                    {
                        "id": annotation_id,
                        "image_id": image_id,
                        "iscrowd": 0,
                        "segmentation": [],
                        **obj,
                    }
                )
                annotation_id += 1
        document = {
            "info": {"description": "uplab toy detection"},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        (out / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(document))
