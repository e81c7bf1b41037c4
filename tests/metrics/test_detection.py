"""COCO AP through pycocotools against hand-computed values."""

import pytest
import torch

from uplab.metrics.detection import DetectionMetrics


def test_false_positive_ranked_first_halves_ap():
    # One 10x10 ground-truth box (area 100 < 32^2: "small"). Detections: a far-away box with
    # score 0.9 (false positive), then the exact box with score 0.5 (true positive at every IoU).
    # Ranked: FP, TP -> recall reaches 1 at precision 1/2; COCO's interpolated precision is 1/2 at
    # every recall level, so AP = AP50 = AP75 = APs = 0.5; no medium/large objects -> -1.
    metric = DetectionMetrics()
    metric.update(
        [
            {
                "boxes": torch.tensor([[50.0, 50, 60, 60], [0, 0, 10, 10]]),
                "scores": torch.tensor([0.9, 0.5]),
                "labels": torch.tensor([1, 1]),
            }
        ],
        [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([1]), "image_id": 1}],
    )
    result = metric.compute()
    for key in ("AP", "AP50", "AP75", "APs"):
        assert result[key].item() == pytest.approx(0.5), key
    assert result["APm"].item() == -1 and result["APl"].item() == -1


def test_box_with_iou_between_half_and_three_quarters():
    # Prediction [0,0,10,7.8] vs truth [0,0,10,10]: IoU 78/100 = 0.78 -> TP for the thresholds
    # 0.50..0.75 (6 of the 10 in 0.50:0.05:0.95), FP above. AP = 6/10, AP50 = AP75 = 1.
    metric = DetectionMetrics()
    metric.update(
        [
            {
                "boxes": torch.tensor([[0.0, 0, 10, 7.8]]),
                "scores": torch.tensor([0.8]),
                "labels": torch.tensor([2]),
            }
        ],
        [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([2])}],
    )
    result = metric.compute()
    assert result["AP"].item() == pytest.approx(0.6)
    assert result["AP50"].item() == pytest.approx(1.0) and result["AP75"].item() == pytest.approx(
        1.0
    )


def test_rejects_unpaired_lists():
    with pytest.raises(ValueError, match="1 predictions for 0 targets"):
        DetectionMetrics().update(
            [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0)}], []
        )
