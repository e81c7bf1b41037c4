"""SegFormer's ADE20K pipelines, as in the mmseg 0.11 configs of the released SAPA and FADE runs
(``segformer.b1.512x512.ade.160k``; e.g. the config printed at the top of poppinace/sapa's
``segformer/*.log``), with mmcv 1.2.7's OpenCV resizing (``cv2.INTER_LINEAR`` for images,
``cv2.INTER_NEAREST`` for labels, no antialiasing).

Training: ``Resize(img_scale=(2048, 512), ratio_range=(0.5, 2.0))`` -> ``RandomCrop(512,
cat_max_ratio=0.75)`` -> ``RandomFlip(0.5)`` -> ``PhotoMetricDistortion`` -> ``Normalize`` ->
``Pad(512, pad_val=0, seg_pad_val=255)``: the image is padded after normalisation, so padded
pixels are 0 in normalised space (:class:`PadAfterNormalize`).
Test: ``AlignedResize((2048, 512), keep_ratio, size_divisor=32)`` of the image only, one scale, no
flip (``test_cfg.mode='whole'``); the label map stays at its size and the logits are resized to it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from uplab.data import transforms as T
from uplab.data.pipelines.common import keep_ratio_size, resize_opencv, resize_sample
from uplab.data.pipelines.opencv_hsv import hsv_to_rgb_uint8, rgb_to_hsv_uint8


class RandomRescale:
    """mmseg ``Resize`` with ``ratio_range``: draw ``r ~ U(low, high)``, then fit the image into
    ``(int(r * long), int(r * short))`` (mmseg's ``random_sample_ratio`` truncates) keeping its
    aspect ratio (mmcv ``rescale_size``), resized as OpenCV does."""

    def __init__(
        self, scale: Sequence[float] = (2048, 512), ratio_range: Sequence[float] = (0.5, 2.0)
    ):
        if len(ratio_range) != 2 or not 0 < ratio_range[0] <= ratio_range[1]:
            raise ValueError(
                f"ratio_range must be (low, high) with 0 < low <= high; got {ratio_range}"
            )
        self.scale = tuple(scale)
        self.ratio_range = tuple(ratio_range)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        ratio = rng.uniform(*self.ratio_range)
        target = [int(s * ratio) for s in self.scale]
        height, width = keep_ratio_size(*T._size(sample), target)
        return resize_sample(sample, height, width, resize=resize_opencv)


class AlignedResize:
    """SegFormer's ``AlignedResize`` (keep_ratio): the image fitted into ``scale = (long, short)``
    (mmcv ``imrescale``), then resized a second time so that each side is the next multiple of
    ``size_divisor`` (``_align``), both with OpenCV's bilinear. Only ``keys`` are resized (the
    test pipeline resizes the image and leaves the labels at their size)."""

    def __init__(
        self, scale: Sequence[float] = (2048, 512), size_divisor: int = 32, keys=("image",)
    ):
        if len(scale) != 2 or min(scale) <= 0 or size_divisor < 1:
            raise ValueError(
                f"need scale = two positive edge lengths and size_divisor >= 1; got {scale}, "
                f"{size_divisor}"
            )
        self.scale = tuple(scale)
        self.size_divisor = size_divisor
        self.keys = tuple(keys)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        height, width = keep_ratio_size(*sample["image"].shape[:2], self.scale)
        d = self.size_divisor
        aligned = (-(-width // d) * d, -(-height // d) * d)
        out = dict(sample)
        for key in self.keys:
            resample = T.DENSE_KEYS[key][0]
            rescaled = resize_opencv(sample[key], (width, height), resample)
            out[key] = resize_opencv(rescaled, aligned, resample)
        return out


class PadAfterNormalize:
    """mmseg ``Pad(size, pad_val, seg_pad_val)`` placed after ``Normalize``: the image is padded
    at the bottom and right to ``size`` with ``pad_val`` in normalised space, the label map with
    ``seg_pad_val``.

    uplab normalises in the dataset, after the pipeline, so this step returns the image as float
    in [0, 1] and fills the padding with ``mean + pad_val * std`` (ImageNet's, the release's
    ``img_norm_cfg``): the dataset's normalisation then maps it to exactly ``pad_val``.
    """

    def __init__(self, size: Sequence[int] = (512, 512), pad_val: float = 0.0, seg_pad_val: int = 255):
        self.size = tuple(size)
        self.pad_val = float(pad_val)
        self.seg_pad_val = seg_pad_val

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        height, width = T._size(sample)
        new_h, new_w = max(height, self.size[0]), max(width, self.size[1])
        if (new_h, new_w) == (height, width):
            return sample
        image = sample["image"]
        if image.dtype == np.uint8:
            image = image.astype(np.float32) / np.float32(255.0)
        fill = np.float32(T.IMAGENET_MEAN) + np.float32(self.pad_val) * np.float32(T.IMAGENET_STD)
        padded = np.empty((new_h, new_w, image.shape[2]), np.float32)
        padded[...] = fill
        padded[:height, :width] = image
        mask = np.full((new_h, new_w), self.seg_pad_val, sample["mask"].dtype)
        mask[:height, :width] = sample["mask"]
        return {**sample, "image": padded, "mask": mask}


class CatMaxRandomCrop:
    """mmseg ``RandomCrop`` with ``cat_max_ratio``: a ``size`` window is checked up to ``attempts``
    (10) times and kept when its most frequent label (ignore excluded) covers less than
    ``cat_max_ratio`` of its labelled pixels and it holds more than one label; after each failed
    check a new window is drawn, and the one drawn after the last failed check is kept unchecked.
    No padding (:class:`PadAfterNormalize` follows, after the photometric distortion)."""

    def __init__(
        self,
        size: int | Sequence[int] = 512,
        cat_max_ratio: float = 0.75,
        ignore_index: int = 255,
        attempts: int = 10,
    ):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        if not 0 < cat_max_ratio <= 1:
            raise ValueError(f"cat_max_ratio must lie in (0, 1]; got {cat_max_ratio}")
        self.cat_max_ratio = cat_max_ratio
        self.ignore_index = ignore_index
        self.attempts = attempts

    def _window(
        self, height: int, width: int, rng: np.random.Generator
    ) -> tuple[int, int, int, int]:
        top = int(rng.integers(0, max(height - self.size[0], 0) + 1))
        left = int(rng.integers(0, max(width - self.size[1], 0) + 1))
        return top, min(top + self.size[0], height), left, min(left + self.size[1], width)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        height, width = T._size(sample)
        window = self._window(height, width, rng)
        if self.cat_max_ratio < 1 and "mask" in sample:
            for _ in range(self.attempts):
                top, bottom, left, right = window
                labels = sample["mask"][top:bottom, left:right]
                _, counts = np.unique(labels[labels != self.ignore_index], return_counts=True)
                if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                    break
                window = self._window(height, width, rng)
        top, bottom, left, right = window
        out = dict(sample)
        for key, value in T._dense_items(sample):
            out[key] = np.ascontiguousarray(value[top:bottom, left:right])
        return out


class PhotoMetricDistortion:
    """mmseg ``PhotoMetricDistortion``: brightness ``+U(-32, 32)``, contrast ``xU(0.5, 1.5)`` (before
    or after the HSV steps, at random), saturation ``xU(0.5, 1.5)``, hue ``+randint(-18, 18)`` on
    OpenCV's 180-step hue circle; each step with probability 0.5, results truncated to uint8.

    Saturation and hue each go through OpenCV's 8-bit HSV and back
    (:mod:`uplab.data.pipelines.opencv_hsv`), as mmcv's ``bgr2hsv``/``hsv2bgr`` do, so the
    quantisation is the release's.
    """

    def __init__(
        self,
        brightness_delta: int = 32,
        contrast_range=(0.5, 1.5),
        saturation_range=(0.5, 1.5),
        hue_delta: int = 18,
    ):
        self.brightness_delta = brightness_delta
        self.contrast_range = tuple(contrast_range)
        self.saturation_range = tuple(saturation_range)
        self.hue_delta = hue_delta

    @staticmethod
    def _convert(image: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
        return np.clip(image.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    def _contrast(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.integers(2):
            return self._convert(image, alpha=rng.uniform(*self.contrast_range))
        return image

    def _saturation(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.integers(2):
            hsv = rgb_to_hsv_uint8(image)
            hsv[..., 1] = self._convert(hsv[..., 1], alpha=rng.uniform(*self.saturation_range))
            return hsv_to_rgb_uint8(hsv)
        return image

    def _hue(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.integers(2):
            hsv = rgb_to_hsv_uint8(image)
            shift = int(rng.integers(-self.hue_delta, self.hue_delta))
            hsv[..., 0] = (hsv[..., 0].astype(np.int64) + shift) % 180
            return hsv_to_rgb_uint8(hsv)
        return image

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        image = sample["image"]
        if image.dtype != np.uint8:
            raise ValueError(f"PhotoMetricDistortion expects a uint8 image; got {image.dtype}")
        if rng.integers(2):
            image = self._convert(image, beta=rng.uniform(-self.brightness_delta, self.brightness_delta))
        contrast_first = rng.integers(2) == 1
        if contrast_first:
            image = self._contrast(image, rng)
        image = self._hue(self._saturation(image, rng), rng)
        if not contrast_first:
            image = self._contrast(image, rng)
        return {**sample, "image": image}


def segformer_train(
    scale=(2048, 512),
    ratio_range=(0.5, 2.0),
    crop_size: int = 512,
    cat_max_ratio: float = 0.75,
    flip: float = 0.5,
    photometric: Mapping[str, Any] | None = None,
    pad_val: float = 0.0,
    seg_pad_val: int = 255,
) -> T.Compose:
    """The released SegFormer/ADE20K training pipeline (see the module docstring).

    ``photometric`` holds :class:`PhotoMetricDistortion`'s arguments (None: mmseg's defaults),
    ``pad_val`` is the image padding in normalised space, ``seg_pad_val`` the label padding.
    """
    crop = (crop_size, crop_size)
    return T.Compose(
        [
            RandomRescale(scale, ratio_range),
            CatMaxRandomCrop(crop, cat_max_ratio),
            T.RandomHorizontalFlip(flip),
            PhotoMetricDistortion(**dict(photometric or {})),
            PadAfterNormalize(crop, pad_val, seg_pad_val),
        ]
    )


def segformer_test(scale=(2048, 512), size_divisor: int = 32) -> T.Compose:
    """Whole-image test at short side 512 (long side at most 2048), then each side stretched to
    the next multiple of 32 (:class:`AlignedResize`); the label map keeps its original size."""
    return T.Compose([AlignedResize(scale, size_divisor, keys=["image"])])
