"""The Composition-1k pipelines of the A2U matting release (dongdong93/a2u_matting,
``scripts/data_generator.py``, config ``adobe.yaml``), which FADE's and SAPA's matting runs use.

Training works on the layers, before compositing (the dataset hands ``fg``, ``alpha``, ``bg`` and
a ``draw_foreground`` callable; ``Composition1k(..., composite=False)``): with probability 0.5 a
second random foreground overlaid behind the first, with probability 0.25 fg and alpha squashed
to 640x640 (both the release's ``DataGenerator._composite_fg``) -> random affine of fg and alpha
(rotation +-30 degrees only when the longer side is at least 1024, scale 0.8-1.25 per axis, shear
+-10 degrees, flips with probability 0.5 per axis; nearest resampling) -> horizontal flip ->
trimap from the alpha by eroding fg and bg with random elliptic kernels of 1-29 px -> a 512 crop
whose top-left corner is a random unknown pixel -> hue/saturation/value jitter of the foreground
-> composite (which also returns ``fg`` and ``bg`` in [0, 1] for the composition loss).
Test: the pre-composited image at its own size, reflect-padded to a multiple of 16 (the network's
output stride); trimap and alpha are padded with 0 (known background), so the pad is outside the
evaluated unknown region and the metrics are those of the unpadded image. The paper rows pad in the
task instead (``MattingTask(eval_size_divisor=16)``: the trimap channel of the input reflected as
well and the output cropped back, as the release does) and build this with ``size_divisor=None``.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image
from scipy import ndimage

from uplab.data import transforms as T
from uplab.data.pipelines.common import PadTo, hsv_to_rgb, rgb_to_hsv

LAYER_KEYS = ("fg", "alpha", "bg")


def _check_layers(sample: dict) -> None:
    missing = [k for k in LAYER_KEYS if k not in sample]
    if missing:
        raise ValueError(
            f"the A2U training pipeline composites itself and needs {LAYER_KEYS}; missing {missing} "
            "(build the dataset with Composition1k(..., composite=False))"
        )


class OverlaySecondForeground:
    """With probability ``p``, a second random training foreground (from the sample's
    ``draw_foreground(rng) -> (fg, alpha)``), resized to the first (nearest), goes behind it:
    ``alpha = 1 - (1 - a1)(1 - a2)`` and ``fg = (a1 fg1 + (1 - a1) a2 fg2) / (alpha + 1e-5)``
    truncated to uint8 (so opaque pixels lose one level to the 1e-5, as in the release), skipped
    when the union is opaque everywhere (the release's ``_composite_fg``). The release keeps that alpha as float; here it is rounded to uint8 (at
    most 0.5/255 off; 0 and 255 stay exact, so the trimap is the same)."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        _check_layers(sample)
        if "draw_foreground" not in sample:
            raise ValueError(
                "OverlaySecondForeground needs the sample's draw_foreground(rng) -> (fg, alpha) to "
                "draw a second foreground (Composition1k(..., composite=False) hands it)"
            )
        if rng.random() >= self.p:
            return sample
        fg2, alpha2 = sample["draw_foreground"](rng)
        h, w = sample["alpha"].shape
        fg2 = T.resize(fg2, (w, h), Image.NEAREST).astype(np.float32)
        a2 = T.resize(alpha2, (w, h), Image.NEAREST).astype(np.float32)[..., None] / 255.0
        a1 = sample["alpha"].astype(np.float32)[..., None] / 255.0
        union = 1 - (1 - a1) * (1 - a2)
        if not (union < 1).any():
            return sample
        fg = (sample["fg"].astype(np.float32) * a1 + fg2 * (1 - a1) * a2) / (union + 1e-5)
        alpha = np.round(union[..., 0] * 255.0).astype(np.uint8)
        return {**sample, "fg": fg.astype(np.uint8), "alpha": alpha}


class SquashForeground:
    """With probability ``p``, ``fg`` and ``alpha`` resized to ``size`` x ``size`` (nearest),
    whatever their aspect ratio (the release's ``_composite_fg``)."""

    def __init__(self, p: float = 0.25, size: int = 640):
        self.p, self.size = p, size

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        if rng.random() >= self.p:
            return sample
        size = (self.size, self.size)
        return {
            **sample,
            "fg": T.resize(sample["fg"], size, Image.NEAREST),
            "alpha": T.resize(sample["alpha"], size, Image.NEAREST),
        }


class RandomAffineLayers:
    """Random affine warp of ``fg`` and ``alpha`` about the image centre (the release's
    ``RandomAffine(degrees=30, scale=[0.8, 1.25], shear=10, flip=0.5)``)."""

    def __init__(
        self,
        degrees: float = 30,
        scale=(0.8, 1.25),
        shear: float = 10,
        flip: float = 0.5,
        min_side_for_rotation: int = 1024,
    ):
        self.degrees, self.scale, self.shear, self.flip = degrees, tuple(scale), shear, flip
        self.min_side_for_rotation = min_side_for_rotation

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        _check_layers(sample)
        fg, alpha = sample["fg"], sample["alpha"]
        rows, cols = alpha.shape
        rotate = max(rows, cols) >= self.min_side_for_rotation
        angle = math.radians(rng.uniform(-self.degrees, self.degrees) if rotate else 0.0)
        sx, sy = rng.uniform(*self.scale), rng.uniform(*self.scale)
        shear = math.radians(rng.uniform(-self.shear, self.shear))
        fx, fy = np.where(rng.random(2) < self.flip, -1.0, 1.0)
        # inverse map (output -> input) of flip, scale, rotation and shear about the centre
        ix, iy = fx / sx, fy / sy
        d = math.cos(angle + shear) * math.cos(angle) + math.sin(angle + shear) * math.sin(angle)
        m = (
            np.array(
                [
                    [math.cos(angle) * ix, math.sin(angle + shear) * ix],
                    [-math.sin(angle) * iy, math.cos(angle + shear) * iy],
                ]
            )
            / d
        )
        centre = np.array([cols * 0.5 + 0.5, rows * 0.5 + 0.5])
        offset = centre - m @ centre
        coeffs = (m[0, 0], m[0, 1], offset[0], m[1, 0], m[1, 1], offset[1])

        def warp(array: np.ndarray) -> np.ndarray:
            image = Image.fromarray(array)
            return np.asarray(image.transform((cols, rows), Image.AFFINE, coeffs, Image.NEAREST))

        return {**sample, "fg": warp(fg), "alpha": warp(alpha)}


class RandomFlipLayers:
    """Mirror ``fg`` and ``alpha`` left-right with probability ``p``."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        if rng.random() >= self.p:
            return sample
        return {
            **sample,
            "fg": sample["fg"][:, ::-1].copy(),
            "alpha": sample["alpha"][:, ::-1].copy(),
        }


def _ellipse(size: int) -> np.ndarray:
    """OpenCV's ``getStructuringElement(MORPH_ELLIPSE, (size, size))`` as a boolean array."""
    radius = size // 2
    inv_r2 = 1.0 / radius**2 if radius else 0.0
    kernel = np.zeros((size, size), bool)
    for row in range(size):
        dy = row - radius
        if abs(dy) <= radius:
            dx = int(round(radius * math.sqrt((radius**2 - dy * dy) * inv_r2)))
            kernel[row, max(radius - dx, 0) : min(radius + dx + 1, size)] = True
    return kernel


class GenerateTrimap:
    """The release's ``GenTrimap``: foreground (alpha = 1) and background (alpha = 0) masks each
    eroded by an elliptic kernel of random width in [1, 30); the rest is unknown (128)."""

    def __init__(self, max_width: int = 30):
        self.max_width = max_width

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        alpha = sample["alpha"]
        fg_width, bg_width = (int(w) for w in rng.integers(1, self.max_width, size=2))
        fg = ndimage.binary_erosion(alpha == 255, _ellipse(fg_width), border_value=1)
        bg = ndimage.binary_erosion(alpha == 0, _ellipse(bg_width), border_value=1)
        trimap = np.full(alpha.shape, 128, np.uint8)
        trimap[fg] = 255
        trimap[bg] = 0
        return {**sample, "trimap": trimap}


class CropAroundUnknown:
    """The release's ``RandomCrop``: enlarge the layers if smaller than the crop (nearest; the
    background bicubic, covering the foreground), then crop ``size`` with its top-left corner at a
    random unknown pixel at least ``size // 2`` from the border (anywhere if there are fewer than 10
    such pixels). The background is cropped at the same place. A trimap without any unknown pixel
    has the whole layers resized to ``size`` instead (fg, alpha, trimap nearest, background
    bicubic), as the release does."""

    def __init__(self, size: int = 512):
        self.size = size

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        fg, alpha, trimap, bg = sample["fg"], sample["alpha"], sample["trimap"], sample["bg"]
        s = self.size
        h, w = alpha.shape
        ratio = max(h / bg.shape[0], w / bg.shape[1])
        if ratio > 1:
            bg = T.resize(
                bg, (math.ceil(bg.shape[1] * ratio), math.ceil(bg.shape[0] * ratio)), Image.BICUBIC
            )
        if h < s + 1 or w < s + 1:
            grow = 1.1 * s / min(h, w)
            while h < s + 1 or w < s + 1:
                size = (int(w * grow), int(h * grow))
                fg = T.resize(fg, size, Image.NEAREST)
                alpha = T.resize(alpha, size, Image.NEAREST)
                trimap = T.resize(trimap, size, Image.NEAREST)
                bg = T.resize(bg, (int(bg.shape[1] * grow), int(bg.shape[0] * grow)), Image.BICUBIC)
                h, w = alpha.shape
        margin = s // 2
        rows, cols = np.nonzero(trimap[margin : h - margin, margin : w - margin] == 128)
        if len(rows) < 10:
            top, left = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        else:
            pick = int(rng.integers(len(rows)))
            top, left = int(rows[pick]), int(cols[pick])
        if not (trimap == 128).any():
            # the release then resizes the whole layers to the crop size instead of cropping them
            size = (s, s)
            return {
                **sample,
                "fg": T.resize(fg, size, Image.NEAREST),
                "alpha": T.resize(alpha, size, Image.NEAREST),
                "trimap": T.resize(trimap, size, Image.NEAREST),
                "bg": T.resize(bg, size, Image.BICUBIC),
            }
        window = (slice(top, top + s), slice(left, left + s))
        return {
            **sample,
            "fg": fg[window],
            "alpha": alpha[window],
            "trimap": trimap[window],
            "bg": bg[window],
        }


class ForegroundJitter:
    """The release's ``RandomJitter``: hue ``+randint(-40, 40)`` degrees, and saturation and value
    shifted by ``U(-1, 1) * (1.1 - mean) / 10`` (means over the foreground), reflected into
    [0, 1]. Skipped when the alpha is all zero."""

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        alpha = sample["alpha"]
        if not (alpha > 0).any():
            return sample
        hsv = rgb_to_hsv(sample["fg"].astype(np.float32) / 255.0)
        hsv[..., 0] = np.remainder(hsv[..., 0] + rng.integers(-40, 40), 360)
        for channel in (1, 2):
            mean = hsv[..., channel][alpha > 0].mean()
            jitter = rng.random() * (1.1 - mean) / 5 - (1.1 - mean) / 10
            values = np.abs(hsv[..., channel] + jitter)
            values[values > 1] = 2 - values[values > 1]
            hsv[..., channel] = values
        return {**sample, "fg": (hsv_to_rgb(hsv) * 255.0).astype(np.float32)}


class Composite:
    """``image = alpha * fg + (1 - alpha) * bg`` in [0, 1]; returns ``image``, ``alpha``,
    ``trimap`` and the layers ``fg`` and ``bg`` (float32 [H, W, 3] in [0, 1], clipped as the
    release clips them), which the composition loss of ``MattingTask`` reads."""

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        a = sample["alpha"].astype(np.float32)[..., None] / 255.0
        fg = np.clip(sample["fg"].astype(np.float32), 0, 255) / 255.0
        bg = np.clip(sample["bg"].astype(np.float32), 0, 255) / 255.0
        image = (a * fg + (1 - a) * bg).astype(np.float32)
        return {
            "image": image,
            "alpha": sample["alpha"],
            "trimap": sample["trimap"],
            "fg": fg,
            "bg": bg,
        }


def a2u_matting_train(
    crop_size: int = 512,
    augmentation: bool = True,
    second_foreground: float = 0.5,
    squash: float = 0.25,
    flip: float = 0.5,
) -> T.Compose:
    """The A2U release's training pipeline (``augmentation=False``: trimap, crop, composite).

    ``second_foreground`` and ``squash`` are the probabilities of :class:`OverlaySecondForeground`
    and :class:`SquashForeground` (0 leaves a step out); ``flip`` is the probability of each of
    the affine warp's two axis flips and of the horizontal flip after it (the release's
    ``RandomAffine(..., flip=0.5)`` and ``RandomHorizontalFlip()``).
    """
    steps = []
    if augmentation:
        steps += [OverlaySecondForeground(second_foreground)] if second_foreground > 0 else []
        steps += [SquashForeground(squash)] if squash > 0 else []
        steps += [RandomAffineLayers(flip=flip), RandomFlipLayers(flip)]
    steps += [GenerateTrimap(), CropAroundUnknown(crop_size)]
    steps += [ForegroundJitter()] if augmentation else []
    return T.Compose([*steps, Composite()])


def a2u_matting_test(size_divisor: int | None = 16) -> T.Compose:
    """Whole image, reflect-padded to a multiple of the output stride (see the module docstring);
    ``size_divisor=None`` leaves it unpadded, for a task that pads the input itself
    (``MattingTask(eval_size_divisor=...)``, which pads the trimap channel as the release does)."""
    return T.Compose(
        [] if size_divisor is None else [PadTo(size_divisor=size_divisor, image_fill="reflect")]
    )
