"""Object detection: torchvision's Faster R-CNN with an upsampling FPN; COCO AP."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torchvision.utils import draw_bounding_boxes

from uplab.metrics import DetectionMetrics
from uplab.models.detection import build_faster_rcnn
from uplab.tasks.base import TaskModule

Batch = tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]


class DetectionTask(TaskModule):
    """Object detection (the COCO setting of CARAFE, SAPA and FADE with Faster R-CNN).

    Batches are torchvision's: ``(images, targets)``, images ``[3, H, W]`` in [0, 1] (the detector
    normalises them itself) and targets with ``boxes`` (xyxy pixels) and ``labels``.

    Args:
        backbone: factory ``backbone(in_chans=3)``.
        decoder: FPN factory (:class:`uplab.models.detection.UpsamplingFPN`).
        upsampler: upsampler factory for the FPN's top-down steps.
        num_classes: foreground classes + 1 background (from the data).
        optimizer: optimizer partial.
        scheduler: scheduler partial or None.
        detector: keyword arguments of :func:`uplab.models.detection.build_faster_rcnn`
            (``anchor_sizes``, ``min_size``, ``max_size``, ``rpn_*``, ``box_*``).
    """

    data_task = "detection"
    monitor = "val/AP50"
    monitor_mode = "max"

    def __init__(
        self,
        backbone: Callable[..., nn.Module],
        decoder: Callable[..., nn.Module],
        upsampler: Callable[..., nn.Module],
        num_classes: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        detector: Mapping[str, Any] | None = None,
    ):
        super().__init__(optimizer, scheduler)
        self.save_hyperparameters(ignore=["backbone", "decoder", "upsampler", "optimizer", "scheduler"])
        self.model = build_faster_rcnn(
            backbone(in_chans=3), decoder, upsampler, num_classes, **dict(detector or {})
        )
        self.val_metrics = DetectionMetrics()

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return self.model(images)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        losses = self.model(images, targets)
        loss = sum(losses.values())
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, batch_size=len(images))
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        images, targets = batch
        self.val_metrics.update(self(images), targets)

    def predict_for_figure(self, batch: Batch) -> list[dict[str, torch.Tensor]]:
        return self(batch[0][:1])

    def figure_panels(self, batch: Batch, output: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
        image = (batch[0][0].detach().cpu().clamp(0, 1) * 255).to(torch.uint8)
        detections = output[0]
        keep = detections["scores"] > 0.5
        predicted = draw_bounding_boxes(image, detections["boxes"][keep].cpu(), colors="red")
        truth = draw_bounding_boxes(image, batch[1][0]["boxes"].cpu(), colors="lime")
        return {
            "input": image.permute(1, 2, 0),
            "prediction (score > 0.5)": predicted.permute(1, 2, 0),
            "ground truth": truth.permute(1, 2, 0),
        }

    def example_input(self, batch: Batch) -> tuple:
        return (batch[0][:1],)
