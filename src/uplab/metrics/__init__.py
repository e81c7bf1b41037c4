"""Metrics of the four tasks: functions on tensors/arrays and torchmetrics accumulators."""

from uplab.metrics.depth import DepthMetrics, depth_errors
from uplab.metrics.detection import DetectionMetrics
from uplab.metrics.matting import MattingMetrics, matting_errors
from uplab.metrics.segmentation import SegmentationMetrics

__all__ = [
    "DepthMetrics",
    "DetectionMetrics",
    "MattingMetrics",
    "SegmentationMetrics",
    "depth_errors",
    "matting_errors",
]
