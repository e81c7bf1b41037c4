"""Transforms the four papers' pipelines share: keep-ratio rescaling, OpenCV-style resizing, padding,
photometric helpers.

Every transform follows ``uplab.data.transforms``: ``transform(sample, rng) -> sample`` on numpy
arrays, all randomness drawn from ``rng`` (derived from seed, epoch and index by the dataset).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from uplab.data import transforms as T


def keep_ratio_size(height: int, width: int, scale: Sequence[float]) -> tuple[int, int]:
    """``(new_height, new_width)`` that fits ``scale = (long, short)`` keeping the aspect ratio.

    mmcv's ``rescale_size``: the factor is ``min(long / max(h, w), short / min(h, w))`` and the new
    size is ``int(side * factor + 0.5)`` (torchvision's detection transform uses the same factor).
    """
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def resize_opencv(array: np.ndarray, size_wh: tuple[int, int], resample) -> np.ndarray:
    """Resize a ``[H, W]`` or ``[H, W, C]`` array as OpenCV's ``cv2.resize`` does (mmcv's
    ``imresize``, the cv2 backend of the mmseg/mmdet releases), keeping its dtype.

    ``Image.BILINEAR`` is ``cv2.INTER_LINEAR``: half-pixel centres, edge clamping and no
    antialiasing when shrinking (PIL's bilinear widens its filter there); integer arrays are
    rounded from float arithmetic, where OpenCV's uint8 path uses 11-bit fixed-point weights:
    values agree to 1 grey level (measured against OpenCV 5.1 on random images and sizes).
    ``Image.NEAREST`` is ``cv2.INTER_NEAREST`` exactly: source index
    ``floor(x * (1 / (out / in)))`` in double precision, as OpenCV computes it.
    """
    if resample not in (Image.BILINEAR, Image.NEAREST):
        raise ValueError(f"resize_opencv does bilinear or nearest; got resample={resample!r}")
    width, height = size_wh
    if array.shape[:2] == (height, width):
        return array.copy()
    if resample == Image.NEAREST:
        rows = _opencv_nearest_index(array.shape[0], height)
        cols = _opencv_nearest_index(array.shape[1], width)
        return np.ascontiguousarray(array[rows[:, None], cols[None, :]])
    planes = array.reshape(array.shape[:2] + (-1,)).transpose(2, 0, 1)
    source = torch.from_numpy(np.ascontiguousarray(planes, dtype=np.float32))[None]
    resized = F.interpolate(source, (height, width), mode="bilinear", align_corners=False)
    out = resized[0].numpy().transpose(1, 2, 0).reshape((height, width) + array.shape[2:])
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        out = np.clip(np.round(out), info.min, info.max)
    return out.astype(array.dtype)


def _opencv_nearest_index(size: int, new_size: int) -> np.ndarray:
    inverse_scale = 1.0 / (new_size / size)
    return np.minimum(np.floor(np.arange(new_size) * inverse_scale).astype(np.int64), size - 1)


def resize_sample(
    sample: dict,
    height: int,
    width: int,
    keys: Sequence[str] | None = None,
    resize=T.resize,
) -> dict:
    """``sample`` with its dense maps (or only ``keys``) resized to ``height x width``; boxes scaled.

    ``resize(array, (width, height), resample)`` does the resampling: PIL's (``T.resize``) or
    :func:`resize_opencv` for the releases that resize with OpenCV.
    """
    old_h, old_w = T._size(sample)
    out = dict(sample)
    for key, value in T._dense_items(sample):
        if keys is None or key in keys:
            out[key] = resize(value, (width, height), T.DENSE_KEYS[key][0])
    if "boxes" in sample:
        out["boxes"] = sample["boxes"] * np.array([width / old_w, height / old_h] * 2, np.float32)
    return out


class PadTo:
    """Pad the dense maps at the bottom and right to at least ``size = (height, width)``, or to the
    next multiple of ``size_divisor``, with each map's fill value (``image_fill`` for the image;
    ``"reflect"`` mirrors it as the A2U release does at test time).
    """

    def __init__(
        self, size: Sequence[int] | None = None, size_divisor: int | None = None, image_fill=0
    ):
        if (size is None) == (size_divisor is None):
            raise ValueError(
                f"give exactly one of size and size_divisor; got {size}, {size_divisor}"
            )
        self.size = None if size is None else tuple(size)
        self.size_divisor = size_divisor
        self.image_fill = image_fill

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        height, width = T._size(sample)
        if self.size is not None:
            new_h, new_w = max(height, self.size[0]), max(width, self.size[1])
        else:
            d = self.size_divisor
            new_h, new_w = -(-height // d) * d, -(-width // d) * d
        if (new_h, new_w) == (height, width):
            return sample
        out = dict(sample)
        for key, value in T._dense_items(sample):
            pad = ((0, new_h - height), (0, new_w - width)) + ((0, 0),) * (value.ndim - 2)
            if key == "image" and self.image_fill == "reflect":
                out[key] = np.pad(value, pad, mode="reflect")
            else:
                fill = self.image_fill if key == "image" else T.DENSE_KEYS[key][1]
                out[key] = np.pad(value, pad, constant_values=fill)
        return out


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """float RGB in [0, 1] ``[..., 3]`` -> HSV with hue in degrees [0, 360), S and V in [0, 1]."""
    from matplotlib.colors import rgb_to_hsv as _rgb_to_hsv

    hsv = _rgb_to_hsv(np.clip(rgb, 0, 1))
    hsv[..., 0] *= 360.0
    return hsv


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_hsv`."""
    from matplotlib.colors import hsv_to_rgb as _hsv_to_rgb

    scaled = hsv.copy()
    scaled[..., 0] = np.remainder(scaled[..., 0], 360.0) / 360.0
    return _hsv_to_rgb(np.clip(scaled, 0, 1))
