"""The A2U matting network (Dai et al., CVPR 2021) in the form the FADE and SAPA matting tables use:
an IndexNet-style ResNet-34 encoder on image + trimap, ASPP, and a four-stage decoder with an
upsampler at every stage (FADE's release: ``poppinace/fade``, ``a2u_matting/``).

Encoder (output stride 16, ``structure = [3, 4, 4]`` residual blocks of the ResNet-34 layers 1-3,
as the released ``resnetmat`` builds it): a stride-1 7x7 stem, two 2x2 max-pools, and at the start
of layers 2 and 3 a block that convolves *before* pooling, so the pre-pooling feature is kept as
the encoder feature (``guide``) of the matching decoder stage. Decoder stage ``i``:
``up(x, guide=e_i) + shortcut_i(skip_i)`` then two residual 3x3 blocks.

A2U's own row (dongdong93/a2u_matting ``scripts/resnet.py``, ``ResNet34DecoderLearning``) replaces
the four poolings by A2U's learned downsampling: each pre-pooling feature is reduced by the A2U
block whose upsampling kernels the matching decoder stage uses (one affinity map for both). Here
the decoder owns those blocks (its upsamplers, built with ``learned_downsampling=True``) and the
encoder, built with ``learned_downsampling=True``, runs their :meth:`~uplab.upsamplers.a2u.A2U.
downsample` after :class:`uplab.models.DenseModel` binds the pair (:meth:`A2UMattingEncoder.
bind_decoder`); their parameters are counted once, under the decoder.

Normalisation: the release uses in-place activated batch norm (BN + leaky ReLU 0.01 in one
module, ``inplace_abn.InPlaceABN``); here it is :class:`ActivatedBatchNorm`, a ``BatchNorm2d``
subclass doing the same, so parameters, buffers and numbers match.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from uplab.weights import load_strict

__all__ = [
    "A2UMattingDecoder",
    "A2UMattingEncoder",
    "ActivatedBatchNorm",
    "convert_release_resnet34",
    "init_like_release",
]

RELEASE_RESNET34_URL = "https://cloudstor.aarnet.edu.au/plus/s/zcfoVwqiUIKtzoJ/download"
"""The ImageNet ResNet-34 (inplace_abn layout) the A2U release starts from (``model_urls`` of
dongdong93/a2u_matting ``scripts/resnet.py``, saved there as ``pretrained/resnet34.pth.tar``)."""

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


def _max_pool(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, 2, 2)


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

    def forward(self, x: torch.Tensor, pool: Callable[[torch.Tensor], torch.Tensor] | None = None):
        """``pool``: the ×1/2 step of a ``pool_inside`` block (default 2x2 max-pool)."""
        residual = x if self.proj is None else self.proj(x)
        pre_pool = self.conv1(x)
        if self.pool_inside:
            y = _max_pool(pre_pool) if pool is None else pool(pre_pool)
        else:
            y = pre_pool
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
        checkpoint: path of the release's ImageNet ResNet-34 (:data:`RELEASE_RESNET34_URL`),
            loaded after the release's initialisation (:meth:`load_pretrained`); None keeps
            the initialisation (an encoder trained from scratch, which no paper row does).
        learned_downsampling: replace the four 2x2 max-pools (after the stem, before layer 1,
            inside the first blocks of layers 2 and 3) by A2U's learned downsampling with the
            decoder's A2U blocks (A2U's row); the encoder runs once :meth:`bind_decoder` has
            given it those blocks.
    """

    def __init__(
        self,
        in_chans: int = 4,
        structure: Sequence[int] = (3, 4, 4),
        checkpoint: str | os.PathLike | None = None,
        learned_downsampling: bool = False,
    ):
        super().__init__()
        self.in_chans = in_chans
        self.learned_downsampling = learned_downsampling
        # the decoder modules that reduce e0, e1, e2, e3 (not registered: the decoder owns them)
        self._downsamplers: tuple[Callable[[torch.Tensor], torch.Tensor], ...] | None = None
        self.stem = _conv_bn(in_chans, 64, 7)
        self.layer1 = nn.Sequential(*(ResidualBlock(64, 64) for _ in range(structure[0])))
        self.down2 = ResidualBlock(64, 128, pool_inside=True)
        self.layer2 = nn.Sequential(*(ResidualBlock(128, 128) for _ in range(structure[1] - 1)))
        self.down3 = ResidualBlock(128, 256, pool_inside=True)
        self.layer3 = nn.Sequential(*(ResidualBlock(256, 256) for _ in range(structure[2] - 1)))
        self.channels = [in_chans, 64, 64, 64, 128, 128, 256, 256]
        self.reductions = [1, 1, 2, 4, 4, 8, 8, 16]
        init_like_release(self)
        if checkpoint is not None:
            self.load_pretrained(checkpoint)

    def load_pretrained(self, checkpoint: str | os.PathLike | Mapping[str, torch.Tensor]) -> None:
        """Load the release's ImageNet ResNet-34 (a path or its state dict), every encoder
        tensor from it and every tensor of it used but the parts the encoder does not build
        (:func:`convert_release_resnet34`, :func:`uplab.weights.load_strict`)."""
        source = "the ImageNet ResNet-34 checkpoint"
        if not isinstance(checkpoint, Mapping):
            path = Path(checkpoint)
            source = str(path)
            if not path.is_file():
                raise FileNotFoundError(
                    f"A2UMattingEncoder: expected the A2U release's ImageNet ResNet-34 at {path}, "
                    f"which does not exist; fetch it with python scripts/fetch_weights.py "
                    f"a2u_resnet34 ({RELEASE_RESNET34_URL}; reference/weights.yaml)"
                )
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        state, past_structure = convert_release_resnet34(checkpoint, self.state_dict())
        load_strict(self, state, source, dropped=past_structure)

    def bind_decoder(self, decoder: nn.Module) -> None:
        """Take the decoder's A2U blocks for the learned downsampling (a no-op without it): the
        ``downsample`` of the upsamplers guided by ``e0, e1, e2, e3``
        (:meth:`A2UMattingDecoder.downsamplers`). :class:`uplab.models.DenseModel` calls it."""
        if self.learned_downsampling:
            self._downsamplers = tuple(decoder.downsamplers())

    def _pools(self) -> tuple[Callable[[torch.Tensor], torch.Tensor], ...]:
        if not self.learned_downsampling:
            return (_max_pool,) * 4
        if self._downsamplers is None:
            raise ValueError(
                "A2UMattingEncoder(learned_downsampling=True) downsamples with the decoder's A2U "
                "blocks, and none are bound: build the pair with uplab.models.DenseModel, or call "
                "encoder.bind_decoder(decoder) first"
            )
        return self._downsamplers

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != self.in_chans or x.shape[-2] % 16 or x.shape[-1] % 16:
            raise ValueError(
                f"A2UMattingEncoder: expected [B, {self.in_chans}, H, W] with H and W multiples "
                f"of 16 (output stride 16), got {tuple(x.shape)}"
            )
        pool0, pool1, pool2, pool3 = self._pools()
        e0 = self.stem(x)
        e1 = pool0(e0)
        s1 = self.layer1(pool1(e1))
        y, e2 = self.down2(s1, pool=pool2)
        s2 = self.layer2(y)
        y, e3 = self.down3(s2, pool=pool3)
        return [x, e0, e1, s1, e2, s2, e3, self.layer3(y)]


# release ResNet-34 module (inplace_abn layout) -> ours: mod1 is the stem, mod2..mod4 the layers
_RELEASE_LAYERS = {2: ("layer1", None), 3: ("layer2", "down2"), 4: ("layer3", "down3")}
_RELEASE_PARTS = {
    "convs.conv1": "conv1.0", "convs.bn1": "conv1.1", "convs.conv2": "conv2.0",
    "convs.bn2": "conv2.1", "proj_conv": "proj.0", "proj_bn": "proj.1",
}


def _release_key_to_ours(key: str) -> str | None:
    """``module.mod3.block1.convs.bn1.weight`` -> ``down2.conv1.1.weight``; None for a key of
    no encoder part (``mod5``, the classifier, or not inplace_abn's ResNet at all)."""
    key = key.removeprefix("module.")
    if m := re.fullmatch(r"mod1\.(conv1|bn1)\.(\w+)", key):
        return f"stem.{0 if m[1] == 'conv1' else 1}.{m[2]}"
    m = re.fullmatch(r"mod(\d)\.block(\d+)\.(convs\.\w+|proj_\w+)\.(\w+)", key)
    if m is None or int(m[1]) not in _RELEASE_LAYERS or m[3] not in _RELEASE_PARTS:
        return None
    layer, down = _RELEASE_LAYERS[int(m[1])]
    block = int(m[2]) - 1
    if down is not None:  # the first block of layers 2 and 3 is the pooling block
        prefix = down if block == 0 else f"{layer}.{block - 1}"
    else:
        prefix = f"{layer}.{block}"
    return f"{prefix}.{_RELEASE_PARTS[m[3]]}.{m[4]}"


# inplace_abn ResNet-34 parts the encoder does not build: layer 4 (mod5) and the classifier
_RELEASE_UNBUILT = re.compile(r"(module\.)?(mod5\.|classifier\.)")


def convert_release_resnet34(
    checkpoint: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], set[str]]:
    """The release's ImageNet ResNet-34 as :class:`A2UMattingEncoder` weights, as the release's
    ``resnetmat(pretrained=True)`` maps them: the RGB filters of the first convolution copied and
    the trimap channel's set to 0; blocks past the encoder's structure (the rest of layer 3, layer
    4) and the classifier dropped. Every other key of the checkpoint must be an encoder tensor.

    Args:
        checkpoint: the release's file contents (``{"state_dict": ...}`` or the state dict).
        target: the encoder's ``state_dict()`` (its keys and shapes).

    Returns:
        The renamed tensors, and the encoder keys that name the blocks past the encoder's
        structure (mapped but dropped, for :func:`uplab.weights.load_strict`).

    Raises:
        ValueError: a key that is no part of inplace_abn's ResNet-34 (not the release's file).
    """
    state = checkpoint.get("state_dict", checkpoint)
    out: dict[str, torch.Tensor] = {}
    past_structure: set[str] = set()
    foreign = []
    for key, value in state.items():
        if _RELEASE_UNBUILT.match(key):
            continue
        ours = _release_key_to_ours(key)
        if ours is None:
            foreign.append(key)
            continue
        if ours not in target:
            past_structure.add(ours)
        elif ours == "stem.0.weight" and value.shape[1] < target[ours].shape[1]:
            rgb, value = value, torch.zeros_like(target[ours])
            value[:, : rgb.shape[1]] = rgb
        out[ours] = value
    if foreign:
        raise ValueError(
            f"{len(foreign)} checkpoint keys are no part of inplace_abn's ResNet-34 "
            f"({', '.join(foreign[:4])}); expected the A2U release's ImageNet ResNet-34 "
            f"({RELEASE_RESNET34_URL})"
        )
    return out, past_structure


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

    def downsamplers(self) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        """The learned downsampling of the upsamplers guided by ``e0, e1, e2, e3`` (stages 4 to
        1), for :meth:`A2UMattingEncoder.bind_decoder`.

        Raises:
            ValueError: an upsampler without a downsampling branch.
        """
        ups = [stage.up for stage in reversed(self.stages)]
        lacking = sorted(
            {type(up).__name__ for up in ups if not getattr(up, "learned_downsampling", False)}
        )
        if lacking:
            raise ValueError(
                f"A2UMattingEncoder(learned_downsampling=True) downsamples with the decoder's "
                f"upsamplers, but {', '.join(lacking)} has no downsampling branch: use "
                "upsampler=a2u with upsampler.learned_downsampling=true, or the encoder's "
                "learned_downsampling=false"
            )
        return [up.downsample for up in ups]

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        x, e0, e1, s1, e2, s2, e3, top = features
        skips = [self.short3(s2), self.short2(s1), self.short1(e1), self.short0(x)]
        y = self.aspp(top)
        for stage, skip, guide in zip(self.stages, skips, (e3, e2, e1, e0), strict=True):
            y = stage(y, skip, guide)
        return self.pred(y)
