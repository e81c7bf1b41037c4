"""The all-MLP decoder of SegFormer with learnable ×2 upsampling steps, as in the SAPA and FADE runs."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from uplab.models.decoders.pyramid import check_pyramid
from uplab.upsamplers.basic import BilinearUpsample


class _LinearEmbed(nn.Module):
    """Per-pixel linear projection (SegFormer's ``MLP``): ``[B, C, H, W] -> [B, E, H, W]``."""

    def __init__(self, in_channels: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Linear(in_channels, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()


class SegFormerHead(nn.Module):
    """SegFormer's all-MLP decoder (Xie et al., NeurIPS 2021, Sec. 3.2) with upsampler steps.

    Each selected level ``c_i`` is projected to ``embed_dim`` channels, brought to the resolution of
    the finest level, concatenated and fused by a 1×1 conv-BN-ReLU. As in the released SAPA/FADE
    SegFormer runs, every level travels by ×2 steps: with four levels, ``c4`` takes three steps,
    ``c3`` two and ``c2`` one, six upsamplers in all, in that order. At each step the coarse
    projected feature is ``x`` and the projected lateral of the next finer level is ``guide``. The
    bilinear baseline resizes each level directly to the finest resolution in one interpolation,
    as the released head does (three ×2 bilinear steps would give different numbers).

    The class predictor is not part of the decoder: ``out_channels`` is ``embed_dim``.

    Initialisation as the release's: the projections keep PyTorch's ``nn.Linear`` default, the
    fusing convolution is mmcv's ``ConvModule`` default (``kaiming_normal_``, ``fan_out``, ReLU
    gain; its BatchNorm weight 1, bias 0).

    Args:
        in_channels: channels of the backbone's levels, finest first.
        upsampler: factory ``upsampler(in_channels=, scale=2, guide_channels=)`` for one ×2 step.
        embed_dim: width of the projections (256 for MiT-B1 in the papers).
        in_index: which levels to use (default: the last four, strides 4 to 32 of a
            ResNet or MiT pyramid). Consecutive selected levels must differ by a factor 2.
        dropout: dropout before the predictor (0.1 in SegFormer).
        coarse_output: fuse at the coarsest level's resolution instead of the finest: the finer
            laterals are area-pooled down and no upsampler is built, so the output has the
            backbone's coarsest stride (the task resizes its logits bilinearly to the image). A
            control without upsampling, for checking that a task rewards it; not in the papers.

    Example:
        >>> from functools import partial
        >>> from uplab.upsamplers import build
        >>> head = SegFormerHead([64, 128, 256, 512], partial(build, "bilinear"), embed_dim=64)
        >>> feats = [torch.randn(1, c, 32 // 2**i, 32 // 2**i) for i, c in enumerate([64, 128, 256, 512])]
        >>> head(feats).shape
        torch.Size([1, 64, 32, 32])
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        upsampler: Callable[..., nn.Module],
        embed_dim: int = 256,
        in_index: Sequence[int] = (-4, -3, -2, -1),
        dropout: float = 0.1,
        coarse_output: bool = False,
    ):
        super().__init__()
        in_channels = list(in_channels)
        if len(in_index) < 2:
            raise ValueError(f"SegFormerHead needs at least two levels, got in_index={in_index}")
        try:
            selected = [in_channels[i] for i in in_index]
        except IndexError:
            raise ValueError(
                f"SegFormerHead: in_index {tuple(in_index)} does not fit the backbone's "
                f"{len(in_channels)} levels with channels {in_channels}"
            ) from None
        self.in_index = tuple(in_index)
        self.embed_dim = embed_dim
        self.out_channels = embed_dim
        self.linear_c = nn.ModuleList(_LinearEmbed(c, embed_dim) for c in selected)
        self.linear_fuse = nn.Sequential(
            nn.Conv2d(embed_dim * len(selected), embed_dim, 1, bias=False),
            nn.BatchNorm2d(embed_dim),
            nn.ReLU(inplace=True),
        )
        nn.init.kaiming_normal_(self.linear_fuse[0].weight, mode="fan_out", nonlinearity="relu")
        self.dropout = nn.Dropout2d(dropout)
        self.coarse_output = coarse_output
        num_steps = 0 if coarse_output else len(selected) * (len(selected) - 1) // 2
        ups = [upsampler(in_channels=embed_dim, scale=2, guide_channels=embed_dim) for _ in range(num_steps)]
        self.resize_directly = all(
            isinstance(u, BilinearUpsample) and not u.align_corners for u in ups
        )
        self.upsamplers = nn.ModuleList([] if self.resize_directly else ups)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        levels = [features[i] for i in self.in_index]
        check_pyramid(type(self).__name__, levels)
        lateral = [proj(f) for proj, f in zip(self.linear_c, levels, strict=True)]
        size = lateral[0].shape[-2:]
        if self.coarse_output:
            fused = [F.adaptive_avg_pool2d(f, lateral[-1].shape[-2:]) for f in lateral[:-1]] + [lateral[-1]]
        elif self.resize_directly:
            fused = [lateral[0]] + [
                F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in lateral[1:]
            ]
        else:
            fused = [lateral[0]]
            step = iter(self.upsamplers)
            for level in range(len(lateral) - 1, 0, -1):
                x = lateral[level]
                for to in range(level - 1, -1, -1):
                    x = next(step)(x, guide=lateral[to])
                fused.insert(1, x)
        return self.dropout(self.linear_fuse(torch.cat(fused[::-1], dim=1)))
