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
    targets (other keys, such as ``image_id``, are dropped). The evaluation itself is pycocotools'
    (torchmetrics' ``MeanAveragePrecision`` with ``backend="pycocotools"``); object areas, which
    decide small / medium / large, are the box areas.
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
            [{k: t[k] for k in ("boxes", "labels")} for t in target],
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
