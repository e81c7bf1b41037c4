"""Monocular depth estimation: scale-invariant log loss, NYUv2 errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from uplab.metrics import DepthMetrics
from uplab.models import DenseModel
from uplab.tasks.base import TaskModule
from uplab.tasks.figures import denormalize


def silog_loss(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, variance_focus: float = 0.85) -> torch.Tensor:
    """Scale-invariant log loss (Eigen et al., NIPS 2014, Eq. 4) with BTS's weighting:
    ``10 * sqrt(mean(d^2) - variance_focus * mean(d)^2)``, ``d = log pred - log gt`` on valid pixels."""
    if not valid.any():
        return pred.sum() * 0.0
    d = torch.log(pred[valid].clamp(min=1e-6)) - torch.log(gt[valid])
    return 10.0 * torch.sqrt((d.square().mean() - variance_focus * d.mean().square()).clamp(min=1e-12))


class DepthTask(TaskModule):
    """Monocular depth (the NYUv2 setting of FADE with BTS, here with any decoder).

    The prediction is ``max_depth * sigmoid(out)`` as in BTS, resized bilinearly to the depth
    map's size if the decoder stops short of full resolution.

    Args:
        backbone: factory ``backbone(in_chans=3)``.
        decoder: decoder factory.
        upsampler: upsampler factory handed to the decoder.
        optimizer: optimizer partial.
        scheduler: scheduler partial or None.
        min_depth: smallest depth evaluated (metres); ground truth at or below it is invalid.
        max_depth: largest depth predicted and evaluated (10 m on NYUv2).
        loss_min_depth: ground truth at or below it is left out of the loss; None: ``min_depth``
            (BTS trains on ``depth_gt > 0.1`` for NYU, cleinc/bts ``pytorch/bts_main.py``).
        variance_focus: the silog loss's lambda (BTS ``--variance_focus``, 0.85).
    """

    data_task = "depth"
    monitor = "val/d1"
    monitor_mode = "max"

    def __init__(
        self,
        backbone: Callable[..., nn.Module],
        decoder: Callable[..., nn.Module],
        upsampler: Callable[..., nn.Module],
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        min_depth: float = 1e-3,
        max_depth: float = 10.0,
        loss_min_depth: float | None = None,
        variance_focus: float = 0.85,
    ):
        super().__init__(optimizer, scheduler)
        self.save_hyperparameters(ignore=["backbone", "decoder", "upsampler", "optimizer", "scheduler"])
        self.model = DenseModel(backbone(in_chans=3), decoder, upsampler, 1)
        self.min_depth, self.max_depth = min_depth, max_depth
        self.loss_min_depth = min_depth if loss_min_depth is None else loss_min_depth
        self.variance_focus = variance_focus
        self.val_metrics = DepthMetrics(min_depth, max_depth)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        out = self.model(image)
        if out.shape[-2:] != image.shape[-2:]:
            out = F.interpolate(out, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return self.max_depth * torch.sigmoid(out)

    def _loss(self, pred: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        return silog_loss(pred, depth, depth > self.loss_min_depth, self.variance_focus)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        pred = self(batch["image"])
        loss = self._loss(pred, batch["depth"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(pred))
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        pred = self(batch["image"])
        self.log("val/loss", self._loss(pred, batch["depth"]), batch_size=len(pred), sync_dist=True)
        self.val_metrics.update(pred, batch["depth"])

    def predict_for_figure(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self(batch["image"][:1])

    def figure_panels(self, batch: dict[str, torch.Tensor], output: torch.Tensor) -> dict[str, Any]:
        return {
            "input": denormalize(batch["image"][0]),
            "prediction": output[0, 0],
            "ground truth": batch["depth"][0, 0],
        }

    def example_input(self, batch: dict[str, torch.Tensor]) -> tuple:
        return (batch["image"][:1],)
