"""Monocular depth errors on NYUv2, as BTS's evaluation computes them (Lee et al., arXiv 2019).

With ``r = max(gt / pred, pred / gt)`` over valid pixels: ``d1, d2, d3`` are the fractions with
``r < 1.25, 1.25^2, 1.25^3``; ``abs_rel = mean(|gt - pred| / gt)``, ``sq_rel = mean((gt - pred)^2 /
gt)``, ``rmse = sqrt(mean((gt - pred)^2))``, ``rmse_log = sqrt(mean((ln gt - ln pred)^2))`` and
``log10 = mean(|log10 gt - log10 pred|)`` (Eigen et al., NeurIPS 2014). Before that, BTS clamps the
prediction to ``[min_depth, max_depth]`` and keeps ground truth strictly inside that range.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

from uplab.metrics.errors import NothingToEvaluate, require_finite

DEPTH_KEYS = ("d1", "d2", "d3", "abs_rel", "sq_rel", "rmse", "rmse_log", "log10")
# Eigen et al.'s crop of the 480x640 NYUv2 test images (rows 45:471, columns 41:601).
EIGEN_CROP = (45, 471, 41, 601)


def depth_errors(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """The eight NYUv2 errors of one prediction over the pixels where ``mask`` is true.

    Args:
        pred: predicted depth in metres, positive where ``mask`` is true.
        gt: true depth in metres, positive where ``mask`` is true; same shape as ``pred``.
        mask: bool, same shape; at least one pixel must be true (else
            :class:`~uplab.metrics.NothingToEvaluate`).

    Returns:
        dict with keys ``d1 d2 d3 abs_rel sq_rel rmse rmse_log log10`` (python floats).
    """
    if pred.shape != gt.shape or mask.shape != gt.shape:
        raise ValueError(
            "pred, gt and mask must have one shape; got "
            f"{tuple(pred.shape)}, {tuple(gt.shape)}, {tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool; got {mask.dtype}")
    p = pred[mask].to(torch.float64)
    g = gt[mask].to(torch.float64)
    if g.numel() == 0:
        raise NothingToEvaluate("depth_errors: mask selects no pixel: there is nothing to evaluate")
    require_finite("depth_errors", "pred inside mask", p)
    if (p <= 0).any() or (g <= 0).any():
        raise ValueError("pred and gt must be positive inside mask (clamp predictions first)")
    ratio = torch.maximum(g / p, p / g)
    diff = g - p
    return {
        "d1": (ratio < 1.25).double().mean().item(),
        "d2": (ratio < 1.25**2).double().mean().item(),
        "d3": (ratio < 1.25**3).double().mean().item(),
        "abs_rel": (diff.abs() / g).mean().item(),
        "sq_rel": (diff**2 / g).mean().item(),
        "rmse": diff.pow(2).mean().sqrt().item(),
        "rmse_log": (g.log() - p.log()).pow(2).mean().sqrt().item(),
        "log10": (g.log10() - p.log10()).abs().mean().item(),
    }


class DepthMetrics(Metric):
    """NYUv2 depth errors averaged over images (BTS computes them per image, then averages).

    ``update(pred, gt)`` takes ``[B, 1, H, W]`` depths in metres (``gt == 0`` marks missing depth).
    Predictions are clamped to ``[min_depth, max_depth]``; a non-finite prediction is a
    ValueError. Pixels with ``min_depth < gt < max_depth`` are evaluated, inside Eigen's crop when
    ``eigen_crop`` is set (480x640 inputs only). Images without a valid pixel are skipped;
    ``compute()`` raises :class:`~uplab.metrics.NothingToEvaluate` when no image had one.
    """

    full_state_update = False

    def __init__(
        self, min_depth: float = 1e-3, max_depth: float = 10.0, eigen_crop: bool = False, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        if not 0 < min_depth < max_depth:
            raise ValueError(f"need 0 < min_depth < max_depth; got {min_depth}, {max_depth}")
        self.min_depth, self.max_depth, self.eigen_crop = min_depth, max_depth, eigen_crop
        for key in DEPTH_KEYS:
            self.add_state(key, torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("images", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, gt: torch.Tensor) -> None:
        if pred.shape != gt.shape or pred.ndim != 4 or pred.shape[1] != 1:
            raise ValueError(
                f"expected pred and gt of one shape [B, 1, H, W]; got {tuple(pred.shape)}, {tuple(gt.shape)}"
            )
        require_finite(type(self).__name__, "the predicted depth", pred.detach())
        pred = pred.detach().clamp(self.min_depth, self.max_depth)
        valid = (gt > self.min_depth) & (gt < self.max_depth)
        if self.eigen_crop:
            if tuple(gt.shape[-2:]) != (480, 640):
                raise ValueError(f"eigen_crop needs 480x640 depth maps; got {tuple(gt.shape[-2:])}")
            top, bottom, left, right = EIGEN_CROP
            crop = torch.zeros_like(valid)
            crop[..., top:bottom, left:right] = True
            valid &= crop
        for p, g, m in zip(pred, gt, valid, strict=True):
            if not m.any():
                continue
            for key, value in depth_errors(p, g, m).items():
                setattr(self, key, getattr(self, key) + value)
            self.images += 1

    def compute(self) -> dict[str, torch.Tensor]:
        if int(self.images) == 0:
            raise NothingToEvaluate(
                f"{type(self).__name__}: no image of the set has a pixel with "
                f"{self.min_depth} < gt < {self.max_depth}"
                f"{' inside the Eigen crop' if self.eigen_crop else ''}: there is no depth error "
                "to report; check the ground truth's units (metres) and min_depth/max_depth"
            )
        count = self.images.to(torch.float64)
        return {key: getattr(self, key) / count for key in DEPTH_KEYS}
