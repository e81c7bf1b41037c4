"""The upsampler contract (see DESIGN.md): ``forward(x, guide=None)`` maps the low-resolution
decoder feature ``x`` ``[B, C, H, W]`` to ``[B, out_channels, s*H, s*W]``; guided operators also read
the high-resolution encoder feature ``guide`` ``[B, C_g, s*H, s*W]``."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class Upsampler(nn.Module):
    """Base class: holds the sizes every upsampler has and validates inputs.

    Args:
        in_channels: channels ``C`` of the decoder feature ``x``.
        scale: integer upsampling ratio ``s``.
        guide_channels: channels ``C_g`` of the encoder feature (guided operators only);
            defaults to ``in_channels``.

    Attributes:
        recompute: when ``True``, a training forward with gradients keeps only ``x`` and
            ``guide`` for backward and runs the upsampler's forward again there
            (``torch.utils.checkpoint``, non-reentrant, RNG state restored). Same outputs and
            gradients; the kernels, embeddings and normalised copies an upsampler would
            otherwise hold until backward are not kept. ``build(..., recompute=True)`` sets it.
    """

    guided: ClassVar[bool] = False
    recompute: bool = False

    def __init__(self, in_channels: int, scale: int = 2, guide_channels: int | None = None):
        super().__init__()
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive integer, got {in_channels!r}")
        if not isinstance(scale, int) or scale < 1:
            raise ValueError(f"scale must be an integer >= 1, got {scale!r}")
        self.in_channels = in_channels
        self.scale = scale
        self.guide_channels = in_channels if guide_channels is None else guide_channels
        self.out_channels = in_channels

    def __call__(self, x: torch.Tensor, guide: torch.Tensor | None = None, **kwargs):
        if self.recompute and self.training and torch.is_grad_enabled():
            return checkpoint(super().__call__, x, guide, use_reentrant=False, **kwargs)
        return super().__call__(x, guide, **kwargs)

    def check_inputs(self, x: torch.Tensor, guide: torch.Tensor | None) -> None:
        """Raise ``ValueError`` naming both shapes when ``x`` or ``guide`` does not fit."""
        name = type(self).__name__
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name}: x must be [B, C, H, W], got {shape}")
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"{name}: x must have {self.in_channels} channels, got shape {tuple(x.shape)}"
            )
        if not self.guided:
            return
        if guide is None:
            raise ValueError(
                f"{name} is a guided upsampler: forward(x, guide) needs the high-resolution "
                f"encoder feature [B, {self.guide_channels}, {self.scale}*H, {self.scale}*W] "
                f"for x {tuple(x.shape)}, got guide=None"
            )
        b, _, h, w = x.shape
        expected = (b, self.guide_channels, h * self.scale, w * self.scale)
        if guide.dim() != 4 or tuple(guide.shape) != expected:
            raise ValueError(
                f"{name}: guide must have shape {expected} for x {tuple(x.shape)} at scale "
                f"{self.scale}, got guide {tuple(guide.shape)}"
            )

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, scale={self.scale}"
