"""Fixed and learned baselines without content-aware kernels: nearest, bilinear, deconvolution
and pixel shuffle (sub-pixel convolution), as used in the SAPA and FADE comparison tables."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from uplab.upsamplers.base import Upsampler, require_odd_int, require_positive_int
from uplab.upsamplers.registry import register


@register("nearest")
class NearestUpsample(Upsampler):
    """Nearest-neighbour interpolation (parameter-free)."""

    def forward(self, x: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.scale, mode="nearest")


@register("bilinear")
class BilinearUpsample(Upsampler):
    """Bilinear interpolation, ``align_corners=False`` (parameter-free)."""

    def __init__(self, in_channels: int, scale: int = 2, align_corners: bool = False):
        super().__init__(in_channels, scale)
        if not isinstance(align_corners, bool):
            raise ValueError(f"align_corners must be True or False, got {align_corners!r}")
        self.align_corners = align_corners

    def forward(self, x: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
        return F.interpolate(
            x, scale_factor=self.scale, mode="bilinear", align_corners=self.align_corners
        )


@register("deconv")
class DeconvUpsample(Upsampler):
    """Transposed convolution with kernel ``2*s``, stride ``s`` (the deconv row
    of the CARAFE/SAPA/FADE tables: a 4x4 stride-2 deconvolution at ``s = 2``).

    Args:
        in_channels: input channels.
        scale: integer ratio.
        out_channels: output channels, a positive integer (default ``in_channels``).
    """

    def __init__(self, in_channels: int, scale: int = 2, out_channels: int | None = None):
        super().__init__(in_channels, scale)
        if out_channels is not None:
            self.out_channels = require_positive_int("out_channels", out_channels)
        # padding and output_padding chosen so that the output is exactly s*H for every s
        self.deconv = nn.ConvTranspose2d(
            in_channels,
            self.out_channels,
            2 * scale,
            stride=scale,
            padding=(scale + 1) // 2,
            output_padding=scale % 2,
        )

    def forward(self, x: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
        return self.deconv(x)


@register("pixelshuffle")
class PixelShuffleUpsample(Upsampler):
    """Sub-pixel convolution (Shi et al., CVPR 2016): ``conv3x3(C -> C*s*s)`` then pixel shuffle.

    Args:
        in_channels: input channels.
        scale: integer ratio.
        out_channels: output channels, a positive integer (default ``in_channels``).
        kernel_size: odd size of the expanding convolution, padded to keep ``H x W`` (3 in the
            comparison tables).
    """

    def __init__(
        self, in_channels: int, scale: int = 2, out_channels: int | None = None, kernel_size: int = 3
    ):
        super().__init__(in_channels, scale)
        require_odd_int("kernel_size", kernel_size)
        if out_channels is not None:
            self.out_channels = require_positive_int("out_channels", out_channels)
        self.conv = nn.Conv2d(
            in_channels, self.out_channels * scale * scale, kernel_size, padding=kernel_size // 2
        )
        self.shuffle = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
        return self.shuffle(self.conv(x))
