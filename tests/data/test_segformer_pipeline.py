"""SegFormer's ADE20K pipelines against mmseg 0.11 / mmcv 1.2.7, case by case on small arrays
(reference/recipes/segformer_b1_ade20k.yaml names these tests)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from uplab.data import pipelines as P
from uplab.data import transforms as T
from uplab.data.pipelines.common import resize_opencv
from uplab.data.pipelines.opencv_hsv import hsv_to_rgb_uint8, rgb_to_hsv_uint8
from uplab.data.pipelines.segformer import (
    AlignedResize,
    CatMaxRandomCrop,
    PadAfterNormalize,
    PhotoMetricDistortion,
    RandomRescale,
)


def rng(seed=0):
    return np.random.default_rng(seed)


def test_resize_opencv_is_cv2_inter_linear_and_inter_nearest_by_hand():
    row = np.array([[0.0, 10.0, 20.0, 30.0]], np.float32)
    # shrinking by 2: samples at x = 0.5 and 2.5 of the source, no antialiasing (PIL gives 7.14)
    assert resize_opencv(row, (2, 1), Image.BILINEAR).tolist() == [[5.0, 25.0]]
    # growing by 2: half-pixel centres, clamped at the edges
    pair = np.array([[0.0, 10.0]], np.float32)
    assert resize_opencv(pair, (4, 1), Image.BILINEAR).tolist() == [[0.0, 2.5, 7.5, 10.0]]
    # nearest: source pixel floor(x * 5 / 2) = 0, 2 (PIL's centre rule gives 1, 3)
    labels = np.array([[0, 1, 2, 3, 4]], np.uint8)
    assert resize_opencv(labels, (2, 1), Image.NEAREST).tolist() == [[0, 2]]
    # OpenCV scales by 1 / (34 / 6) in double: x = 17 lands at 2.99999..., source 2 (not 3)
    six = np.arange(6, dtype=np.uint8)[None]
    assert resize_opencv(six, (34, 1), Image.NEAREST)[0, 16:19].tolist() == [2, 2, 3]
    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    out = resize_opencv(image, (3, 2), Image.BILINEAR)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 3)
    with pytest.raises(ValueError, match="bilinear or nearest"):
        resize_opencv(image, (3, 2), Image.BICUBIC)


def test_random_rescale_truncates_the_drawn_scale_like_mmseg():
    # ratio 1.99 of (40, 10) is (79.6, 19.9), truncated to (79, 19): a 100 x 100 image becomes
    # 19 x 19 (without the truncation it would be 20 x 20)
    sample = {"image": np.zeros((100, 100, 3), np.uint8), "mask": np.zeros((100, 100), np.uint8)}
    out = RandomRescale(scale=(40, 10), ratio_range=(1.99, 1.99))(sample, rng())
    assert out["image"].shape == (19, 19, 3) and out["mask"].shape == (19, 19)


def test_aligned_resize_rescales_then_stretches_to_multiples_of_32():
    image = rng(1).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    sample = {"image": image, "mask": np.zeros((300, 400), np.uint8)}
    out = AlignedResize((2048, 512), 32)(sample, rng())
    # 300 x 400 -> 512 x 683 (mmcv imrescale) -> 512 x 704 (_align), the labels untouched
    two_steps = resize_opencv(
        resize_opencv(image, (683, 512), Image.BILINEAR), (704, 512), Image.BILINEAR
    )
    assert np.array_equal(out["image"], two_steps)
    assert not np.array_equal(out["image"], resize_opencv(image, (704, 512), Image.BILINEAR))
    assert out["mask"] is sample["mask"]
    assert P.segformer_test((2048, 512), 32)(sample, rng())["image"].shape == (512, 704, 3)


def test_pad_after_normalize_pads_zero_in_normalised_space_and_255_in_labels():
    image = rng(2).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    sample = {"image": image, "mask": np.ones((5, 7), np.uint8)}
    out = PadAfterNormalize((8, 9), pad_val=0.0, seg_pad_val=255)(sample, rng())
    normalised = T.normalize_image(out["image"])
    assert normalised.shape == (3, 8, 9)
    assert (normalised[:, 5:] == 0).all() and (normalised[:, :, 7:] == 0).all()
    assert torch.allclose(normalised[:, :5, :7], T.normalize_image(image), atol=1e-6)
    assert (out["mask"][5:] == 255).all() and (out["mask"][:, 7:] == 255).all()
    assert (out["mask"][:5, :7] == 1).all()


def test_normalisation_is_the_release_img_norm_cfg():
    image = rng(3).integers(0, 256, (2, 2, 3), dtype=np.uint8)
    mean = np.array([123.675, 116.28, 103.53])
    std = np.array([58.395, 57.12, 57.375])
    expected = ((image - mean) / std).transpose(2, 0, 1)
    assert np.allclose(T.normalize_image(image).numpy(), expected, atol=1e-5)


class CountingRng:
    """A generator that counts ``integers`` draws (two per crop window)."""

    def __init__(self):
        self.inner, self.draws = rng(4), 0

    def integers(self, *args, **kwargs):
        self.draws += 1
        return self.inner.integers(*args, **kwargs)


def test_cat_max_crop_checks_ten_windows_then_keeps_the_eleventh():
    one_class = {"image": np.zeros((20, 20, 3), np.uint8), "mask": np.zeros((20, 20), np.uint8)}
    counting = CountingRng()
    out = CatMaxRandomCrop(8, cat_max_ratio=0.75)(one_class, counting)
    assert counting.draws == 2 * 11 and out["mask"].shape == (8, 8)


def test_photometric_distortion_defaults_are_mmseg_and_the_row_passes_them():
    default = PhotoMetricDistortion()
    assert (default.brightness_delta, default.contrast_range) == (32, (0.5, 1.5))
    assert (default.saturation_range, default.hue_delta) == ((0.5, 1.5), 18)
    pipeline = P.segformer_train(photometric={"hue_delta": 3})
    assert [t for t in pipeline.transforms if isinstance(t, PhotoMetricDistortion)][
        0
    ].hue_delta == 3


def test_opencv_hsv_by_hand_and_at_a_halfway_value():
    # (200, 30, 90): V = 200, S = round(170 * 255 / 200) = 217, H = -60 / 170 * 30 = -10.6 -> 169
    assert rgb_to_hsv_uint8(np.array([[200, 30, 90]], np.uint8)).tolist() == [[169, 217, 200]]
    assert rgb_to_hsv_uint8(np.array([[0, 0, 0]], np.uint8)).tolist() == [[0, 0, 0]]
    # G = 25 (1 - 153/255 * 29/30) = 10.5 exactly: OpenCV's fused multiply-add lands below, 10,
    # where separate float32 roundings give 11 (OpenCV 5.1 gives (25, 10, 10), as this module does
    # on all 180 x 256 x 256 HSV values)
    assert hsv_to_rgb_uint8(np.array([[1, 153, 25]], np.uint8)).tolist() == [[25, 10, 10]]
    assert hsv_to_rgb_uint8(np.array([[0, 0, 77]], np.uint8)).tolist() == [[77, 77, 77]]


class ScriptedRng:
    """Returns the given draws in order (integers and uniform alike)."""

    def __init__(self, *draws):
        self.draws = list(draws)

    def integers(self, *args):
        return self.draws.pop(0)

    uniform = integers


def test_photometric_saturation_then_hue_each_round_trip_through_8_bit_hsv():
    image = rng(5).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    # brightness off, contrast last, saturation x1.3, hue +7, contrast off (mmseg's draw order)
    out = PhotoMetricDistortion()({"image": image}, ScriptedRng(0, 0, 1, 1.3, 1, 7, 0))["image"]
    hsv = rgb_to_hsv_uint8(image)
    hsv[..., 1] = np.clip(hsv[..., 1] * np.float32(1.3), 0, 255).astype(np.uint8)
    hsv = rgb_to_hsv_uint8(hsv_to_rgb_uint8(hsv))
    hsv[..., 0] = (hsv[..., 0].astype(int) + 7) % 180
    assert np.array_equal(out, hsv_to_rgb_uint8(hsv))
