"""The papers' pipelines on small arrays: each step does what the release does, the pipelines are
deterministic under a seed, and each task's evaluation gives a known answer through them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from uplab.data import pipelines as P
from uplab.data import transforms as T
from uplab.data.pipelines.a2u_matting import (
    CropAroundUnknown,
    ForegroundJitter,
    GenerateTrimap,
    OverlaySecondForeground,
    RandomAffineLayers,
    RandomFlipLayers,
    SquashForeground,
    _ellipse,
)
from uplab.data.pipelines.bts import ColorAugment, CropValidRegion, EigenCropMask
from uplab.data.pipelines.common import PadTo, keep_ratio_size
from uplab.data.pipelines.segformer import (
    AlignedResize,
    CatMaxRandomCrop,
    PhotoMetricDistortion,
    RandomRescale,
)
from uplab.metrics import DepthMetrics, DetectionMetrics, MattingMetrics, SegmentationMetrics


def rng(seed=0):
    return np.random.default_rng(seed)


def seg_sample(h=40, w=60):
    image = np.random.default_rng(1).integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[:, w // 2 :] = 1
    mask[: h // 4] = 255
    return {"image": image, "mask": mask}


def test_keep_ratio_size_is_mmcv_rescale():
    # 683x512 ADE image into (2048, 512): factor min(2048/683, 512/512) = 1
    assert keep_ratio_size(512, 683, (2048, 512)) == (512, 683)
    # COCO 640x480 into (1333, 800): factor min(1333/640, 800/480) = 5/3
    assert keep_ratio_size(480, 640, (1333, 800)) == (800, 1067)


def test_random_rescale_stays_within_the_ratio_range():
    for seed in range(5):
        out = RandomRescale(scale=(200, 50), ratio_range=(0.5, 2.0))(seg_sample(), rng(seed))
        h, w = out["image"].shape[:2]
        assert out["mask"].shape == (h, w)
        assert 25 - 1 <= min(h, w) <= 100 + 1
        assert set(np.unique(out["mask"])) <= {0, 1, 255}


def test_cat_max_crop_redraws_windows_of_one_dominant_class():
    sample = seg_sample(40, 60)
    sample["mask"][:] = 0
    sample["mask"][:, 40:] = 1  # a 20x20 window is acceptable only if it reaches column 46

    def acceptable_share(ratio):
        crop = CatMaxRandomCrop(20, cat_max_ratio=ratio)
        shares = []
        for seed in range(60):
            labels = crop(sample, rng(seed))["mask"]
            _, counts = np.unique(labels, return_counts=True)
            shares.append(len(counts) > 1 and counts.max() / counts.sum() < 0.75)
        return np.mean(shares)

    assert acceptable_share(1.0) < 0.5 < 0.9 < acceptable_share(0.75)


def test_photometric_distortion_keeps_uint8_and_only_touches_the_image():
    sample = seg_sample()
    outs = [PhotoMetricDistortion()(sample, rng(s)) for s in range(8)]
    assert all(
        o["image"].dtype == np.uint8 and o["image"].shape == sample["image"].shape for o in outs
    )
    assert all(o["mask"] is sample["mask"] for o in outs)
    assert any(not np.array_equal(o["image"], sample["image"]) for o in outs)


def test_segformer_train_gives_crop_size_pads_with_ignore_and_is_seeded():
    pipeline = P.segformer_train(scale=(64, 16), crop_size=32)
    a, b = pipeline(seg_sample(), rng(3)), pipeline(seg_sample(), rng(3))
    assert a["image"].shape == (32, 32, 3) and a["mask"].shape == (32, 32)
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["mask"], b["mask"])
    small = P.segformer_train(scale=(20, 10), ratio_range=(1, 1), crop_size=32)(
        seg_sample(), rng(0)
    )
    assert (small["mask"][10:] == 255).all()
    assert (T.normalize_image(small["image"])[:, 10:] == 0).all()  # padded after normalisation


def test_segformer_test_resizes_the_image_to_multiples_of_32_and_keeps_the_labels():
    out = P.segformer_test(scale=(2048, 512))(seg_sample(300, 400), rng())
    assert out["image"].shape == (512, 704, 3)  # 512 x 682.7 -> 512 x 683 -> multiples of 32
    assert out["mask"].shape == (300, 400)


def test_segmentation_evaluation_at_the_label_size_has_a_known_answer():
    sample = P.segformer_test(scale=(64, 32))(seg_sample(20, 30), rng())
    mask = torch.from_numpy(sample["mask"].astype(np.int64))[None]
    logits = torch.nn.functional.one_hot(mask.clamp(max=1), 2).permute(0, 3, 1, 2).float()
    metric = SegmentationMetrics(num_classes=2, ignore_index=255)
    metric.update(logits, mask)
    assert metric.compute()["mIoU"] == pytest.approx(1.0)


def test_ellipse_kernels_match_opencv():
    # cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)) for k = 1, 3, 5
    assert _ellipse(1).tolist() == [[True]]
    assert _ellipse(3).astype(int).tolist() == [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    assert _ellipse(5).astype(int).tolist() == [
        [0, 0, 1, 0, 0],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
        [0, 0, 1, 0, 0],
    ]


def matting_layers(size=48):
    alpha = np.zeros((size, size), np.uint8)
    alpha[10:38, 10:38] = 255
    alpha[10:38, 20:24] = 128
    fg = np.full((size, size, 3), 200, np.uint8)
    bg = np.full((size + 8, size + 4, 3), 20, np.uint8)
    second = (np.full((size // 2, size, 3), 90, np.uint8), np.full((size // 2, size), 64, np.uint8))
    return {"fg": fg, "alpha": alpha, "bg": bg, "draw_foreground": lambda rng: second}


def test_second_foreground_goes_behind_the_first_by_hand():
    alpha = np.zeros((4, 4), np.uint8)
    alpha[:, :2] = 255
    layers = {
        "fg": np.full((4, 4, 3), 200, np.uint8),
        "alpha": alpha,
        "bg": np.zeros((4, 4, 3), np.uint8),
        # half transparent (128/255), at another size: resized to the first
        "draw_foreground": lambda rng: (
            np.full((2, 2, 3), 100, np.uint8),
            np.full((2, 2), 128, np.uint8),
        ),
    }
    out = OverlaySecondForeground(p=1.0)(layers, rng())
    a2 = 128 / 255
    # left: the first foreground, opaque; right: the second, at its own alpha. Both colours are
    # truncated after dividing by alpha + 1e-5, as the release does: 200 -> 199, 100 -> 99.
    np.testing.assert_array_equal(out["alpha"][:, :2], 255)
    np.testing.assert_array_equal(out["alpha"][:, 2:], round(a2 * 255))
    assert int(200 / (1 + 1e-5)) == 199 and int(100 * a2 / (a2 + 1e-5)) == 99
    np.testing.assert_array_equal(out["fg"][:, :2], 199)
    np.testing.assert_array_equal(out["fg"][:, 2:], 99)
    # an opaque first foreground hides the second entirely: nothing changes
    opaque = {**layers, "alpha": np.full((4, 4), 255, np.uint8)}
    assert OverlaySecondForeground(p=1.0)(opaque, rng())["fg"] is opaque["fg"]
    with pytest.raises(ValueError, match="draw_foreground"):
        OverlaySecondForeground(p=1.0)({k: layers[k] for k in ("fg", "alpha", "bg")}, rng())


def test_squash_resizes_fg_and_alpha_only():
    layers = matting_layers()
    out = SquashForeground(p=1.0, size=20)(layers, rng())
    assert out["fg"].shape == (20, 20, 3) and out["alpha"].shape == (20, 20)
    assert out["bg"] is layers["bg"]
    assert SquashForeground(p=0.0, size=20)(layers, rng()) is layers


def test_generated_trimap_keeps_the_partial_alpha_unknown():
    sample = GenerateTrimap()(matting_layers(), rng(0))
    trimap, alpha = sample["trimap"], sample["alpha"]
    assert set(np.unique(trimap)) <= {0, 128, 255}
    assert (trimap[(alpha > 0) & (alpha < 255)] == 128).all()
    assert (trimap[trimap == 255] == 255).all() and (alpha[trimap == 255] == 255).all()
    assert (alpha[trimap == 0] == 0).all()


def test_crop_around_unknown_enlarges_small_layers_and_crops_all_alike():
    sample = GenerateTrimap()(matting_layers(), rng(0))
    out = CropAroundUnknown(64)(sample, rng(1))
    assert {k: out[k].shape[:2] for k in ("fg", "alpha", "trimap", "bg")} == dict.fromkeys(
        ("fg", "alpha", "trimap", "bg"), (64, 64)
    )


def test_crop_without_an_unknown_pixel_resizes_the_whole_layers():
    layers = matting_layers(80)
    trimap = np.where(layers["alpha"] == 255, 255, 0).astype(np.uint8)
    out = CropAroundUnknown(32)({**layers, "trimap": trimap}, rng(1))
    # the whole layers shrunk to 32 px (nearest), not a 32 px window of them
    assert np.array_equal(out["trimap"], T.resize(trimap, (32, 32), Image.NEAREST))
    assert np.array_equal(out["alpha"], T.resize(layers["alpha"], (32, 32), Image.NEAREST))
    assert out["bg"].shape == (32, 32, 3)


def test_flip_probability_reaches_both_released_flips():
    sample = matting_layers()
    sample["alpha"][:, :24] = 0  # left-right asymmetric
    for flip, flipped in ((0.0, False), (1.0, True)):
        out = RandomFlipLayers(flip)(sample, rng(0))
        assert np.array_equal(out["alpha"], sample["alpha"][:, ::-1]) == flipped
        # both axes flipped about the centre: a 180 degree turn (no rotation below 1024 px)
        # the warp flips both axes about the release's centre (w / 2 + 0.5): the foreground,
        # on the right, moves to the left (no rotation below 1024 px)
        warp = RandomAffineLayers(scale=(1, 1), shear=0, flip=flip)(sample, rng(0))
        assert (warp["alpha"][:, :20] > 0).any() == flipped
    pipeline = P.a2u_matting_train(crop_size=32, flip=0.0)
    assert [s.p for s in pipeline.transforms if isinstance(s, RandomFlipLayers)] == [0.0]


def test_foreground_jitter_shifts_hue_by_at_most_40_degrees():
    fg = np.zeros((8, 8, 3), np.uint8)
    fg[..., 0] = 200  # pure red: hue 0
    sample = {"fg": fg, "alpha": np.full((8, 8), 255, np.uint8)}
    hues = set()
    for seed in range(40):
        out = ForegroundJitter()(sample, rng(seed))
        hue = P.a2u_matting.rgb_to_hsv(out["fg"][:1, :1] / 255.0)[0, 0, 0]
        hues.add(round(float((hue + 180) % 360 - 180)))
    assert min(hues) >= -40 and max(hues) < 40 and len(hues) > 10
    empty = {"fg": fg, "alpha": np.zeros((8, 8), np.uint8)}
    assert ForegroundJitter()(empty, rng(0)) is empty  # all-zero alpha: skipped


def test_a2u_train_composites_and_is_seeded():
    pipeline = P.a2u_matting_train(crop_size=32)
    a, b = pipeline(matting_layers(), rng(5)), pipeline(matting_layers(), rng(5))
    assert set(a) == {"image", "alpha", "trimap", "fg", "bg"}
    for key in ("image", "fg", "bg"):
        assert a[key].shape == (32, 32, 3) and a[key].dtype == np.float32
        assert 0 <= a[key].min() and a[key].max() <= 1
    alpha = a["alpha"].astype(np.float32)[..., None] / 255.0
    np.testing.assert_allclose(a["image"], alpha * a["fg"] + (1 - alpha) * a["bg"], atol=1e-6)
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["trimap"], b["trimap"])
    with pytest.raises(ValueError, match="composite=False"):
        pipeline(
            {"image": np.zeros((8, 8, 3), np.uint8), "alpha": np.zeros((8, 8), np.uint8)}, rng()
        )


def test_matting_evaluation_is_unchanged_by_the_test_padding():
    image = np.random.default_rng(2).integers(0, 256, (20, 27, 3), dtype=np.uint8)
    alpha = np.zeros((20, 27), np.uint8)
    alpha[5:15, 5:20] = 255
    trimap = np.where(alpha > 0, 255, 0).astype(np.uint8)
    trimap[3:17, 3:22][alpha[3:17, 3:22] == 0] = 128
    trimap[5:15, 5:20] = 128
    padded = P.a2u_matting_test(16)({"image": image, "alpha": alpha, "trimap": trimap}, rng())
    assert padded["image"].shape == (32, 32, 3) and (padded["trimap"][20:] == 0).all()
    # None: left to the task (MattingTask(eval_size_divisor=...) pads the trimap as released)
    unpadded = P.a2u_matting_test(None)({"image": image, "alpha": alpha, "trimap": trimap}, rng())
    assert unpadded["image"].shape == (20, 27, 3)

    def sad(a, t):
        gt = torch.from_numpy(a.astype(np.float32) / 255)[None, None]
        tri = torch.from_numpy(np.select([t == 0, t == 128], [0.0, 0.5], 1.0).astype(np.float32))[
            None, None
        ]
        pred = torch.where(tri == 0.5, (gt + 0.2).clamp(max=1), tri)  # error 0.2 where gt < 0.8
        metric = MattingMetrics()
        metric.update(pred, gt, tri)
        return metric.compute()["sad"]

    unknown = trimap == 128
    expected = (np.minimum(alpha[unknown] / 255 + 0.2, 1) - alpha[unknown] / 255).sum() / 1000
    assert float(sad(alpha, trimap)) == pytest.approx(expected, rel=1e-4)
    assert float(sad(padded["alpha"], padded["trimap"])) == pytest.approx(expected, rel=1e-4)


def test_bts_train_crops_the_valid_region_then_the_training_window():
    sample = {"image": np.zeros((480, 640, 3), np.uint8), "depth": np.ones((480, 640), np.float32)}
    assert CropValidRegion()(sample, rng())["depth"].shape == (427, 565)
    out = P.bts_nyu_train()(sample, rng(0))
    assert out["image"].shape == (416, 544, 3) and out["depth"].shape == (416, 544)
    assert out["depth"].max() == 1.0 and out["image"].max() <= 1.0


def test_bts_pipelines_keep_the_frames_at_their_own_scale():
    # BTS neither rescales nor pads: a training sample is a window of the registered region, a
    # test sample the whole 480x640 frame
    image = np.random.default_rng(2).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    depth = np.random.default_rng(3).uniform(0.5, 9.0, (480, 640)).astype(np.float32)
    train = P.bts_nyu_train(degrees=0.0, flip=0.0, color_p=0.0)
    out = train({"image": image, "depth": depth}, rng(4))
    region = depth[45:472, 43:608]
    windows = np.lib.stride_tricks.sliding_window_view(region, (416, 544))
    hits = np.argwhere((windows == out["depth"]).all(axis=(2, 3)))
    assert len(hits) == 1
    top, left = hits[0]
    np.testing.assert_array_equal(out["image"], image[45 + top : 45 + top + 416, 43 + left : 43 + left + 544])
    test = P.bts_nyu_test()({"image": image, "depth": depth}, rng())
    assert test["image"] is image and test["depth"].shape == (480, 640)


def test_bts_colour_augmentation_is_gamma_then_brightness_then_per_channel_colour():
    image = np.full((2, 2, 3), 0.5, np.float32)
    draws = rng(2)
    assert draws.random() < 0.5  # this seed augments
    gamma, brightness = draws.uniform(0.9, 1.1), draws.uniform(0.75, 1.25)
    colour = draws.uniform(0.9, 1.1, size=3)
    out = ColorAugment()({"image": image}, rng(2))["image"]
    expected = np.clip(0.5**gamma * brightness * colour, 0, 1)
    np.testing.assert_allclose(out[0, 0], expected, rtol=1e-6)
    assert ColorAugment(p=0.0)({"image": image}, rng(2))["image"] is image


def test_depth_evaluation_counts_only_eigen_crop():
    gt = np.full((480, 640), 2.0, np.float32)
    masked = EigenCropMask()({"depth": gt}, rng())["depth"]
    assert (masked > 0).sum() == (471 - 45) * (601 - 41)
    pred = torch.full((1, 1, 480, 640), 100.0)  # wrong everywhere outside the crop
    pred[..., 45:471, 41:601] = 4.0  # twice the ground truth inside: abs_rel exactly 1
    metric = DepthMetrics(min_depth=1e-3, max_depth=10.0)
    metric.update(pred, torch.from_numpy(masked)[None, None])
    result = metric.compute()
    assert float(result["abs_rel"]) == pytest.approx(1.0) and float(result["d1"]) == 0.0


def test_detection_evaluation_of_the_ground_truth_is_perfect():
    boxes = np.array([[2, 3, 20, 30], [30, 10, 60, 40]], np.float32)
    sample = P.mmdet_train(flip=1.0)(
        {"image": np.zeros((48, 64, 3), np.uint8), "boxes": boxes, "labels": np.array([1, 2])},
        rng(),
    )
    assert np.allclose(sample["boxes"][0], [44, 3, 62, 30])
    target = {"boxes": torch.from_numpy(sample["boxes"]), "labels": torch.tensor([1, 2])}
    metric = DetectionMetrics()
    metric.update([{**target, "scores": torch.ones(2)}], [target])
    assert float(metric.compute()["AP50"]) == pytest.approx(1.0)



def test_mmdet_pipelines_only_flip_in_training():
    """mmdetection's Faster R-CNN 1x: no crop and no photometric change in training (only the
    flip; the resize, normalisation and pad are the detector's), nothing at test time."""
    image = np.random.default_rng(2).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    boxes = np.array([[2, 3, 20, 30]], np.float32)

    def sample():
        return {"image": image.copy(), "boxes": boxes.copy(), "labels": np.array([1])}

    kept = P.mmdet_train(flip=0.0)(sample(), rng())
    flipped = P.mmdet_train(flip=1.0)(sample(), rng())
    assert np.array_equal(kept["image"], image) and np.array_equal(kept["boxes"], boxes)
    assert np.array_equal(flipped["image"], image[:, ::-1])
    tested = P.mmdet_test()(sample(), rng())
    assert np.array_equal(tested["image"], image) and np.array_equal(tested["boxes"], boxes)


def test_pad_and_resize_reject_bad_arguments():
    with pytest.raises(ValueError, match="exactly one"):
        PadTo()
    with pytest.raises(ValueError, match="two positive"):
        AlignedResize((0, 5))
    assert T.Compose([])({"image": np.zeros((2, 2, 3))}, rng())["image"].shape == (2, 2, 3)
