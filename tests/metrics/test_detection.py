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



@pytest.mark.parametrize(("false_positives", "ap"), [(99, 0.01), (100, 0.0)])
def test_only_the_100_best_scored_detections_of_an_image_count(false_positives, ap):
    # COCO's bbox AP at maxDets=100 (mmdetection's CocoDataset.evaluate, pycocotools' default):
    # the exact box scored below 99 false positives is the 100th detection (recall 1 at precision
    # 1/100 -> AP 0.01); below 100 of them it is the 101st, not counted (AP 0).
    far = torch.tensor([[50.0, 50, 60, 60]]).repeat(false_positives, 1)
    metric = DetectionMetrics()
    metric.update(
        [
            {
                "boxes": torch.cat([far, torch.tensor([[0.0, 0, 10, 10]])]),
                "scores": torch.cat([torch.full((false_positives,), 0.9), torch.tensor([0.5])]),
                "labels": torch.ones(false_positives + 1, dtype=torch.long),
            }
        ],
        [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([1])}],
    )
    assert metric.compute()["AP50"].item() == pytest.approx(ap)


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


def _write_coco(root, images, annotations, categories):
    """A COCO val split on disk: black PNGs of the images' sizes and the annotation file."""
    import json

    import numpy as np
    from PIL import Image

    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    for image in images:
        Image.fromarray(np.zeros((image["height"], image["width"], 3), np.uint8)).save(
            root / "val2017" / image["file_name"]
        )
    document = {"images": images, "annotations": annotations, "categories": categories}
    path = root / "annotations" / "instances_val2017.json"
    path.write_text(json.dumps(document))
    return path


def test_coco_ap_with_crowd_regions_and_annotation_areas_equals_pycocotools_on_the_file(tmp_path):
    # The official protocol, run by pycocotools on the annotation file itself, against
    # DetectionMetrics fed by COCODetection's targets. What it exercises: a detection on a crowd
    # region counts neither way (without the crowd region it is a false positive), and the
    # small/medium/large buckets come from the annotations' `area` (A's box is 40x40 = 1600,
    # medium, but its segment's area is 500, small), with boxes away from the origin and
    # non-contiguous category ids (3, 7 -> labels 1, 2).
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from uplab.data.coco import COCODetection

    images = [
        {"id": 1, "file_name": "a.png", "width": 96, "height": 80},
        {"id": 2, "file_name": "b.png", "width": 64, "height": 64},
    ]
    annotations = [
        {"id": 10, "image_id": 1, "category_id": 3, "bbox": [40, 30, 40, 40], "area": 500.0,
         "iscrowd": 0},
        {"id": 11, "image_id": 1, "category_id": 3, "bbox": [2, 4, 30, 30], "area": 700.0,
         "iscrowd": 1},
        {"id": 12, "image_id": 2, "category_id": 7, "bbox": [20, 24, 20, 20], "area": 400.0,
         "iscrowd": 0},
        {"id": 13, "image_id": 2, "category_id": 3, "bbox": [5, 5, 50, 50], "area": 2000.0,
         "iscrowd": 0},
    ]
    categories = [{"id": 3, "name": "three"}, {"id": 7, "name": "seven"}]
    path = _write_coco(tmp_path / "coco", images, annotations, categories)
    detections = {  # image id -> (xyxy boxes, scores, category ids)
        1: ([[41, 31, 80, 70], [5, 6, 30, 32], [60, 2, 90, 20]], [0.9, 0.8, 0.3], [3, 3, 3]),
        2: ([[22, 25, 40, 45], [6, 8, 52, 54]], [0.7, 0.6], [7, 3]),
    }

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(path))
        results = coco.loadRes([
            {"image_id": i, "category_id": c, "score": s, "bbox": [x0, y0, x1 - x0, y1 - y0]}
            for i, (boxes, scores, cats) in detections.items()
            for (x0, y0, x1, y1), s, c in zip(boxes, scores, cats, strict=True)
        ])
        evaluation = COCOeval(coco, results, "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    official = dict(zip(["AP", "AP50", "AP75", "APs", "APm", "APl"], evaluation.stats[:6],
                        strict=True))

    dataset = COCODetection(tmp_path / "coco", "val")
    label_of = {3: 1, 7: 2}
    metric = DetectionMetrics()
    for index, image_id in enumerate(dataset.image_ids):
        _, target = dataset[index]
        boxes, scores, cats = detections[image_id]
        metric.update(
            [{"boxes": torch.tensor(boxes, dtype=torch.float32),
              "scores": torch.tensor(scores),
              "labels": torch.tensor([label_of[c] for c in cats])}],
            [target],
        )
    ours = metric.compute()
    for key, value in official.items():
        if value == -1:
            assert key not in ours, key
        else:
            assert ours[key].item() == pytest.approx(value, abs=1e-6), key
    assert official["AP50"] == pytest.approx(1.0)  # the crowd detection is no false positive
    assert official["APm"] != pytest.approx(official["APs"])  # the buckets follow `area`
