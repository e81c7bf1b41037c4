"""Metrics of the four tasks: functions on tensors/arrays and torchmetrics accumulators.

Every metric refuses non-finite predictions (``ValueError`` naming the metric and the count) and
raises :class:`NothingToEvaluate` (a ``ValueError``) when the whole set holds nothing to score.
"""

from uplab.metrics.depth import DepthMetrics, depth_errors
from uplab.metrics.detection import DetectionMetrics
from uplab.metrics.errors import NothingToEvaluate
from uplab.metrics.matting import MattingMetrics, matting_errors
from uplab.metrics.segmentation import SegmentationMetrics

__all__ = [
    "DepthMetrics",
    "DetectionMetrics",
    "MattingMetrics",
    "NothingToEvaluate",
    "SegmentationMetrics",
    "depth_errors",
    "matting_errors",
]
