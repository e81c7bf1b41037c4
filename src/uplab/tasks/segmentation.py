"""Semantic segmentation: per-pixel cross-entropy, mIoU and boundary IoU."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from uplab.metrics import SegmentationMetrics
from uplab.models import DenseModel
from uplab.tasks.base import TaskModule
from uplab.tasks.figures import denormalize


class SegmentationTask(TaskModule):
    """Semantic segmentation (the ADE20K setting of SAPA and FADE with a SegFormer head).

    The logits at the decoder's resolution are resized bilinearly (``align_corners=False``) to the
    input image's size, as mmseg's ``encode_decode`` does; in evaluation, where a test-time resize
    (SegFormer's ``AlignedResize``) left the label map at the original size, they are resized a
    second time, to the label's size (mmseg 0.11 ``whole_inference`` with ``rescale``).

    Args:
        backbone: factory ``backbone(in_chans=3)``.
        decoder: decoder factory (see :class:`uplab.models.DenseModel`).
        upsampler: upsampler factory handed to the decoder.
        num_classes: classes without the ignore label (from the data).
        optimizer: optimizer partial.
        scheduler: scheduler partial or None.
        ignore_index: label left out of loss and metrics.
        avg_non_ignore: average the cross-entropy over the labelled pixels only (True), or over
            all pixels with the ignored ones counting 0 (False: mmseg 0.11's ``CrossEntropyLoss``,
            ``F.cross_entropy(reduction='none', ignore_index)`` then ``.mean()``, the loss of the
            released SegFormer runs; mmseg added ``avg_non_ignore`` in 0.23).
    """

    data_task = "segmentation"
    monitor = "val/mIoU"
    monitor_mode = "max"

    def __init__(
        self,
        backbone: Callable[..., nn.Module],
        decoder: Callable[..., nn.Module],
        upsampler: Callable[..., nn.Module],
        num_classes: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        ignore_index: int = 255,
        avg_non_ignore: bool = True,
    ):
        super().__init__(optimizer, scheduler)
        self.save_hyperparameters(ignore=["backbone", "decoder", "upsampler", "optimizer", "scheduler"])
        self.model = DenseModel(backbone(in_chans=3), decoder, upsampler, num_classes)
        self.ignore_index = ignore_index
        self.avg_non_ignore = avg_non_ignore
        self.val_metrics = SegmentationMetrics(num_classes, ignore_index)

    def forward(self, image: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Logits resized to the image's size, then to ``size`` where it differs (evaluation
        passes the label map's, which a test-time resize such as SegFormer's may have left at the
        original size): two bilinear steps, as mmseg's ``encode_decode`` and ``whole_inference``."""
        logits = F.interpolate(
            self.model(image), size=image.shape[-2:], mode="bilinear", align_corners=False
        )
        if size is not None and tuple(size) != tuple(logits.shape[-2:]):
            logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
        return logits

    def loss(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Cross-entropy with ``ignore_index``, reduced as ``avg_non_ignore`` says."""
        if self.avg_non_ignore:
            return F.cross_entropy(logits, mask, ignore_index=self.ignore_index)
        return F.cross_entropy(logits, mask, ignore_index=self.ignore_index, reduction="none").mean()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self(batch["image"])
        loss = self.loss(logits, batch["mask"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(logits))
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self(batch["image"], batch["mask"].shape[-2:])
        loss = self.loss(logits, batch["mask"])
        self.log("val/loss", loss, batch_size=len(logits), sync_dist=True)
        self.val_metrics.update(logits, batch["mask"])

    def predict_for_figure(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self(batch["image"][:1]).argmax(dim=1)

    def figure_panels(self, batch: dict[str, torch.Tensor], output: torch.Tensor) -> dict[str, Any]:
        mask = batch["mask"][0].clone()
        mask[mask == self.ignore_index] = 0
        return {"input": denormalize(batch["image"][0]), "prediction": output[0], "ground truth": mask}

    def example_input(self, batch: dict[str, torch.Tensor]) -> tuple:
        return (batch["image"][:1],)
