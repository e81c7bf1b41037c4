"""IndexNet: learned index maps for upsampling (Lu et al., "Indices Matter: Learning to Index for
Deep Image Matting", ICCV 2019; "Index Networks", TPAMI 2020), as released in
``poppinace/indexnet_matting`` (``scripts/hlindex.py``).

An index block looks at the high-resolution encoder feature and predicts, for every ``s x s``
cell, how much each of its children keeps; the decoder upsamples by nearest neighbour and
multiplies by that "decoder index" (the index-guided unpooling of the paper). The released blocks
also return an "encoder index" (a softmax over the children) for index-guided *pooling*; it takes
no part in upsampling and is not computed here.

Registers ``indexnet`` and the converters for ``hlindex.HolisticIndexBlock``,
``hlindex.DepthwiseO2OIndexBlock`` and ``hlindex.DepthwiseM2OIndexBlock``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from uplab.upsamplers.base import Upsampler
from uplab.upsamplers.official import load_mapped, register_official
from uplab.upsamplers.registry import register

INDEX_BLOCKS = ("holistic", "o2o", "m2o")


def context_window(scale: int, context: bool) -> tuple[int, int]:
    """``(kernel_size, padding)`` of the strided index convolution at stride ``scale``.

    Without context the kernel is the ``s x s`` cell itself (``(2, 0)`` at ``s = 2``). With
    context it adds ``ceil(s / 2)`` pixels on every side, centred on the cell, and the map keeps
    ``H = sH / s`` for every ``s``: ``(4, 1)`` at ``s = 2`` as released, ``2s`` with padding
    ``s / 2`` for even ``s``, ``2s + 1`` with padding ``(s + 1) / 2`` for odd ``s``.
    """
    if not context:
        return scale, 0
    margin = (scale + 1) // 2
    return scale + 2 * margin, margin


def index_encoder(
    in_channels: int,
    out_channels: int,
    hidden_channels: int,
    groups: int,
    scale: int,
    context: bool,
    nonlinear: bool,
) -> nn.Sequential:
    """One index network: ``conv`` (strided, ``scale``) or, nonlinear,
    ``conv -> norm (BatchNorm) -> act (ReLU6) -> project (1x1)``; no biases, as released."""
    kernel_size, padding = context_window(scale, context)
    first_out = hidden_channels if nonlinear else out_channels
    layers = OrderedDict(
        conv=nn.Conv2d(
            in_channels,
            first_out,
            kernel_size,
            stride=scale,
            padding=padding,
            groups=groups,
            bias=False,
        )
    )
    if nonlinear:
        layers["norm"] = nn.BatchNorm2d(hidden_channels)
        layers["act"] = nn.ReLU6()
        layers["project"] = nn.Conv2d(hidden_channels, out_channels, 1, groups=groups, bias=False)
    return nn.Sequential(layers)


@register("indexnet")
class IndexNet(Upsampler):
    """Index-guided upsampling (IndexNet, Lu et al., ICCV 2019; TPAMI 2020).

    ``out = pixel_shuffle(sigmoid(index_net(guide)), s) * nearest_up(x, s)``

    Index blocks (the paper's index networks):

    - ``"holistic"``: one network ``guide -> s**2`` channels, one index map shared by all channels
      (hidden width ``2 * C_g`` when nonlinear).
    - ``"o2o"``: depth-wise one-to-one, ``s**2`` networks (one per child position), each a
      depth-wise convolution: channel ``c`` of the index sees only channel ``c`` of the guide.
    - ``"m2o"``: depth-wise many-to-one, the same ``s**2`` networks with full convolutions: channel
      ``c`` of the index sees every channel of the guide.

    ``nonlinear`` adds BatchNorm + ReLU6 and a 1x1 convolution; ``context`` widens the strided
    kernel beyond the ``s x s`` cell (4x4 instead of 2x2 at ``s = 2``; see :func:`context_window`).

    The released blocks are ×2 only; here the stride, the number of per-position networks and the
    pixel shuffle follow ``scale``, and ``scale = 2`` reproduces them exactly (weights load with
    :func:`uplab.upsamplers.official.load_official`).

    Defaults are the setting of the IndexNet rows in FADE's comparisons (the released SegFormer
    log ``segformer.b1_indexnet``: ``DepthwiseM2OIndexBlock``, linear, 2x2 kernels, i.e. no
    context). IndexNet's best matting model (released ``hlmobilenetv2``) is ``m2o`` with
    ``nonlinear=True, context=True``.

    Args:
        in_channels: channels ``C`` of ``x``.
        scale: integer ratio ``s``.
        guide_channels: channels ``C_g`` of the guide (default ``C``); depth-wise blocks produce
            one index per channel, so they need ``C_g == C``.
        index_block: ``"holistic"``, ``"o2o"`` or ``"m2o"``.
        nonlinear: BatchNorm + ReLU6 + 1x1 convolution after the strided convolution.
        context: wider strided kernel (see :func:`context_window`).

    Example:
        >>> up = IndexNet(16, scale=2)
        >>> up(torch.randn(1, 16, 5, 7), guide=torch.randn(1, 16, 10, 14)).shape
        torch.Size([1, 16, 10, 14])
    """

    guided = True

    def __init__(
        self,
        in_channels: int,
        scale: int = 2,
        guide_channels: int | None = None,
        index_block: str = "m2o",
        nonlinear: bool = False,
        context: bool = False,
    ):
        super().__init__(in_channels, scale, guide_channels)
        if index_block not in INDEX_BLOCKS:
            raise ValueError(f"index_block must be one of {INDEX_BLOCKS}, got {index_block!r}")
        cg = self.guide_channels
        if index_block != "holistic" and cg != in_channels:
            raise ValueError(
                f"index_block {index_block!r} predicts one index per channel, so guide_channels "
                f"must equal in_channels; got guide_channels={cg}, in_channels={in_channels}. "
                f"Use index_block='holistic' for a guide of another width."
            )
        self.index_block = index_block
        self.nonlinear = nonlinear
        self.context = context
        options = dict(scale=scale, context=context, nonlinear=nonlinear)
        if index_block == "holistic":
            branches = [index_encoder(cg, scale**2, 2 * cg, groups=1, **options)]
        else:
            groups = cg if index_block == "o2o" else 1
            branches = [
                index_encoder(cg, cg, cg, groups=groups, **options) for _ in range(scale**2)
            ]
        # branch j (depth-wise) predicts child (j // s, j % s) of every cell, as indexnet{j+1}
        self.branches = nn.ModuleList(branches)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """IndexNet's initialisation: convolutions ``normal(0, sqrt(2 / (k*k*out)))``
        (He, fan-out), BatchNorm weight 1 and bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def decoder_index(self, guide: torch.Tensor) -> torch.Tensor:
        """Index map ``[B, 1 (holistic) or C, sH, sW]`` in (0, 1): sigmoid, then pixel shuffle."""
        if self.index_block == "holistic":
            logits = self.branches[0](guide)
        else:
            # [B, C, s*s, H, W] flattened channel-major: channel c*s*s + j is child j of channel c
            logits = torch.stack([branch(guide) for branch in self.branches], dim=2).flatten(1, 2)
        return F.pixel_shuffle(torch.sigmoid(logits), self.scale)

    def forward(self, x: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
        upsampled = F.interpolate(x, scale_factor=self.scale, mode="nearest")
        return self.decoder_index(guide) * upsampled

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, index_block={self.index_block!r}, "
            f"nonlinear={self.nonlinear}, context={self.context}"
        )


# Positions in the released nn.Sequential: 0 conv, 1 BatchNorm, 2 ReLU6, 3 1x1 conv.
_RELEASED_LAYERS = {"0": "conv", "1": "norm", "3": "project"}


def _released_key_map(state_dict) -> dict[str, str]:
    """``indexnet{j}.{layer}.{param}`` (depth-wise), ``indexnet.{layer}.{param}`` (holistic,
    nonlinear) or ``indexnet.{param}`` (holistic, linear: a bare Conv2d) → ``branches.…``."""
    key_map = {}
    for key in state_dict:
        head, _, rest = key.partition(".")
        branch = head.removeprefix("indexnet") or "1"
        layer, _, param = rest.partition(".")
        if not param:
            layer, param = "0", rest
        if not branch.isdigit() or layer not in _RELEASED_LAYERS:
            continue  # left as is, so load_mapped names it as unexpected
        key_map[key] = f"branches.{int(branch) - 1}.{_RELEASED_LAYERS[layer]}.{param}"
    return key_map


def _from_index_block(index_block, state_dict, inp, use_nonlinear=False, use_context=False):
    module = IndexNet(
        inp, scale=2, index_block=index_block, nonlinear=use_nonlinear, context=use_context
    )
    return load_mapped(module, state_dict, _released_key_map(state_dict))


@register_official("hlindex.HolisticIndexBlock")
def _from_holistic(state_dict, inp, use_nonlinear=False, use_context=False):
    return _from_index_block("holistic", state_dict, inp, use_nonlinear, use_context)


@register_official("hlindex.DepthwiseO2OIndexBlock")
def _from_depthwise_o2o(state_dict, inp, use_nonlinear=False, use_context=False):
    return _from_index_block("o2o", state_dict, inp, use_nonlinear, use_context)


@register_official("hlindex.DepthwiseM2OIndexBlock")
def _from_depthwise_m2o(state_dict, inp, use_nonlinear=False, use_context=False):
    return _from_index_block("m2o", state_dict, inp, use_nonlinear, use_context)
