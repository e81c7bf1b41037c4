"""The A2U matting network (Dai et al., CVPR 2021) in the form the FADE and SAPA matting tables use:
an IndexNet-style ResNet-34 encoder on image + trimap, ASPP, and a four-stage decoder with an
upsampler at every stage (FADE's release: ``poppinace/fade``, ``a2u_matting/``).

Encoder (output stride 16, ``structure = [3, 4, 4]`` residual blocks of the ResNet-34 layers 1-3,
as the released ``resnetmat`` builds it): a stride-1 7x7 stem, two 2x2 max-pools, and at the start
of layers 2 and 3 a block that convolves *before* pooling, so the pre-pooling feature is kept as
the encoder feature (``guide``) of the matching decoder stage. Decoder stage ``i``:
``up(x, guide=e_i) + shortcut_i(skip_i)`` then two residual 3x3 blocks.

Normalisation: the release uses in-place activated batch norm (BN + leaky ReLU 0.01 in one
module, ``inplace_abn.InPlaceABN``); here it is :class:`ActivatedBatchNorm`, a ``BatchNorm2d``
subclass doing the same, so parameters, buffers and numbers match.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["A2UMattingDecoder", "A2UMattingEncoder", "ActivatedBatchNorm", "init_like_release"]

_SLOPE = 0.01  # inplace_abn's default leaky ReLU slope


class ActivatedBatchNorm(nn.BatchNorm2d):
    """BatchNorm followed by leaky ReLU (slope 0.01) or nothing, as ``inplace_abn.ABN``."""

    def __init__(self, num_features: int, activation: bool = True):
        super().__init__(num_features)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        return F.leaky_relu(x, _SLOPE) if self.activation else x


def init_like_release(module: nn.Module) -> None:
    """The A2U release's weight initialisation (``_initialize_weights`` of dongdong93/a2u_matting
    ``scripts/resnet.py``, kept in poppinace/fade ``a2u_matting/resnet.py``; ``MODEL.weight_init``
    is ``xavier_normal`` and the activation leaky ReLU 0.01 in ``scripts/config/default.py``): every
    convolution xavier-normal with the leaky-ReLU gain and bias 0, BatchNorm weight 1 and bias 0,
    linear layers xavier-uniform with gain 0.1 and bias 0. The release runs it over the whole
    network, the upsamplers of the decoder included, before the ImageNet weights load."""
    gain = nn.init.calculate_gain("leaky_relu", _SLOPE)
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_normal_(m.weight, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight, 0.1)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _conv_bn(inp: int, oup: int, k: int, stride: int = 1, act: bool = True) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, k, stride, padding=k // 2, bias=False), ActivatedBatchNorm(oup, act)
    )


class ResidualBlock(nn.Module):
    """Two kxk conv-BN (the second without activation) plus a 1x1 projection when the width or
    stride changes, then leaky ReLU. With ``pool_inside`` the first convolution runs at the input
    resolution, a 2x2 max-pool follows it, and that pre-pooling feature is returned too (the
    release's ``ResidualBlockWithEnFeature``)."""

    def __init__(self, inp: int, oup: int, kernel_size: int = 3, pool_inside: bool = False):
        super().__init__()
        self.pool_inside = pool_inside
        self.conv1 = _conv_bn(inp, oup, kernel_size)
        self.conv2 = _conv_bn(oup, oup, kernel_size, act=False)
        self.proj = None
        if inp != oup or pool_inside:
            self.proj = _conv_bn(inp, oup, 1, stride=2 if pool_inside else 1, act=False)

    def forward(self, x: torch.Tensor):
        residual = x if self.proj is None else self.proj(x)
        pre_pool = self.conv1(x)
        y = F.max_pool2d(pre_pool, 2, 2) if self.pool_inside else pre_pool
        out = F.leaky_relu(self.conv2(y) + residual, _SLOPE)
        return (out, pre_pool) if self.pool_inside else out


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling with depth-wise separable dilated branches (IndexNet/A2U's
    ``hlaspp.ASPP``, dilations 1/6/12/18 at output stride 16) and a 0.5 dropout."""

    def __init__(self, inp: int, oup: int, dilations: Sequence[int] = (1, 6, 12, 18), width: int = 256):
        super().__init__()
        branches = [_conv_bn(inp, width, 1)]
        for d in dilations[1:]:
            branches.append(
                nn.Sequential(
                    nn.Conv2d(inp, inp, 3, padding=d, dilation=d, groups=inp, bias=False),
                    ActivatedBatchNorm(inp),
                    *_conv_bn(inp, width, 1),
                )
            )
        self.branches = nn.ModuleList(branches)
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), *_conv_bn(inp, width, 1))
        self.fuse = _conv_bn(width * (len(dilations) + 1), oup, 1)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [b(x) for b in self.branches]
        outs.append(F.interpolate(self.image_pool(x), size=x.shape[-2:], mode="nearest"))
        return self.dropout(self.fuse(torch.cat(outs, dim=1)))


class A2UMattingEncoder(nn.Module):
    """ResNet-34 layers 1-3 on image + trimap (backbone interface: ``channels``, ``reductions``).

    ``forward`` returns ``[x, e0, e1, s1, e2, s2, e3, top]``: the input, the encoder features that
    guide the four decoder stages (stride 1, 2, 4, 8: the stem output, its first max-pool, and the
    pre-pooling features of layers 2 and 3), the skip features (layer 1 at stride 4, layer 2 at
    stride 8) and the top feature (layer 3 at stride 16, before ASPP).

    Args:
        in_chans: input channels (4: RGB and trimap).
        structure: residual blocks in layers 1-3 (the release: 3, 4, 4).
    """

    def __init__(self, in_chans: int = 4, structure: Sequence[int] = (3, 4, 4)):
        super().__init__()
        self.in_chans = in_chans
        self.stem = _conv_bn(in_chans, 64, 7)
        self.layer1 = nn.Sequential(*(ResidualBlock(64, 64) for _ in range(structure[0])))
        self.down2 = ResidualBlock(64, 128, pool_inside=True)
        self.layer2 = nn.Sequential(*(ResidualBlock(128, 128) for _ in range(structure[1] - 1)))
        self.down3 = ResidualBlock(128, 256, pool_inside=True)
        self.layer3 = nn.Sequential(*(ResidualBlock(256, 256) for _ in range(structure[2] - 1)))
        self.channels = [in_chans, 64, 64, 64, 128, 128, 256, 256]
        self.reductions = [1, 1, 2, 4, 4, 8, 8, 16]
        init_like_release(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != self.in_chans or x.shape[-2] % 16 or x.shape[-1] % 16:
            raise ValueError(
                f"A2UMattingEncoder: expected [B, {self.in_chans}, H, W] with H and W multiples "
                f"of 16 (output stride 16), got {tuple(x.shape)}"
            )
        e0 = self.stem(x)
        e1 = F.max_pool2d(e0, 2, 2)
        s1 = self.layer1(F.max_pool2d(e1, 2, 2))
        y, e2 = self.down2(s1)
        s2 = self.layer2(y)
        y, e3 = self.down3(s2)
        return [x, e0, e1, s1, e2, s2, e3, self.layer3(y)]


class DecoderStage(nn.Module):
    """``up(x, guide) + skip`` then two residual blocks (the release's ``Decoder``)."""

    def __init__(self, inp: int, oup: int, guide_channels: int, upsampler: Callable[..., nn.Module]):
        super().__init__()
        self.up = upsampler(in_channels=inp, scale=2, guide_channels=guide_channels)
        self.dconv = ResidualBlock(inp, oup)
        self.dconv1 = ResidualBlock(oup, oup)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        return self.dconv1(self.dconv(self.up(x, guide=guide) + skip))


class A2UMattingDecoder(nn.Module):
    """ASPP, four decoder stages with an upsampler each, and the alpha predictor.

    Args:
        in_channels: the encoder's ``channels`` (layout of :class:`A2UMattingEncoder`).
        upsampler: factory ``upsampler(in_channels=, scale=2, guide_channels=)``.

    ``out_channels`` is 1: the predictor (conv-BN-act to 1 channel, then a 3x3 convolution) is part
    of the decoder, as in the release (``is_predictor``: no extra head). Weights start as the
    release's (:func:`init_like_release`), the upsamplers' included.
    """

    is_predictor = True

    def __init__(self, in_channels: Sequence[int], upsampler: Callable[..., nn.Module]):
        super().__init__()
        c = list(in_channels)
        if len(c) != 8:
            raise ValueError(
                "A2UMattingDecoder needs the 8 features of A2UMattingEncoder "
                f"([x, e0, e1, s1, e2, s2, e3, top]), got channels {c}"
            )
        x_c, e0_c, e1_c, s1_c, e2_c, s2_c, e3_c, top_c = c
        self.aspp = ASPP(top_c, 256)
        self.short3 = _conv_bn(s2_c, 256, 3)
        self.short2 = _conv_bn(s1_c, 128, 3)
        self.short1 = _conv_bn(e1_c, 64, 3)
        self.short0 = _conv_bn(x_c, 64, 3)
        self.stages = nn.ModuleList(
            [
                DecoderStage(256, 128, e3_c, upsampler),
                DecoderStage(128, 64, e2_c, upsampler),
                DecoderStage(64, 64, e1_c, upsampler),
                DecoderStage(64, 32, e0_c, upsampler),
            ]
        )
        self.pred = nn.Sequential(*_conv_bn(32, 1, 3), nn.Conv2d(1, 1, 3, padding=1, bias=False))
        self.out_channels = 1
        init_like_release(self)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        x, e0, e1, s1, e2, s2, e3, top = features
        skips = [self.short3(s2), self.short2(s1), self.short1(e1), self.short0(x)]
        y = self.aspp(top)
        for stage, skip, guide in zip(self.stages, skips, (e3, e2, e1, e0), strict=True):
            y = stage(y, skip, guide)
        return self.pred(y)
