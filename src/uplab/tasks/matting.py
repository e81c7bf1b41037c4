"""Image matting: RGB and trimap in, alpha out; Composition-1k errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from uplab.metrics import MattingMetrics
from uplab.models import DenseModel
from uplab.tasks.base import TaskModule
from uplab.tasks.figures import denormalize

UNKNOWN = 0.5


def unknown_region_l1(pred: torch.Tensor, alpha: torch.Tensor, trimap: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The alpha prediction loss of Deep Image Matting (Xu et al., CVPR 2017, Eq. 1), as IndexNet
    and A2U train with it: ``sqrt((pred - alpha)^2 + eps^2)`` averaged over the trimap's unknown
    region."""
    unknown = (trimap == UNKNOWN).to(pred.dtype)
    diff = torch.sqrt((pred - alpha).square() + eps**2)
    return (diff * unknown).sum() / unknown.sum().clamp(min=1.0)


class MattingTask(TaskModule):
    """Image matting (the Composition-1k setting of IndexNet, A2U and FADE).

    The model reads the normalised image and the trimap as four channels and predicts
    ``sigmoid(out)``. For evaluation and figures the trimap's known regions are pasted into the
    prediction, as the released test scripts do.

    Args:
        backbone: factory ``backbone(in_chans=4)``.
        decoder: decoder factory.
        upsampler: upsampler factory handed to the decoder.
        optimizer: optimizer partial.
        scheduler: scheduler partial or None.
    """

    data_task = "matting"
    monitor = "val/sad"
    monitor_mode = "min"

    def __init__(
        self,
        backbone: Callable[..., nn.Module],
        decoder: Callable[..., nn.Module],
        upsampler: Callable[..., nn.Module],
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
    ):
        super().__init__(optimizer, scheduler)
        self.save_hyperparameters(ignore=["backbone", "decoder", "upsampler", "optimizer", "scheduler"])
        self.model = DenseModel(backbone(in_chans=4), decoder, upsampler, 1)
        self.val_metrics = MattingMetrics()

    def forward(self, image: torch.Tensor, trimap: torch.Tensor) -> torch.Tensor:
        out = self.model(torch.cat([image, trimap], dim=1))
        if out.shape[-2:] != image.shape[-2:]:
            out = F.interpolate(out, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return torch.sigmoid(out)

    @staticmethod
    def paste_known(pred: torch.Tensor, trimap: torch.Tensor) -> torch.Tensor:
        """The prediction with the trimap's foreground set to 1 and background to 0."""
        return torch.where(trimap == UNKNOWN, pred, trimap)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        pred = self(batch["image"], batch["trimap"])
        loss = unknown_region_l1(pred, batch["alpha"], batch["trimap"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(pred))
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        pred = self(batch["image"], batch["trimap"])
        loss = unknown_region_l1(pred, batch["alpha"], batch["trimap"])
        self.log("val/loss", loss, batch_size=len(pred), sync_dist=True)
        self.val_metrics.update(self.paste_known(pred, batch["trimap"]), batch["alpha"], batch["trimap"])

    def predict_for_figure(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        trimap = batch["trimap"][:1]
        return self.paste_known(self(batch["image"][:1], trimap), trimap)

    def figure_panels(self, batch: dict[str, torch.Tensor], output: torch.Tensor) -> dict[str, Any]:
        return {
            "input": denormalize(batch["image"][0]),
            "trimap": batch["trimap"][0, 0],
            "prediction": output[0, 0],
            "ground truth": batch["alpha"][0, 0],
        }

    def example_input(self, batch: dict[str, torch.Tensor]) -> tuple:
        return (torch.cat([batch["image"][:1], batch["trimap"][:1]], dim=1),)
