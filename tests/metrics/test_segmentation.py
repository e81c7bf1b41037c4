"""mIoU and boundary IoU against hand-computed values."""

import pytest
import torch

from uplab.metrics import NothingToEvaluate
from uplab.metrics.segmentation import (
    SegmentationMetrics,
    boundary_width,
    confusion_matrix,
    mask_boundary,
)


def test_miou_two_by_two_by_hand():
    # truth [[0,1],[1,1]], prediction [[0,0],[1,1]]:
    # class 0: TP 1, FP 1 (pixel (0,1)), FN 0 -> 1/2; class 1: TP 2, FP 0, FN 1 -> 2/3.
    # mIoU = (1/2 + 2/3) / 2 = 7/12. On a 2x2 image every pixel is on the border (d = 1), so
    # boundary IoU equals mIoU.
    metric = SegmentationMetrics(num_classes=2)
    metric.update(torch.tensor([[[0, 0], [1, 1]]]), torch.tensor([[[0, 1], [1, 1]]]))
    result = metric.compute()
    assert result["mIoU"].item() == pytest.approx(7 / 12)
    assert result["bIoU"].item() == pytest.approx(7 / 12)


def test_boundary_iou_five_by_five_by_hand():
    # 5x5, diagonal 7.07 -> d = max(1, round(0.14)) = 1. Truth: all class 1; its boundary is the
    # 16-pixel border ring. Prediction: class 1 except the centre (class 0). Predicted class-1
    # boundary: the ring (16) + the centre's 8 neighbours = 24; class-0 boundary: the centre.
    # class 1: inter 16, union 24 -> 2/3; class 0: inter 0, union 1 -> 0. bIoU = 1/3.
    # mIoU: class 1: 24 / 25; class 0: 0 / 1. mIoU = 12/25.
    truth = torch.ones(1, 5, 5, dtype=torch.long)
    pred = truth.clone()
    pred[0, 2, 2] = 0
    metric = SegmentationMetrics(num_classes=2)
    metric.update(pred, truth)
    result = metric.compute()
    assert result["bIoU"].item() == pytest.approx(1 / 3)
    assert result["mIoU"].item() == pytest.approx(12 / 25)


def test_ignored_pixels_count_nowhere_and_logits_are_argmaxed():
    # The wrong prediction sits on an ignored pixel, so both scores are 1.
    truth = torch.tensor([[[0, 255], [1, 1]]])
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 0, 0, 0] = 1  # class 0 at (0, 0)
    logits[0, 1, 1, :] = 1  # class 1 on the bottom row
    logits[0, 1, 0, 1] = 1  # class 1 on the ignored pixel
    metric = SegmentationMetrics(num_classes=2, ignore_index=255)
    metric.update(logits, truth)
    result = metric.compute()
    assert result["mIoU"].item() == pytest.approx(1.0)
    assert result["bIoU"].item() == pytest.approx(1.0)


def test_absent_class_is_left_out_of_the_mean():
    # Class 2 appears in neither map: the mean is over classes 0 and 1 only.
    metric = SegmentationMetrics(num_classes=3)
    metric.update(torch.tensor([[[0, 1]]]), torch.tensor([[[0, 1]]]))
    assert metric.compute()["mIoU"].item() == pytest.approx(1.0)


def test_boundary_width_and_mask_boundary_by_hand():
    assert boundary_width(64, 64) == 2  # 0.02 * 90.5 = 1.81 -> 2
    assert boundary_width(5, 5) == 1
    mask = torch.zeros(1, 7, 7, dtype=torch.bool)
    mask[0, 1:6, 1:6] = True  # 5x5 square; with d = 1 its inner 3x3 is interior
    expected = mask.clone()
    expected[0, 2:5, 2:5] = False
    assert torch.equal(mask_boundary(mask, 1), expected)


def test_rejects_labels_out_of_range_and_shape_mismatch():
    with pytest.raises(ValueError, match=r"predicted labels must lie in \[0, 2\)"):
        confusion_matrix(torch.tensor([[[2]]]), torch.tensor([[[0]]]), 2)
    with pytest.raises(ValueError, match="one shape"):
        confusion_matrix(
            torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 3, dtype=torch.long), 2
        )


def test_non_finite_logits_are_refused_with_their_count():
    # NaN logits argmax to one class, which scores as a (bad) segmentation
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, :, 0, 0] = float("nan")
    with pytest.raises(
        ValueError, match="SegmentationMetrics: 3 of 12 values of the logits are not finite"
    ):
        SegmentationMetrics(num_classes=3).update(logits, torch.zeros(1, 2, 2, dtype=torch.long))


def test_a_set_of_ignored_pixels_only_is_nothing_to_evaluate():
    metric = SegmentationMetrics(num_classes=3, ignore_index=255)
    metric.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 255))
    with pytest.raises(NothingToEvaluate, match="no pixel of the set has a label"):
        metric.compute()


# Two images of different sizes. Image 1 (2x2): truth [[0,1],[1,1]], prediction [[0,0],[1,1]]:
# its own mIoU is 7/12. Image 2 (1x4): truth [0,0,0,0], prediction [0,0,0,1]: class 0 3/4,
# class 1 0/1, its own mIoU 3/8. The mean of the per-image mIoUs is 23/48; the dataset-level mIoU
# (mmseg's, over the confusion summed over the set) has class 0: TP 4, FP 1, FN 1 -> 4/6 and
# class 1: TP 2, FP 1, FN 1 -> 2/4, so mIoU = 7/12.
_IMAGES = [
    (torch.tensor([[[0, 0], [1, 1]]]), torch.tensor([[[0, 1], [1, 1]]])),
    (torch.tensor([[[0, 0, 0, 1]]]), torch.tensor([[[0, 0, 0, 0]]])),
]


def test_miou_is_dataset_level_over_updates_of_different_image_sizes():
    metric = SegmentationMetrics(num_classes=2)
    for pred, target in _IMAGES:
        metric.update(pred, target)
    assert metric.compute()["mIoU"].item() == pytest.approx(7 / 12)


def test_miou_over_two_ranks_equals_one_rank():
    # Each rank sees one image; the states merge with the reductions DDP's sync uses.
    ranks = [SegmentationMetrics(num_classes=2) for _ in _IMAGES]
    for metric, (pred, target) in zip(ranks, _IMAGES, strict=True):
        metric.update(pred, target)
    ranks[0].merge_state(ranks[1])
    single = SegmentationMetrics(num_classes=2)
    for pred, target in _IMAGES:
        single.update(pred, target)
    merged, alone = ranks[0].compute(), single.compute()
    assert merged["mIoU"].item() == pytest.approx(7 / 12)
    assert merged["bIoU"].item() == pytest.approx(alone["bIoU"].item())
