"""COCO box AP through pycocotools (Lin et al., ECCV 2014 evaluation protocol)."""

from __future__ import annotations

import torch
from torchmetrics.detection import MeanAveragePrecision

from uplab.metrics.errors import NothingToEvaluate, require_finite

DETECTION_KEYS = {
    "AP": "map",
    "AP50": "map_50",
    "AP75": "map_75",
    "APs": "map_small",
    "APm": "map_medium",
    "APl": "map_large",
}


class DetectionMetrics(MeanAveragePrecision):
    """COCO AP, AP50, AP75, APs, APm, APl (fractions in [0, 1]).

    pycocotools reports -1 for a score it could not evaluate: ``compute()`` leaves APs, APm or APl
    out where the set has no ground-truth object of that size, and raises
    :class:`~uplab.metrics.NothingToEvaluate` where it has no ground-truth box at all. Non-finite
    predicted boxes or scores are a ValueError.

    ``update(preds, targets)`` takes torchvision detection outputs and targets: lists of dicts with
    ``boxes`` (xyxy pixels), ``scores`` and ``labels`` for predictions, ``boxes`` and ``labels`` for
    targets. The evaluation itself is pycocotools' ``COCOeval`` (torchmetrics'
    ``MeanAveragePrecision`` with ``backend="pycocotools"``), under the official protocol when the
    targets carry what :class:`uplab.data.coco.COCODetection` gives them: ``area`` (the
    annotations' areas, which decide small / medium / large; the box areas where absent) and the
    crowd regions ``crowd_boxes``, ``crowd_labels``, ``crowd_area`` (evaluated as ``iscrowd``: a
    detection matched to one counts neither way). Other keys, such as ``image_id``, are dropped.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(box_format="xyxy", iou_type="bbox", backend="pycocotools", **kwargs)
        self.add_state("target_boxes", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(
        self, preds: list[dict[str, torch.Tensor]], target: list[dict[str, torch.Tensor]]
    ) -> None:
        if len(preds) != len(target):
            raise ValueError(f"got {len(preds)} predictions for {len(target)} targets")
        name = type(self).__name__
        for p in preds:
            require_finite(name, "the predicted boxes", p["boxes"].detach())
            require_finite(name, "the predicted scores", p["scores"].detach())
        for t in target:
            require_finite(name, "the ground-truth boxes", t["boxes"])
            self.target_boxes += len(t["boxes"])
        super().update(
            [{k: p[k].detach() for k in ("boxes", "scores", "labels")} for p in preds],
            [_coco_ground_truth(t) for t in target],
        )

    def compute(self) -> dict[str, torch.Tensor]:
        if int(self.target_boxes) == 0:
            raise NothingToEvaluate(
                f"{type(self).__name__}: the set has no ground-truth box: there is no AP to report"
            )
        result = super().compute()
        return {
            name: result[key].to(torch.float64)
            for name, key in DETECTION_KEYS.items()
            if result[key].item() != -1  # pycocotools' "no ground truth of this size"
        }


def _coco_ground_truth(target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ground truth of one image as torchmetrics' pycocotools backend reads it: the plain
    boxes, then the crowd regions with ``iscrowd`` 1, and the annotations' areas where given."""
    boxes, labels = target["boxes"], target["labels"]
    crowd_boxes = target.get("crowd_boxes", boxes.new_zeros((0, 4)))
    crowd_labels = target.get("crowd_labels", labels.new_zeros(0))
    ground_truth = {
        "boxes": torch.cat([boxes, crowd_boxes.to(boxes)]),
        "labels": torch.cat([labels, crowd_labels.to(labels)]),
        "iscrowd": torch.cat([torch.zeros_like(labels), torch.ones_like(crowd_labels)]).to(labels),
    }
    if "area" in target:
        crowd_area = target.get("crowd_area", boxes.new_zeros(0))
        ground_truth["area"] = torch.cat([target["area"], crowd_area]).to(boxes)
    return ground_truth
