"""The NYUv2 pipelines of BTS (Lee et al., arXiv 1907.10326; cleinc/bts, ``bts_dataloader.py``
with ``arguments_train_nyu.txt``), the depth setting of SAPA's table.

Training: the valid 565x427 region ``(43, 45, 608, 472)`` of the 640x480 frames -> random rotation
``U(-2.5, 2.5)`` degrees (bilinear image, nearest depth) -> random 416x544 crop -> horizontal flip
(0.5) -> with probability 0.5: gamma ``U(0.9, 1.1)``, brightness ``U(0.75, 1.25)``, per-channel
colour ``U(0.9, 1.1)``, clipped to [0, 1].
Test: the full 640x480 frame; depth outside Eigen's crop (rows 45:471, columns 41:601) is set to 0
(invalid), so the metrics count only the crop, and the 10 m cap is the task's ``max_depth``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from uplab.data import transforms as T

NYU_SIZE = (480, 640)
VALID_BOX = (43, 45, 608, 472)  # left, top, right, bottom (BTS's NYU training crop)
EIGEN_CROP = (45, 471, 41, 601)  # top, bottom, left, right


def _scaled(bounds: Sequence[int], height: int, width: int, order: str) -> list[int]:
    """``bounds`` given for 480x640 frames, scaled to ``height x width`` (exact at 480x640)."""
    factors = {"x": width / NYU_SIZE[1], "y": height / NYU_SIZE[0]}
    return [int(round(b * factors[axis])) for b, axis in zip(bounds, order, strict=True)]


class CropValidRegion:
    """Cut the white border of the NYUv2 frames (BTS's ``crop((43, 45, 608, 472))``); on frames of
    another size the box is scaled proportionally.

    Args:
        box: ``(left, top, right, bottom)`` on 480x640 frames.
    """

    def __init__(self, box: Sequence[int] = VALID_BOX):
        self.box = tuple(box)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        height, width = T._size(sample)
        left, top, right, bottom = _scaled(self.box, height, width, "xyxy")
        return {
            k: np.ascontiguousarray(v[top:bottom, left:right]) if k in T.DENSE_KEYS else v
            for k, v in sample.items()
        }


class RandomRotate:
    """Rotate by ``U(-degrees, degrees)`` about the centre, same size, zero fill (invalid depth)."""

    def __init__(self, degrees: float = 2.5):
        self.degrees = degrees

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        angle = float(rng.uniform(-self.degrees, self.degrees))
        out = dict(sample)
        for key, value in T._dense_items(sample):
            resample = Image.BILINEAR if key == "image" else Image.NEAREST
            if value.ndim == 3:
                out[key] = np.stack(
                    [self._rotate(value[..., c], angle, resample) for c in range(value.shape[2])],
                    -1,
                )
            else:
                out[key] = self._rotate(value, angle, resample)
        return out

    @staticmethod
    def _rotate(channel: np.ndarray, angle: float, resample) -> np.ndarray:
        rotated = Image.fromarray(channel.astype(np.float32), mode="F").rotate(
            angle, resample=resample
        )
        out = np.asarray(rotated)
        if np.issubdtype(channel.dtype, np.integer):
            out = np.clip(np.round(out), 0, np.iinfo(channel.dtype).max)
        return out.astype(channel.dtype)


class ColorAugment:
    """BTS's ``augment_image``: gamma, brightness and per-channel colour scaling (probability ``p``)."""

    def __init__(self, p: float = 0.5, gamma=(0.9, 1.1), brightness=(0.75, 1.25), color=(0.9, 1.1)):
        self.p, self.gamma, self.brightness, self.color = (
            p,
            tuple(gamma),
            tuple(brightness),
            tuple(color),
        )

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        if rng.random() >= self.p:
            return sample
        image = sample["image"].astype(np.float32)
        if sample["image"].dtype == np.uint8:
            image /= 255.0
        image = image ** rng.uniform(*self.gamma) * rng.uniform(*self.brightness)
        image = image * rng.uniform(*self.color, size=3).astype(np.float32)
        return {**sample, "image": np.clip(image, 0, 1).astype(np.float32)}


class EigenCropMask:
    """Set the depth outside Eigen et al.'s crop to 0 (invalid): evaluation on the crop, as BTS's
    ``eval_with_pngs``/``online_eval`` do with ``--eigen_crop``. Scaled proportionally off 480x640.

    Args:
        crop: ``(top, bottom, left, right)`` on 480x640 frames.
    """

    def __init__(self, crop: Sequence[int] = EIGEN_CROP):
        self.crop = tuple(crop)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        depth = sample["depth"]
        top, bottom, left, right = _scaled(self.crop, *depth.shape, "yyxx")
        masked = np.zeros_like(depth)
        masked[top:bottom, left:right] = depth[top:bottom, left:right]
        return {**sample, "depth": masked}


def bts_nyu_train(
    crop_size: Sequence[int] = (416, 544),
    degrees: float = 2.5,
    flip: float = 0.5,
    valid_box: Sequence[int] = VALID_BOX,
    color_p: float = 0.5,
    gamma: Sequence[float] = (0.9, 1.1),
    brightness: Sequence[float] = (0.75, 1.25),
    color: Sequence[float] = (0.9, 1.1),
) -> T.Compose:
    """BTS's NYUv2 training pipeline (see the module docstring); the defaults are the release's
    (``bts_dataloader.py`` with ``arguments_train_nyu.txt``)."""
    return T.Compose(
        [
            CropValidRegion(valid_box),
            RandomRotate(degrees),
            T.RandomCrop(tuple(crop_size)),
            T.RandomHorizontalFlip(flip),
            ColorAugment(color_p, gamma, brightness, color),
        ]
    )


def bts_nyu_test(eigen_crop: Sequence[int] = EIGEN_CROP) -> T.Compose:
    """Full frames, evaluated inside Eigen's crop (no resize, no padding)."""
    return T.Compose([EigenCropMask(eigen_crop)])
