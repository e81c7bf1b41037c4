"""The BTS depth decoder (Lee et al., "From Big to Small: Multi-Scale Local Planar Guidance for
Monocular Depth Estimation", arXiv:1907.10326, 2019; release ``cleinc/bts``, ``pytorch/bts.py``)
in the setting of SAPA's NYU Depth V2 experiment: its ×2 steps are the configured upsampler.

The decoder reads a ResNet pyramid (strides 2 to 32), climbs with "upconv" steps (upsample, 3x3
convolution, ELU), fuses the skip feature of each stride, runs a dense ASPP at stride 8 (Sec. 3.2),
and at strides 8, 4 and 2 predicts local plane coefficients that the local planar guidance layers
(LPG, Sec. 3.3, Eq. 1-2) expand to full-resolution depth; the three LPG depths and a 1x1-reduced
full-resolution feature feed the final 3x3 prediction.

Upsampling steps: the release upsamples by nearest interpolation inside ``upconv``. SAPA replaces
the four steps from stride 32 to stride 2 (``upconv5`` to ``upconv2``), each guided by the skip
feature at the target stride; the last step (stride 2 to 1) has no encoder feature to guide it and
stays nearest. The published parameter increments say so: CARAFE (compressed 64, K=5) on inputs of
2048, 512, 128 and 128 channels adds 0.41M, SAPA-B with guides of 1024, 512, 256 and 64 channels
adds 0.16M, and a fifth step would add more. The LPG's own expansions (repeat by 8, 4, 2) and the
nearest ×1/4, ×1/2 reductions of its depths are part of the method and are kept.

Departures: the LPG takes no focal length (the release's NYU path ignores it; only KITTI rescales
the final depth by it), and the decoder stops before the final sigmoid: it returns the logits of
``get_depth``, and ``max_depth * sigmoid(logits)`` (what :class:`uplab.tasks.DepthTask` applies)
is the release's ``final_depth``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from uplab.models.decoders.pyramid import check_pyramid

__all__ = ["BTSDecoder", "LocalPlanarGuidance", "PlaneReduction", "AtrousBlock", "UpConv"]


def _bn(channels: int) -> nn.BatchNorm2d:
    # the release's settings (TensorFlow's defaults carried over)
    return nn.BatchNorm2d(channels, momentum=0.01, eps=1.1e-5)


def _conv_elu(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False), nn.ELU()
    )


class UpConv(nn.Module):
    """One ×2 step of BTS: ``elu(conv3x3(up(x, guide)))``, ``up`` nearest in the release.

    Args:
        in_channels: channels of ``x``.
        out_channels: channels after the 3x3 convolution.
        upsampler: factory ``upsampler(in_channels=, scale=2, guide_channels=)``, or ``None`` for
            nearest interpolation.
        guide_channels: channels of the guide (the skip feature at the target stride).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        upsampler: Callable[..., nn.Module] | None = None,
        guide_channels: int | None = None,
    ):
        super().__init__()
        self.up = (
            None if upsampler is None
            else upsampler(in_channels=in_channels, scale=2, guide_channels=guide_channels)
        )
        up_channels = in_channels if self.up is None else self.up.out_channels
        self.conv = nn.Conv2d(up_channels, out_channels, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest") if self.up is None else self.up(x, guide=guide)
        return F.elu(self.conv(x))


class AtrousBlock(nn.Sequential):
    """One branch of BTS's dense ASPP: [BN], ReLU, 1x1 conv to ``2 * out``, BN, ReLU, dilated 3x3."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int, bn_first: bool = True):
        layers = [_bn(in_channels)] if bn_first else []
        layers += [
            nn.ReLU(),
            nn.Conv2d(in_channels, 2 * out_channels, 1, bias=False),
            # the release leaves this one BatchNorm at PyTorch's defaults
            nn.BatchNorm2d(2 * out_channels),
            nn.ReLU(),
            nn.Conv2d(2 * out_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False),
        ]
        super().__init__(*layers)


class PlaneReduction(nn.Module):
    """BTS's ``reduction_1x1``: 1x1 conv + ELU layers halving the width from ``out_channels`` down to
    8, then either the local plane ``(n1, n2, n3, n4)`` or (``final``) a sigmoid map.

    The plane (BTS Eq. 2) comes from three raw outputs: polar angle ``theta = sigmoid * pi/3``,
    azimuth ``phi = sigmoid * 2 pi``, distance ``sigmoid * max_depth``; the unit normal is
    ``(sin theta cos phi, sin theta sin phi, cos theta)``.
    """

    def __init__(self, in_channels: int, out_channels: int, max_depth: float, final: bool = False):
        super().__init__()
        self.max_depth = max_depth
        self.final = final
        layers: list[nn.Module] = []
        width = out_channels
        while width >= 8:
            layers.append(_conv_elu(in_channels, width, kernel_size=1))
            in_channels, width = width, width // 2
        if width < 4:
            raise ValueError(f"PlaneReduction needs out_channels >= 4, got {out_channels}")
        layers.append(nn.Conv2d(in_channels, 1 if final else 3, 1, bias=False))
        self.reduce = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = torch.sigmoid(self.reduce(x))
        if self.final:
            return raw
        theta, phi, dist = raw[:, 0:1] * (math.pi / 3), raw[:, 1:2] * (2 * math.pi), raw[:, 2:3] * self.max_depth
        normal = torch.cat([theta.sin() * phi.cos(), theta.sin() * phi.sin(), theta.cos()], dim=1)
        return torch.cat([normal, dist], dim=1)


class LocalPlanarGuidance(nn.Module):
    """LPG (BTS Sec. 3.3, Eq. 1): each cell's plane ``(n1, n2, n3, n4)`` gives the depth of the
    ``ratio x ratio`` pixels it covers as ``n4 / (n1 u + n2 v + n3)``, with ``(u, v)`` the pixel's
    normalised offset from the cell centre, ``((i mod ratio) - (ratio - 1) / 2) / ratio``.

    ``forward(plane [B, 4, H, W]) -> depth [B, 1, ratio*H, ratio*W]`` (the normal is renormalised
    first, as the release does before calling the layer).
    """

    def __init__(self, ratio: int):
        super().__init__()
        if not isinstance(ratio, int) or ratio < 1:
            raise ValueError(f"LocalPlanarGuidance ratio must be a positive integer, got {ratio!r}")
        self.ratio = ratio

    def forward(self, plane: torch.Tensor) -> torch.Tensor:
        if plane.dim() != 4 or plane.shape[1] != 4:
            raise ValueError(f"LocalPlanarGuidance: expected a plane [B, 4, H, W], got {tuple(plane.shape)}")
        r = self.ratio
        plane = torch.cat([F.normalize(plane[:, :3], dim=1), plane[:, 3:]], dim=1)
        n1, n2, n3, n4 = plane.repeat_interleave(r, dim=2).repeat_interleave(r, dim=3).unbind(dim=1)
        h, w = n1.shape[-2:]
        offset = (torch.arange(r, dtype=plane.dtype, device=plane.device) - (r - 1) / 2) / r
        u = offset.repeat(w // r).view(1, 1, w)
        v = offset.repeat(h // r).view(1, h, 1)
        return (n4 / (n1 * u + n2 * v + n3)).unsqueeze(1)


class BTSDecoder(nn.Module):
    """BTS's decoder with its ×2 steps as the configured upsampler (SAPA's depth setting).

    Args:
        in_channels: the backbone's channels at strides 2, 4, 8, 16, 32 (ResNet-50: 64, 256, 512,
            1024, 2048). A sixth, leading level (the input itself, ``TimmBackbone(include_input=True)``)
            is accepted and not used.
        upsampler: factory ``upsampler(in_channels=, scale=2, guide_channels=)`` for the steps from
            stride 32 to 2, each guided by the skip feature at the target stride.
        num_features: the decoder's width (``bts_size``, 512 in the release).
        max_depth: the largest depth (10 m on NYU Depth V2); scales the plane distances.

    ``out_channels`` is 1: the decoder ends with BTS's own 3x3 predictor (``is_predictor``), whose
    logits become depth as ``max_depth * sigmoid(logits)``. Convolutions start xavier-uniform with
    bias 0, the upsamplers' included (the release's ``model.decoder.apply(weights_init_xavier)``,
    cleinc/bts ``pytorch/bts_main.py``).

    Example:
        >>> from functools import partial
        >>> from uplab.upsamplers import build
        >>> dec = BTSDecoder([8, 16, 16, 32, 32], partial(build, "nearest"), num_features=64)
        >>> feats = [torch.randn(1, c, 64 // 2**i, 64 // 2**i) for i, c in enumerate([8, 16, 16, 32, 32], 1)]
        >>> dec(feats).shape
        torch.Size([1, 1, 64, 64])
    """

    is_predictor = True

    def __init__(
        self,
        in_channels: Sequence[int],
        upsampler: Callable[..., nn.Module],
        num_features: int = 512,
        max_depth: float = 10.0,
    ):
        super().__init__()
        c = list(in_channels)
        if len(c) == 6:
            c = c[1:]
            self.skip_input = True
        elif len(c) == 5:
            self.skip_input = False
        else:
            raise ValueError(
                "BTSDecoder needs the backbone's five levels at strides 2 to 32 (optionally led by "
                f"the input), got in_channels={list(in_channels)}"
            )
        if num_features < 128 or num_features % 32:
            raise ValueError(f"BTSDecoder num_features must be a multiple of 32 and >= 128, got {num_features}")
        self.max_depth = max_depth
        f = num_features
        self.upconv5 = UpConv(c[4], f, upsampler, c[3])
        self.bn5 = _bn(f)
        self.conv5 = _conv_elu(f + c[3], f)
        self.upconv4 = UpConv(f, f // 2, upsampler, c[2])
        self.bn4 = _bn(f // 2)
        self.conv4 = _conv_elu(f // 2 + c[2], f // 2)
        self.bn4_2 = _bn(f // 2)
        # dense ASPP: each branch reads the stride-8 concat and every earlier branch
        self.daspp = nn.ModuleList(
            [
                AtrousBlock(f // 2, f // 4, 3, bn_first=False),
                AtrousBlock(f // 2 + f // 4 + c[2], f // 4, 6),
                AtrousBlock(f + c[2], f // 4, 12),
                AtrousBlock(f + f // 4 + c[2], f // 4, 18),
                AtrousBlock(f + f // 2 + c[2], f // 4, 24),
            ]
        )
        self.daspp_conv = _conv_elu(f // 2 + 5 * (f // 4), f // 4)
        self.reduc8x8 = PlaneReduction(f // 4, f // 4, max_depth)
        self.lpg8x8 = LocalPlanarGuidance(8)
        self.upconv3 = UpConv(f // 4, f // 4, upsampler, c[1])
        self.bn3 = _bn(f // 4)
        self.conv3 = _conv_elu(f // 4 + c[1] + 1, f // 4)
        self.reduc4x4 = PlaneReduction(f // 4, f // 8, max_depth)
        self.lpg4x4 = LocalPlanarGuidance(4)
        self.upconv2 = UpConv(f // 4, f // 8, upsampler, c[0])
        self.bn2 = _bn(f // 8)
        self.conv2 = _conv_elu(f // 8 + c[0] + 1, f // 8)
        self.reduc2x2 = PlaneReduction(f // 8, f // 16, max_depth)
        self.lpg2x2 = LocalPlanarGuidance(2)
        self.upconv1 = UpConv(f // 8, f // 16)  # stride 2 -> 1: no guide there, nearest as released
        self.reduc1x1 = PlaneReduction(f // 16, f // 32, max_depth, final=True)
        self.conv1 = _conv_elu(f // 16 + 4, f // 16)
        self.get_depth = nn.Conv2d(f // 16, 1, 3, padding=1, bias=False)
        self.out_channels = 1
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _lpg_depth(self, reduction: PlaneReduction, lpg: LocalPlanarGuidance, x: torch.Tensor) -> torch.Tensor:
        return lpg(reduction(x)) / self.max_depth

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        features = list(features)[1:] if self.skip_input else list(features)
        check_pyramid(type(self).__name__, features)
        skip0, skip1, skip2, skip3, top = features
        concat5 = torch.cat([self.bn5(self.upconv5(F.relu(top), skip3)), skip3], dim=1)
        iconv5 = self.conv5(concat5)
        concat4 = torch.cat([self.bn4(self.upconv4(iconv5, skip2)), skip2], dim=1)
        iconv4 = self.bn4_2(self.conv4(concat4))

        dense, branches = concat4, [iconv4]
        for i, block in enumerate(self.daspp):
            out = block(iconv4 if i == 0 else dense)
            dense = torch.cat([dense, out], dim=1)
            branches.append(out)
        daspp_feat = self.daspp_conv(torch.cat(branches, dim=1))

        depth8 = self._lpg_depth(self.reduc8x8, self.lpg8x8, daspp_feat)
        concat3 = torch.cat(
            [self.bn3(self.upconv3(daspp_feat, skip1)), skip1, F.interpolate(depth8, scale_factor=0.25, mode="nearest")],
            dim=1,
        )
        iconv3 = self.conv3(concat3)
        depth4 = self._lpg_depth(self.reduc4x4, self.lpg4x4, iconv3)
        concat2 = torch.cat(
            [self.bn2(self.upconv2(iconv3, skip0)), skip0, F.interpolate(depth4, scale_factor=0.5, mode="nearest")],
            dim=1,
        )
        iconv2 = self.conv2(concat2)
        depth2 = self._lpg_depth(self.reduc2x2, self.lpg2x2, iconv2)

        upconv1 = self.upconv1(iconv2)
        concat1 = torch.cat([upconv1, self.reduc1x1(upconv1), depth2, depth4, depth8], dim=1)
        return self.get_depth(self.conv1(concat1))
