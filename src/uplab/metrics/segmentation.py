"""Semantic-segmentation metrics: mean IoU and boundary IoU.

mIoU is the class mean of ``TP / (TP + FP + FN)`` over the confusion matrix accumulated on the
whole set (mmsegmentation's definition; classes absent from both prediction and ground truth are
left out of the mean). Boundary IoU (Cheng et al., "Boundary IoU: Improving Object-Centric Image
Segmentation Evaluation", CVPR 2021) is the same ratio restricted to the pixels of each mask that
lie within ``d`` pixels of its contour, ``d = max(1, round(0.02 * image diagonal))``, the mask's
outside (and the image border) counting as background, as in the authors' ``mask_to_boundary``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchmetrics import Metric

from uplab.metrics.errors import NothingToEvaluate, require_finite

BOUNDARY_DILATION_RATIO = 0.02


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape or pred.ndim != 3:
        raise ValueError(
            "expected predicted and true label maps of one shape [B, H, W]; got "
            f"{tuple(pred.shape)} and {tuple(target.shape)}"
        )
    if pred.is_floating_point() or target.is_floating_point():
        raise ValueError(
            f"expected integer label maps (argmax the logits first); got {pred.dtype} and {target.dtype}"
        )


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """Confusion matrix ``[num_classes, num_classes]`` (rows: truth, columns: prediction).

    Pixels whose truth is ``ignore_index`` are skipped; a prediction outside ``[0, num_classes)``
    is a ValueError.
    """
    _check_pair(pred, target)
    valid = target != ignore_index
    truth, guess = target[valid].long(), pred[valid].long()
    if truth.numel() and (truth.min() < 0 or truth.max() >= num_classes):
        raise ValueError(
            f"true labels must lie in [0, {num_classes}) or equal ignore_index={ignore_index}; "
            f"got values in [{int(truth.min())}, {int(truth.max())}]"
        )
    if guess.numel() and (guess.min() < 0 or guess.max() >= num_classes):
        raise ValueError(
            f"predicted labels must lie in [0, {num_classes}); got values in "
            f"[{int(guess.min())}, {int(guess.max())}]"
        )
    counts = torch.bincount(truth * num_classes + guess, minlength=num_classes**2)
    return counts.reshape(num_classes, num_classes)


def iou_from_confusion(confusion: torch.Tensor) -> torch.Tensor:
    """Per-class IoU ``TP / (TP + FP + FN)``; NaN for a class absent from truth and prediction."""
    confusion = confusion.to(torch.float64)
    tp = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))


def boundary_width(height: int, width: int, ratio: float = BOUNDARY_DILATION_RATIO) -> int:
    """Boundary width ``d = max(1, round(ratio * sqrt(H^2 + W^2)))`` of Boundary IoU."""
    return max(1, int(round(ratio * math.hypot(height, width))))


def mask_boundary(masks: torch.Tensor, width: int) -> torch.Tensor:
    """Pixels of each binary mask within ``width`` pixels (chessboard distance) of its contour.

    Equals ``mask - erode(mask, 3x3, width times)`` with the outside of the image as background,
    the authors' ``mask_to_boundary``. ``masks``: bool ``[N, H, W]``; returns bool ``[N, H, W]``.
    """
    outside = (~masks).to(torch.float32).unsqueeze(1)
    outside = F.pad(outside, (width, width, width, width), value=1.0)
    near_outside = F.max_pool2d(outside, kernel_size=2 * width + 1, stride=1).squeeze(1) > 0
    return masks & near_outside


def boundary_counts(
    pred: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    ignore_index: int = 255,
    ratio: float = BOUNDARY_DILATION_RATIO,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class boundary intersection and union ``[num_classes]`` summed over a batch ``[B, H, W]``.

    Ignored pixels count as no class when boundaries are drawn and are left out of both sums.
    """
    _check_pair(pred, target)
    batch, height, width = target.shape
    d = boundary_width(height, width, ratio)
    classes = torch.arange(num_classes, device=target.device).view(1, -1, 1, 1)
    true_masks = (target.unsqueeze(1) == classes).flatten(0, 1)
    pred_masks = (pred.unsqueeze(1) == classes).flatten(0, 1)
    true_b = mask_boundary(true_masks, d).view(batch, num_classes, height, width)
    pred_b = mask_boundary(pred_masks, d).view(batch, num_classes, height, width)
    valid = (target != ignore_index).unsqueeze(1)
    inter = (true_b & pred_b & valid).sum(dim=(0, 2, 3))
    union = ((true_b | pred_b) & valid).sum(dim=(0, 2, 3))
    return inter, union


class SegmentationMetrics(Metric):
    """mIoU and boundary IoU accumulated over a dataset.

    ``update(pred, target)``: label maps ``[B, H, W]`` (int) or logits ``[B, C, H, W]`` (argmaxed;
    non-finite logits are a ValueError, as NaN would argmax to one class).
    ``compute()`` returns ``{"mIoU": ..., "bIoU": ...}`` as fractions in [0, 1] (the papers print
    them times 100), each the mean over classes seen in truth or prediction; it raises
    :class:`~uplab.metrics.NothingToEvaluate` when no pixel of the set had a label other than
    ``ignore_index``.

    Args:
        num_classes: number of classes, ignore label excluded.
        ignore_index: label of pixels left out (ADE20K's reduced "other" is 255).
    """

    full_state_update = False

    def __init__(self, num_classes: int, ignore_index: int = 255, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1; got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.add_state("confusion", torch.zeros(num_classes, num_classes, dtype=torch.long), "sum")
        self.add_state("boundary_inter", torch.zeros(num_classes, dtype=torch.long), "sum")
        self.add_state("boundary_union", torch.zeros(num_classes, dtype=torch.long), "sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        if pred.is_floating_point() and pred.ndim == 4:
            require_finite(type(self).__name__, "the logits", pred.detach())
            pred = pred.argmax(dim=1)
        self.confusion += confusion_matrix(pred, target, self.num_classes, self.ignore_index)
        inter, union = boundary_counts(pred, target, self.num_classes, self.ignore_index)
        self.boundary_inter += inter
        self.boundary_union += union

    def compute(self) -> dict[str, torch.Tensor]:
        if int(self.confusion.sum()) == 0:
            raise NothingToEvaluate(
                f"{type(self).__name__}: no pixel of the set has a label other than "
                f"ignore_index={self.ignore_index}: there is no IoU to report"
            )
        inter = self.boundary_inter.to(torch.float64)
        union = self.boundary_union.to(torch.float64)
        biou = torch.where(
            union > 0, inter / union.clamp(min=1), torch.full_like(inter, float("nan"))
        )
        return {
            "mIoU": iou_from_confusion(self.confusion).nanmean(),
            "bIoU": biou.nanmean(),
        }
