"""LightningModules of the four tasks: segmentation, depth, matting, detection."""

from uplab.tasks.base import TaskModule
from uplab.tasks.depth import DepthTask
from uplab.tasks.detection import DetectionTask
from uplab.tasks.matting import MattingTask
from uplab.tasks.segmentation import SegmentationTask

__all__ = ["DepthTask", "DetectionTask", "MattingTask", "SegmentationTask", "TaskModule"]
