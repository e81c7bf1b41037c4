"""COCO box AP through pycocotools (Lin et al., ECCV 2014 evaluation protocol)."""

from __future__ import annotations

import torch
from torchmetrics.detection import MeanAveragePrecision

DETECTION_KEYS = {
    "AP": "map",
    "AP50": "map_50",
    "AP75": "map_75",
    "APs": "map_small",
    "APm": "map_medium",
    "APl": "map_large",
}


class DetectionMetrics(MeanAveragePrecision):
    """COCO AP, AP50, AP75, APs, APm, APl (fractions in [0, 1]; -1 where a size range is empty).

    ``update(preds, targets)`` takes torchvision detection outputs and targets: lists of dicts with
    ``boxes`` (xyxy pixels), ``scores`` and ``labels`` for predictions, ``boxes`` and ``labels`` for
    targets (other keys, such as ``image_id``, are dropped). The evaluation itself is pycocotools'
    (torchmetrics' ``MeanAveragePrecision`` with ``backend="pycocotools"``); object areas, which
    decide small / medium / large, are the box areas.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(box_format="xyxy", iou_type="bbox", backend="pycocotools", **kwargs)

    def update(
        self, preds: list[dict[str, torch.Tensor]], target: list[dict[str, torch.Tensor]]
    ) -> None:
        if len(preds) != len(target):
            raise ValueError(f"got {len(preds)} predictions for {len(target)} targets")
        super().update(
            [{k: p[k].detach() for k in ("boxes", "scores", "labels")} for p in preds],
            [{k: t[k] for k in ("boxes", "labels")} for t in target],
        )

    def compute(self) -> dict[str, torch.Tensor]:
        result = super().compute()
        return {name: result[key].to(torch.float64) for name, key in DETECTION_KEYS.items()}
