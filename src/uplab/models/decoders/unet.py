"""A U-Net style decoder (Ronneberger et al., MICCAI 2015) whose ×2 steps are upsamplers."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from uplab.models.decoders.pyramid import check_pyramid


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class UNetDecoder(nn.Module):
    """U-Net decoder for detail-sensitive tasks (depth, matting): one upsampler per ×2 step.

    From the coarsest level up to the finest, each step projects the skip feature of the finer
    level with a 3×3 conv-BN-ReLU to the width of the running feature ``x`` (guided operators such
    as FADE gate the guide against ``x``, so the two widths must agree), upsamples ``x`` by 2 with
    the upsampler, guided by that projected skip, and fuses the two with two 3×3 conv-BN-ReLU. The output has the
    resolution of the finest level. To reach full resolution, give it a backbone that leads its
    pyramid with the input (``TimmBackbone(include_input=True)``): the last step's guide is then a
    small 3×3 conv on the image itself, the only full-resolution signal there is (a ResNet's first
    feature has stride 2).

    Args:
        in_channels: channels of the backbone's levels, finest first; each level must be twice the
            size of the next.
        upsampler: factory ``upsampler(in_channels=, scale=2, guide_channels=)`` for one ×2 step.
        channels: width after the coarsest level's 1×1 projection; step ``j`` (1 = first step
            from the coarsest level) works at ``max(channels // 2**j, min_channels)``.
        min_channels: the narrowest width.
        steps: how many ×2 steps to take from the coarsest level (default: all, up to the finest
            level). ``steps=0`` builds no upsampler and outputs the coarsest level's projection
            (the task resizes it bilinearly to the image): a control without upsampling, for
            checking that a task rewards it; not in the papers.

    Example:
        >>> from functools import partial
        >>> from uplab.upsamplers import build
        >>> dec = UNetDecoder([3, 64, 128], partial(build, "bilinear"), channels=64)
        >>> dec([torch.randn(1, 3, 32, 32), torch.randn(1, 64, 16, 16), torch.randn(1, 128, 8, 8)]).shape
        torch.Size([1, 32, 32, 32])
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        upsampler: Callable[..., nn.Module],
        channels: int = 128,
        min_channels: int = 32,
        steps: int | None = None,
    ):
        super().__init__()
        in_channels = list(in_channels)
        if len(in_channels) < 2:
            raise ValueError(f"UNetDecoder needs at least two levels, got in_channels={in_channels}")
        if steps is not None and not 0 <= steps <= len(in_channels) - 1:
            raise ValueError(
                f"UNetDecoder: steps must be between 0 and {len(in_channels) - 1} for {len(in_channels)} "
                f"levels, got {steps}; leave it unset to upsample to the finest level"
            )
        steps = len(in_channels) - 1 if steps is None else steps
        widths = [channels] + [max(channels // 2**j, min_channels) for j in range(1, steps + 1)]
        self.bottleneck = _conv_bn_relu(in_channels[-1], channels, kernel_size=1)
        skips, ups, fuses = [], [], []
        for j in range(1, steps + 1):
            skip_channels = in_channels[-1 - j]
            skips.append(_conv_bn_relu(skip_channels, widths[j - 1]))
            up = upsampler(in_channels=widths[j - 1], scale=2, guide_channels=widths[j - 1])
            ups.append(up)
            fuses.append(
                nn.Sequential(
                    _conv_bn_relu(up.out_channels + widths[j - 1], widths[j]),
                    _conv_bn_relu(widths[j], widths[j]),
                )
            )
        self.skips = nn.ModuleList(skips)
        self.upsamplers = nn.ModuleList(ups)
        self.fuses = nn.ModuleList(fuses)
        self.out_channels = widths[-1]

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        check_pyramid(type(self).__name__, features)
        x = self.bottleneck(features[-1])
        for j, (skip, up, fuse) in enumerate(zip(self.skips, self.upsamplers, self.fuses, strict=True)):
            guide = skip(features[-2 - j])
            x = fuse(torch.cat([up(x, guide=guide), guide], dim=1))
        return x
