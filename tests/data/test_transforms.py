"""Paired transforms: geometry by hand, padding values, determinism under a seed."""

import numpy as np
import pytest

from uplab.data import transforms as T


class _Always:
    """A generator stand-in whose draws are fixed, for hand-checked geometry."""

    def __init__(self, value, integer=0):
        self.value, self.integer = value, integer

    def random(self):
        return self.value

    def integers(self, low, high):
        return min(max(self.integer, low), high - 1)

    def uniform(self, low, high):
        return low


def test_flip_mirrors_dense_maps_and_boxes():
    # 4 px wide; a box over x in [0, 1) becomes [3, 4).
    sample = {
        "image": np.arange(12, dtype=np.uint8).reshape(1, 4, 3),
        "mask": np.array([[0, 1, 2, 3]], np.uint8),
        "boxes": np.array([[0, 0, 1, 1]], np.float32),
        "labels": np.array([1]),
    }
    out = T.RandomHorizontalFlip(p=0.5)(sample, _Always(0.0))
    np.testing.assert_array_equal(out["mask"], [[3, 2, 1, 0]])
    np.testing.assert_array_equal(out["image"][0, 0], [9, 10, 11])
    np.testing.assert_array_equal(out["boxes"], [[3, 0, 4, 1]])
    assert T.RandomHorizontalFlip(p=0.5)(sample, _Always(0.9)) is sample


def test_crop_pads_with_ignore_and_invalid_depth():
    # A 2x2 sample cropped to 3x3 at (0, 0): the new row/column is padding.
    sample = {
        "image": np.ones((2, 2, 3), np.uint8),
        "mask": np.zeros((2, 2), np.uint8),
        "depth": np.ones((2, 2), np.float32),
    }
    out = T.RandomCrop(3)(sample, _Always(0.0))
    assert out["mask"][2, 2] == 255 and out["mask"][0, 0] == 0
    assert out["depth"][2, 0] == 0.0 and out["image"][0, 2, 0] == 0


def test_crop_shifts_clips_and_drops_boxes():
    # Crop 4x4 at (top 2, left 2) of 8x8: box [1,1,3,3] -> [0,0,1,1]; box [0,0,1,1] leaves.
    sample = {
        "image": np.zeros((8, 8, 3), np.uint8),
        "boxes": np.array([[1, 1, 3, 3], [0, 0, 1, 1]], np.float32),
        "labels": np.array([1, 2]),
    }
    out = T.RandomCrop(4)(sample, _Always(0.0, integer=2))
    np.testing.assert_array_equal(out["boxes"], [[0, 0, 1, 1]])
    np.testing.assert_array_equal(out["labels"], [1])


def test_resize_keeps_label_values_and_scales_boxes():
    sample = {
        "image": np.zeros((4, 4, 3), np.uint8),
        "mask": np.array([[0, 0, 5, 5]] * 4, np.uint8),
        "boxes": np.array([[0, 0, 2, 2]], np.float32),
        "labels": np.array([1]),
    }
    out = T.RandomResize((2.0, 2.0))(sample, _Always(0.0))
    assert out["mask"].shape == (8, 8) and set(np.unique(out["mask"])) == {0, 5}
    np.testing.assert_allclose(out["boxes"], [[0, 0, 4, 4]])


def test_pipeline_is_deterministic_under_a_seed():
    rng = np.random.default_rng(0)
    sample = {
        "image": rng.integers(0, 255, (16, 16, 3)).astype(np.uint8),
        "mask": rng.integers(0, 5, (16, 16)).astype(np.uint8),
    }
    pipeline = T.build_train_transform(crop_size=8, flip=True, scale=(0.8, 1.5))
    first = pipeline(sample, T.sample_rng(3, 1, 7))
    second = pipeline(sample, T.sample_rng(3, 1, 7))
    for key in sample:
        np.testing.assert_array_equal(first[key], second[key])
    others = [pipeline(sample, T.sample_rng(3, epoch, 7))["mask"] for epoch in range(2, 6)]
    assert any(not np.array_equal(first["mask"], o) for o in others)


def test_mismatched_dense_sizes_are_rejected():
    sample = {"image": np.zeros((4, 4, 3), np.uint8), "mask": np.zeros((4, 5), np.uint8)}
    with pytest.raises(ValueError, match="share one size"):
        T.RandomCrop(2)(sample, np.random.default_rng(0))


def test_normalize_image_uses_imagenet_statistics():
    image = np.full((1, 1, 3), 255, np.uint8)
    expected = [(1 - m) / s for m, s in zip(T.IMAGENET_MEAN, T.IMAGENET_STD, strict=True)]
    np.testing.assert_allclose(T.normalize_image(image).flatten().numpy(), expected, rtol=1e-6)
