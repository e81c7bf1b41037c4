"""Metrics of the four tasks: functions on tensors/arrays and torchmetrics accumulators."""

from uplab.metrics.depth import DepthMetrics, depth_errors
from uplab.metrics.detection import DetectionMetrics
from uplab.metrics.matting import MattingMetrics, matting_errors
from uplab.metrics.segmentation import SegmentationMetrics


class NothingToEvaluate(ValueError):
    """A metric was asked for a score over an evaluation that holds nothing to score (no valid
    pixel, no unknown trimap region, no box): the caller reports "not evaluated", never 0."""


__all__ = [
    "DepthMetrics",
    "DetectionMetrics",
    "MattingMetrics",
    "NothingToEvaluate",
    "SegmentationMetrics",
    "depth_errors",
    "matting_errors",
]
