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
OUTPUTS = ("sigmoid", "linear")


def _unknown_mean(per_pixel: torch.Tensor, unknown: torch.Tensor, per_image: bool) -> torch.Tensor:
    """Sum of ``per_pixel * unknown`` over the unknown pixels, divided by their count.

    ``per_image=False`` pools the whole batch; ``per_image=True`` divides each image's sum by its
    unknown count + 1 and averages over the images (the A2U release's ``weighted_loss``).
    """
    masked = per_pixel * unknown
    if not per_image:
        return masked.sum() / unknown.sum().clamp(min=1.0)
    return (masked.flatten(1).sum(1) / (unknown.flatten(1).sum(1) + 1.0)).mean()


def unknown_region_l1(
    pred: torch.Tensor,
    alpha: torch.Tensor,
    trimap: torch.Tensor,
    eps: float = 1e-6,
    per_image: bool = False,
) -> torch.Tensor:
    """The alpha prediction loss of Deep Image Matting (Xu et al., CVPR 2017, Eq. 1), as IndexNet
    and A2U train with it: ``sqrt((pred - alpha)^2 + eps^2)`` averaged over the trimap's unknown
    region (``per_image``: see :func:`_unknown_mean`).

    The release masks the difference before the square root, so each known pixel adds a constant
    ``eps`` without gradient; that constant is left out here.
    """
    unknown = (trimap == UNKNOWN).to(pred.dtype)
    diff = torch.sqrt((pred - alpha).square() + eps**2)
    return _unknown_mean(diff, unknown, per_image)


def composition_l1(
    pred: torch.Tensor,
    alpha: torch.Tensor,
    fg: torch.Tensor,
    bg: torch.Tensor,
    trimap: torch.Tensor,
    eps: float = 1e-6,
    per_image: bool = False,
) -> torch.Tensor:
    """The compositional loss of Deep Image Matting (Xu et al., CVPR 2017, Eq. 2) as the A2U
    release computes it: ``c = alpha * fg + (1 - alpha) * bg`` with the predicted and the true
    alpha, ``sqrt((c_pred - c_gt)^2 + eps^2)`` summed over the three RGB channels (not averaged
    over them) and over the unknown pixels, divided by the unknown pixel count.

    Args:
        pred: predicted alpha ``[B, 1, H, W]`` in [0, 1].
        alpha: true alpha ``[B, 1, H, W]`` in [0, 1].
        fg: foreground ``[B, 3, H, W]`` in [0, 1] (after the pipeline's colour jitter).
        bg: background ``[B, 3, H, W]`` in [0, 1].
        trimap: ``[B, 1, H, W]`` in {0, 0.5, 1}; 0.5 is the unknown region.
        eps: the Charbonnier constant.
        per_image: normalise per image (see :func:`_unknown_mean`).

    Raises:
        ValueError: if fg or bg is not ``[B, 3, H, W]`` at the prediction's batch and size.
    """
    expected = (pred.shape[0], 3, *pred.shape[-2:])
    for name, layer in (("fg", fg), ("bg", bg)):
        if tuple(layer.shape) != expected:
            raise ValueError(
                f"composition loss: {name} must be [B, 3, H, W] = {list(expected)} like the "
                f"prediction; got {list(layer.shape)}"
            )
    unknown = (trimap == UNKNOWN).to(pred.dtype)
    composite_pred = pred * fg + (1 - pred) * bg
    composite_gt = alpha * fg + (1 - alpha) * bg
    diff = torch.sqrt((composite_pred - composite_gt).square() + eps**2).sum(1, keepdim=True)
    return _unknown_mean(diff, unknown, per_image)


class MattingTask(TaskModule):
    """Image matting (the Composition-1k setting of IndexNet, A2U and FADE).

    The model reads the normalised image and the trimap as four channels and predicts
    ``sigmoid(out)``, or ``out`` itself (``output="linear"``: the A2U release trains on the raw
    output and clips it to [0, 1] only at test, ``np.clip(alpha, 0, 1)`` in dongdong93/a2u_matting
    ``scripts/test.py`` and ``trainval.py``). For evaluation and figures the prediction is clamped
    to [0, 1] and the trimap's known regions are pasted into it, as the released test scripts do.

    Training loss: ``(1 - w) * alpha_loss + w * composition_loss`` with ``w = composition_weight``
    (Deep Image Matting, Eqs. 1-2; the A2U release: ``w = 0.5`` and per-image normalisation).

    Args:
        backbone: factory ``backbone(in_chans=4)``.
        decoder: decoder factory.
        upsampler: upsampler factory handed to the decoder.
        optimizer: optimizer partial.
        scheduler: scheduler partial or None.
        composition_weight: weight ``w`` in [0, 1] of :func:`composition_l1`; 0 trains on the
            alpha loss alone. Above 0 the training batches must carry ``fg`` and ``bg`` (the A2U
            pipeline, ``uplab.data.pipelines.a2u_matting_train``, hands them).
        per_image_loss: normalise both losses per image, as the A2U release does (see
            :func:`_unknown_mean`); False pools the batch's unknown pixels.
        output: ``"sigmoid"`` or ``"linear"`` (see above).
        trimap_unknown_input: the value the trimap's unknown region has in the input channel
            (0.5, uplab's trimap encoding; the A2U release feeds ``trimap / 255.``: 128 / 255).
            Losses and metrics read the trimap as it is.
        eval_size_divisor: reflect-pad the evaluated input to a multiple of this (see
            :meth:`predict_alpha`); None leaves the size to the evaluation pipeline.
        alpha_quantization: how evaluated predictions become 8-bit mattes, ``"round"`` or
            ``"floor"`` (the A2U release's saved PNGs; :class:`~uplab.metrics.MattingMetrics`).
        freeze_bn: keep the encoder's BatchNorm layers in eval mode during training, so their
            running statistics stay as loaded (the affine weights still train). The A2U release
            sets ``TRAIN.freeze_bn: True`` but calls ``eval()`` on them only when the network is
            built, and its training loop's ``net.train()`` undoes that every epoch: the published
            runs updated the statistics, which is ``freeze_bn=False``. True is what the flag meant.
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
        composition_weight: float = 0.0,
        per_image_loss: bool = False,
        freeze_bn: bool = False,
        output: str = "sigmoid",
        trimap_unknown_input: float = UNKNOWN,
        eval_size_divisor: int | None = None,
        alpha_quantization: str = "round",
    ):
        if not 0.0 <= composition_weight <= 1.0:
            raise ValueError(f"composition_weight must be in [0, 1]; got {composition_weight}")
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}; got {output!r}")
        super().__init__(optimizer, scheduler)
        self.save_hyperparameters(
            ignore=["backbone", "decoder", "upsampler", "optimizer", "scheduler"]
        )
        self.model = DenseModel(backbone(in_chans=4), decoder, upsampler, 1)
        self.val_metrics = MattingMetrics(quantization=alpha_quantization)
        self.output = output
        self.trimap_unknown_input = trimap_unknown_input
        if eval_size_divisor is not None and eval_size_divisor < 1:
            raise ValueError(
                f"eval_size_divisor must be a positive integer or None; got {eval_size_divisor!r}"
            )
        self.eval_size_divisor = eval_size_divisor
        self.composition_weight = composition_weight
        self.per_image_loss = per_image_loss
        self.freeze_bn = freeze_bn

    def _freeze_encoder_bn(self) -> None:
        if self.freeze_bn:
            for module in self.model.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()

    def train(self, mode: bool = True) -> MattingTask:
        """``nn.Module.train``, keeping the encoder's BatchNorm in eval mode with ``freeze_bn``."""
        super().train(mode)
        if mode:
            self._freeze_encoder_bn()
        return self

    def on_train_epoch_start(self) -> None:
        # Lightning starts fitting without calling train() (modules are built in train mode) and
        # restores each module's own mode after validation
        self._freeze_encoder_bn()

    def forward(self, image: torch.Tensor, trimap: torch.Tensor) -> torch.Tensor:
        if self.trimap_unknown_input != UNKNOWN:
            trimap = torch.where(trimap == UNKNOWN, self.trimap_unknown_input, trimap)
        out = self.model(torch.cat([image, trimap], dim=1))
        if out.shape[-2:] != image.shape[-2:]:
            out = F.interpolate(out, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return torch.sigmoid(out) if self.output == "sigmoid" else out

    def predict_alpha(self, image: torch.Tensor, trimap: torch.Tensor) -> torch.Tensor:
        """The evaluated alpha: the output clamped to [0, 1], the trimap's known regions pasted.

        With ``eval_size_divisor`` the input (image and trimap channel) is reflect-padded at the
        bottom and right to a multiple of it and the output cropped back, as the A2U release's
        test does (``np.pad(..., mode="reflect")`` then ``outputs[:h, :w]``).
        """
        height, width = image.shape[-2:]
        if self.eval_size_divisor is None:
            out = self(image, trimap)
        else:
            d = self.eval_size_divisor
            pad = (0, -width % d, 0, -height % d)
            padded = self(F.pad(image, pad, mode="reflect"), F.pad(trimap, pad, mode="reflect"))
            out = padded[..., :height, :width]
        return self.paste_known(out.clamp(0.0, 1.0), trimap)

    @staticmethod
    def paste_known(pred: torch.Tensor, trimap: torch.Tensor) -> torch.Tensor:
        """The prediction with the trimap's foreground set to 1 and background to 0."""
        return torch.where(trimap == UNKNOWN, pred, trimap)

    def training_loss(self, pred: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(1 - w) * alpha_loss + w * composition_loss`` (see the class docstring).

        Raises:
            ValueError: if ``composition_weight > 0`` and the batch has no ``fg`` or ``bg``.
        """
        alpha, trimap = batch["alpha"], batch["trimap"]
        loss = unknown_region_l1(pred, alpha, trimap, per_image=self.per_image_loss)
        if self.composition_weight == 0:
            return loss
        missing = [key for key in ("fg", "bg") if key not in batch]
        if missing:
            raise ValueError(
                f"composition_weight={self.composition_weight} needs the foreground and background "
                f"layers in the training batch; missing {missing} (batch keys: {sorted(batch)}). "
                "The A2U pipeline hands them: data=comp1k (uplab.data.pipelines.a2u_matting_train "
                "with Composition1k(..., composite=False)); or set task.composition_weight=0"
            )
        composition = composition_l1(
            pred, alpha, batch["fg"], batch["bg"], trimap, per_image=self.per_image_loss
        )
        return (1 - self.composition_weight) * loss + self.composition_weight * composition

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        pred = self(batch["image"], batch["trimap"])
        loss = self.training_loss(pred, batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(pred))
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        pred = self.predict_alpha(batch["image"], batch["trimap"])
        loss = unknown_region_l1(pred, batch["alpha"], batch["trimap"])
        self.log("val/loss", loss, batch_size=len(pred), sync_dist=True)
        self.val_metrics.update(pred, batch["alpha"], batch["trimap"])

    def predict_for_figure(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.predict_alpha(batch["image"][:1], batch["trimap"][:1])

    def figure_panels(self, batch: dict[str, torch.Tensor], output: torch.Tensor) -> dict[str, Any]:
        return {
            "input": denormalize(batch["image"][0]),
            "trimap": batch["trimap"][0, 0],
            "prediction": output[0, 0],
            "ground truth": batch["alpha"][0, 0],
        }

    def example_input(self, batch: dict[str, torch.Tensor]) -> tuple:
        return (torch.cat([batch["image"][:1], batch["trimap"][:1]], dim=1),)
