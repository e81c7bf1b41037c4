"""Paired transforms for dense and box annotations, deterministic under a seed.

Each transform is called as ``transform(sample, rng)`` on a dict of numpy arrays (``image``
``[H, W, 3]``; dense maps ``mask``, ``depth``, ``alpha``, ``trimap`` ``[H, W]``; ``boxes``
``[N, 4]`` xyxy with ``labels`` ``[N]``) and returns a new dict; the random draws come from
``rng``, which datasets derive from ``(seed, epoch, index)`` through ``sample_rng``, so a sample's
augmentation does not depend on worker processes or on what was drawn before. These are the
simple pipelines of the toy runs; the papers' full pipelines come with the real-dataset configs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Dense keys: resampling filter and the fill value of padding.
DENSE_KEYS = {
    "image": (Image.BILINEAR, 0),
    "mask": (Image.NEAREST, 255),
    "depth": (Image.NEAREST, 0.0),
    "alpha": (Image.BILINEAR, 0.0),
    "trimap": (Image.NEAREST, 0),
}


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one sample's random transforms."""
    return np.random.default_rng([seed, epoch, index])


def _dense_items(sample: dict):
    return [(k, v) for k, v in sample.items() if k in DENSE_KEYS]


def _size(sample: dict) -> tuple[int, int]:
    sizes = {k: v.shape[:2] for k, v in _dense_items(sample)}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"the dense maps of a sample must share one size; got {sizes}")
    return next(iter(sizes.values()))


class Compose:
    """Apply transforms in order, all drawing from the same generator."""

    def __init__(self, transforms: Sequence) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        for transform in self.transforms:
            sample = transform(sample, rng)
        return sample


class RandomHorizontalFlip:
    """Mirror left-right with probability ``p`` (boxes too)."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0 <= p <= 1:
            raise ValueError(f"p must lie in [0, 1]; got {p}")
        self.p = p

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        if rng.random() >= self.p:
            return sample
        _, width = _size(sample)
        out = dict(sample)
        for key, value in _dense_items(sample):
            out[key] = np.ascontiguousarray(value[:, ::-1])
        if "boxes" in sample:
            boxes = sample["boxes"].copy()
            boxes[:, [0, 2]] = width - sample["boxes"][:, [2, 0]]
            out["boxes"] = boxes
        return out


class RandomResize:
    """Resize by a factor drawn uniformly from ``scale`` (bilinear images, nearest labels/depth)."""

    def __init__(self, scale: Sequence[float] = (0.75, 1.5)) -> None:
        if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high; got {scale}")
        self.scale = tuple(scale)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        factor = rng.uniform(*self.scale)
        height, width = _size(sample)
        new = (max(1, round(width * factor)), max(1, round(height * factor)))
        out = dict(sample)
        for key, value in _dense_items(sample):
            out[key] = resize(value, new, DENSE_KEYS[key][0])
        if "boxes" in sample:
            out["boxes"] = sample["boxes"] * np.array(
                [new[0] / width, new[1] / height] * 2, np.float32
            )
        return out


def resize(array: np.ndarray, size_wh: tuple[int, int], resample) -> np.ndarray:
    """Resize a ``[H, W]`` or ``[H, W, C]`` array with PIL, keeping its dtype."""
    if array.ndim == 3:
        return np.stack(
            [resize(array[..., c], size_wh, resample) for c in range(array.shape[2])], -1
        )
    resized = Image.fromarray(array.astype(np.float32), mode="F").resize(size_wh, resample)
    out = np.asarray(resized)
    if np.issubdtype(array.dtype, np.integer):
        out = np.clip(np.round(out), np.iinfo(array.dtype).min, np.iinfo(array.dtype).max)
    return out.astype(array.dtype)


class RandomCrop:
    """Crop a random ``size`` window, padding first where the sample is smaller.

    Padding fills images with 0, masks with 255 (ignored), depth with 0 (invalid), alpha and
    trimap with 0. Boxes are shifted and clipped; boxes left narrower than 1 pixel are dropped.
    """

    def __init__(self, size: int | Sequence[int]) -> None:
        size = (size, size) if isinstance(size, int) else tuple(size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"size must be a positive int or (height, width); got {size}")
        self.size = size

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        height, width = _size(sample)
        ch, cw = self.size
        top = int(rng.integers(0, max(height - ch, 0) + 1))
        left = int(rng.integers(0, max(width - cw, 0) + 1))
        out = dict(sample)
        for key, value in _dense_items(sample):
            padded = np.full(
                (max(height, ch), max(width, cw)) + value.shape[2:], DENSE_KEYS[key][1], value.dtype
            )
            padded[:height, :width] = value
            out[key] = np.ascontiguousarray(padded[top : top + ch, left : left + cw])
        if "boxes" in sample:
            boxes = sample["boxes"] - np.array([left, top, left, top], np.float32)
            boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, cw)
            boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, ch)
            keep = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
            out["boxes"], out["labels"] = boxes[keep], sample["labels"][keep]
        return out


def build_train_transform(crop_size: int | None = None, flip: bool = True, scale=None) -> Compose:
    """The toy training pipeline: optional random resize, optional random crop, optional flip."""
    steps = []
    if scale is not None:
        steps.append(RandomResize(scale))
    if crop_size is not None:
        steps.append(RandomCrop(crop_size))
    if flip:
        steps.append(RandomHorizontalFlip())
    return Compose(steps)


def image_to_unit_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` (or float in [0, 1]) -> float32 ``[3, H, W]`` in [0, 1]."""
    array = image.astype(np.float32)
    if image.dtype == np.uint8:
        array /= 255.0
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def normalize_image(image: np.ndarray) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` (or float in [0, 1]) -> ImageNet-normalised float32 ``[3, H, W]``."""
    tensor = image_to_unit_tensor(image)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (tensor - mean) / std
