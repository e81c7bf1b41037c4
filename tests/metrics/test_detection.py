"""COCO AP through pycocotools against hand-computed values."""

import pytest
import torch

from uplab.metrics import NothingToEvaluate
from uplab.metrics.detection import DetectionMetrics


def test_false_positive_ranked_first_halves_ap():
    # One 10x10 ground-truth box (area 100 < 32^2: "small"). Detections: a far-away box with
    # score 0.9 (false positive), then the exact box with score 0.5 (true positive at every IoU).
    # Ranked: FP, TP -> recall reaches 1 at precision 1/2; COCO's interpolated precision is 1/2 at
    # every recall level, so AP = AP50 = AP75 = APs = 0.5; no medium/large objects: APm and APl
    # are not evaluated (pycocotools' -1), so they are left out.
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
    assert "APm" not in result and "APl" not in result


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


def _prediction(boxes, scores):
    return {
        "boxes": torch.tensor(boxes),
        "scores": torch.tensor(scores),
        "labels": torch.ones(len(scores), dtype=torch.long),
    }


def _truth(boxes):
    return {
        "boxes": torch.tensor(boxes).view(-1, 4),
        "labels": torch.ones(len(boxes), dtype=torch.long),
    }


def test_a_set_without_ground_truth_boxes_is_nothing_to_evaluate():
    metric = DetectionMetrics()
    metric.update([_prediction([[0.0, 0, 10, 10]], [0.9])], [_truth([])])
    with pytest.raises(
        NothingToEvaluate, match="DetectionMetrics: the set has no ground-truth box"
    ):
        metric.compute()


@pytest.mark.parametrize(
    "key, bad", [("boxes", [[0.0, 0, float("nan"), 10]]), ("scores", [float("inf")])]
)
def test_non_finite_predictions_are_refused_with_their_count(key, bad):
    pred = _prediction([[0.0, 0, 10, 10]], [0.9])
    pred[key] = torch.tensor(bad)
    with pytest.raises(
        ValueError,
        match=f"DetectionMetrics: 1 of {len(bad[0]) if key == 'boxes' else 1} values of the predicted {key}",
    ):
        DetectionMetrics().update([pred], [_truth([[0.0, 0, 10, 10]])])
