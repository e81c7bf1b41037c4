"""Toy semantic segmentation in the ADE20K (SceneParsing ADEChallengeData2016) layout.

Textured shapes of several classes on a textured ground, several of them thin (1-2 px poles,
rings, thin-armed stars), so that errors concentrate where upsamplers act: at boundaries and on
structures narrower than the decoder's coarse features. Label maps are 8-bit PNGs with 0 = "other"
(small clutter blobs, ignored after ADE's ``reduce_zero_label``) and 1..6 the classes below.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from uplab.data.toy import render

# Index = PNG label value. 0 is ADE's "other", ignored in training and evaluation.
CLASSES = ("other", "ground", "disc", "box", "pole", "ring", "star")
# Per class: base colour (RGB), stripe period in pixels.
_APPEARANCE = {
    1: ((0.45, 0.42, 0.38), 9.0),
    2: ((0.85, 0.25, 0.20), 3.0),
    3: ((0.20, 0.45, 0.85), 5.0),
    4: ((0.95, 0.85, 0.20), 2.5),
    5: ((0.25, 0.80, 0.35), 4.0),
    6: ((0.80, 0.30, 0.85), 3.5),
}
SUPERSAMPLE = 2


def _random_shape(rng: np.random.Generator, label: int, size: int):
    """A shape of class ``label`` as a function of coordinates ``(y, x)`` -> bool."""
    cy, cx = rng.uniform(0.1, 0.9, 2) * size
    scale = size / 64
    angle = rng.uniform(0, np.pi)
    if label == 2:
        r = rng.uniform(4, 11) * scale
        return lambda y, x: render.disc(y, x, cy, cx, r)
    if label == 3:
        hh, hw = rng.uniform(3, 10, 2) * scale
        return lambda y, x: render.rotated_box(y, x, cy, cx, hh, hw, angle)
    if label == 4:
        length, width = rng.uniform(18, 45) * scale, rng.uniform(1.0, 2.2)
        dy, dx = np.sin(angle) * length / 2, np.cos(angle) * length / 2
        return lambda y, x: render.segment(y, x, cy - dy, cx - dx, cy + dy, cx + dx, width)
    if label == 5:
        r, t = rng.uniform(5, 12) * scale, rng.uniform(1.2, 2.8)
        return lambda y, x: render.ring(y, x, cy, cx, r, t)
    if label == 6:
        arm, width = rng.uniform(6, 13) * scale, rng.uniform(1.0, 2.0)
        angles = angle + np.array([0.0, np.pi / 3, 2 * np.pi / 3]) + rng.uniform(-0.2, 0.2, 3)

        def star(y, x):
            out = render.disc(y, x, cy, cx, 1.5 * width)
            for a in angles:
                dy, dx = np.sin(a) * arm, np.cos(a) * arm
                out = out | render.segment(y, x, cy - dy, cx - dx, cy + dy, cx + dx, width)
            return out

        return star
    raise ValueError(f"no shape for label {label}")


def _texture(rng, label, y, x):
    colour, period = _APPEARANCE[label]
    colour = np.clip(np.array(colour) + rng.normal(0, 0.06, 3), 0, 1)
    pattern = render.stripes(y, x, period * rng.uniform(0.85, 1.15), rng.uniform(0, np.pi))
    return colour * (0.7 + 0.3 * pattern)[..., None]


def render_sample(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One image (float RGB ``[size, size, 3]``) and its label map (uint8, ADE encoding)."""
    hy, hx = render.pixel_grid(size, size, SUPERSAMPLE)
    ly, lx = render.pixel_grid(size, size)
    image = _texture(rng, 1, hy, hx) * render.smooth_noise(rng, *hy.shape, 16 * SUPERSAMPLE) * 0.6
    image = image + 0.4 * _texture(rng, 1, hy, hx)
    label = np.full((size, size), 1, np.uint8)
    shapes = [
        (int(c), _random_shape(rng, int(c), size)) for c in rng.integers(2, 7, rng.integers(3, 7))
    ]
    for _ in range(rng.integers(0, 3)):  # unlabelled clutter ("other")
        cy, cx = rng.uniform(0, size, 2)
        r = rng.uniform(1.5, 4) * size / 64
        shapes.append((0, lambda y, x, cy=cy, cx=cx, r=r: render.disc(y, x, cy, cx, r)))
    for label_value, shape in shapes:
        fine = shape(hy, hx)
        if label_value == 0:
            image[fine] = rng.uniform(0, 1, 3)
        else:
            image[fine] = _texture(rng, label_value, hy[fine], hx[fine])
        label[shape(ly, lx)] = label_value
    image = render.box_downsample(image, SUPERSAMPLE) + rng.normal(0, 0.02, (size, size, 3))
    return image, label


def write(out: Path, rng_for, num_train: int, num_val: int, image_size: int) -> None:
    """Write ``ADEChallengeData2016/{images,annotations}/{training,validation}`` under ``out``."""
    base = out / "ADEChallengeData2016"
    for split, count in (("training", num_train), ("validation", num_val)):
        (base / "images" / split).mkdir(parents=True)
        (base / "annotations" / split).mkdir(parents=True)
        for i in range(count):
            image, label = render_sample(rng_for(split, i), image_size)
            name = f"ADE_{'train' if split == 'training' else 'val'}_{i + 1:08d}"
            render.save_jpeg(base / "images" / split / f"{name}.jpg", image)
            render.save_png(base / "annotations" / split / f"{name}.png", label)
    rows = ["Idx\tRatio\tTrain\tVal\tName"]
    rows += [f"{i}\t0\t0\t0\t{name}" for i, name in enumerate(CLASSES[1:], start=1)]
    (base / "objectInfo150.txt").write_text("\n".join(rows) + "\n")
