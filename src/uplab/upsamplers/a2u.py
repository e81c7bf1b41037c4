"""A2U: affinity-aware upsampling (Dai, Lu, Shen, "Learning Affinity-Aware Upsampling for Deep
Image Matting", CVPR 2021), as released in ``dongdong93/a2u_matting``
(``scripts/BilinearModel.py``, ``InterChannelUpDown``): reassembly kernels from a low-rank
bilinear (second-order) form of the high-resolution encoder feature, applied to the decoder
feature with CARAFE's reassembly.

The released block also predicts kernels for A2U's learned *down*sampling (``bconv_DP``, used in
the encoder); they take no part in upsampling, so that branch is not built and its released
weights are dropped on loading.

Registers ``a2u`` and the converter for ``BilinearModel.InterChannelUpDown``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from uplab.ops import carafe
from uplab.upsamplers.base import Upsampler, require_odd_int, require_positive_int
from uplab.upsamplers.official import load_mapped, register_official
from uplab.upsamplers.registry import register

NORM_GROUPS = 32  # GroupNorm(32 groups) after each encoding, as released
LEAKY_SLOPE = 0.01


@register("a2u")
class A2U(Upsampler):
    """A2U (Dai et al., CVPR 2021): affinity-aware reassembly kernels from the guide.

    With ``G`` the guide ``[B, C_g, sH, sW]``:

    1. Two dynamic encoding filters, ``u = conv1x1_u(avgpool_{k x k}(G))`` and likewise ``v``
       (``[B, 1, k, k]`` shared by all channels, or ``[B, C_g, k, k]`` channel-wise).
    2. ``U = leaky_relu(groupnorm(G *_s u))``, ``V`` likewise: each (per-sample) filter applied
       to every channel with stride ``s``, so ``U, V`` are ``[B, C_g, H, W]``.
    3. The affinity ``a = sum_c U_c V_c / sqrt(C_g)`` ``[B, 1, H, W]`` (the rank-one bilinear
       form), scaled by per-sample weights ``p = conv1x1_p(avgpool_1(G))``
       (``K*K * group_size * s*s`` of them) and pixel-shuffled to ``[B, group_size*K*K, sH, sW]``.
    4. ``kernels = softmax_{K*K}(sigmoid(.))`` (``sigmoid`` alone when ``K = 1``), and
       ``out = carafe(x, kernels, K, s, group_size)``.

    Departures from the release, none of which changes its published setting (``K = 3``,
    ``k = 6``, shared, one group, ×2), which the golden test reproduces to 1e-10:

    - Any integer ``scale >= 2`` (the release is ×2 only): stride ``s``, padding ``(k - 1) // 2``
      as released, which keeps ``H = sH / s`` for every ``s >= 2``.
    - ``group_size > 1``: the release normalises the kernels laid out as ``[K*K, groups]`` but its
      reassembly reads them as ``[groups, K*K]``, mixing kernels across groups; here each group's
      channels get that group's normalised kernel.
    - The channel loop over the batch is one grouped convolution.

    Args:
        in_channels: channels ``C`` of ``x`` (divisible by ``group_size``).
        scale: integer ratio ``s >= 2``.
        guide_channels: channels ``C_g`` of the guide (default ``C``); GroupNorm with 32 groups
            needs ``C_g % 32 == 0``.
        kernel_size: reassembly window ``K`` (odd; released ``up_kernel_size``).
        encoder_kernel_size: size ``k`` of the dynamic encoding filters ``u, v`` (released
            ``encode_kernel_size``).
        share: one ``u, v`` for all channels (``True``, the paper's setting) or one per channel.
        group_size: channel groups of ``x``, each with its own kernels (released
            ``downupsample_group``).
        backend: passed to :func:`uplab.ops.carafe`.

    Example:
        >>> up = A2U(32, scale=2)
        >>> up(torch.randn(1, 32, 5, 7), guide=torch.randn(1, 32, 10, 14)).shape
        torch.Size([1, 32, 10, 14])
    """

    guided = True

    def __init__(
        self,
        in_channels: int,
        scale: int = 2,
        guide_channels: int | None = None,
        kernel_size: int = 3,
        encoder_kernel_size: int = 6,
        share: bool = True,
        group_size: int = 1,
        backend: str = "auto",
    ):
        super().__init__(in_channels, scale, guide_channels)
        cg = self.guide_channels
        if scale < 2:
            raise ValueError(
                f"A2U encodes the guide with a stride-{scale} convolution to reach the size of x, "
                f"which needs scale >= 2; got scale={scale}"
            )
        if cg % NORM_GROUPS:
            raise ValueError(
                f"A2U normalises the guide's encodings with GroupNorm({NORM_GROUPS} groups), so "
                f"guide_channels must be a multiple of {NORM_GROUPS}; got {cg}"
            )
        require_odd_int("kernel_size", kernel_size)
        require_positive_int("encoder_kernel_size", encoder_kernel_size)
        require_positive_int("group_size", group_size)
        if in_channels % group_size:
            raise ValueError(
                f"group_size must be a positive divisor of in_channels ({in_channels}), "
                f"got {group_size!r}"
            )
        self.kernel_size = kernel_size
        self.encoder_kernel_size = encoder_kernel_size
        self.share = share
        self.group_size = group_size
        self.backend = backend
        filters = 1 if share else cg
        self.filter_u = nn.Conv2d(cg, filters, 1)
        self.filter_v = nn.Conv2d(cg, filters, 1)
        self.norm_u = nn.GroupNorm(NORM_GROUPS, cg)
        self.norm_v = nn.GroupNorm(NORM_GROUPS, cg)
        self.kernel_weights = nn.Conv2d(cg, kernel_size**2 * group_size * scale**2, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """A2U's initialisation (its default config): Xavier-normal convolutions with the
        leaky-ReLU gain, zero biases, GroupNorm weight 1 and bias 0."""
        gain = nn.init.calculate_gain("leaky_relu", LEAKY_SLOPE)
        for conv in (self.filter_u, self.filter_v, self.kernel_weights):
            nn.init.xavier_normal_(conv.weight, gain)
            nn.init.zeros_(conv.bias)
        for norm in (self.norm_u, self.norm_v):
            nn.init.ones_(norm.weight)
            nn.init.zeros_(norm.bias)

    def _encode(self, guide: torch.Tensor, filter_conv: nn.Conv2d, norm: nn.GroupNorm):
        """Apply the per-sample ``k x k`` filter predicted by ``filter_conv`` to every channel of
        ``guide`` with stride ``s``, then GroupNorm and leaky ReLU: ``[B, C_g, H, W]``."""
        b, c, hs, ws = guide.shape
        k = self.encoder_kernel_size
        filters = filter_conv(F.adaptive_avg_pool2d(guide, k)).expand(b, c, k, k)
        encoded = F.conv2d(
            guide.reshape(1, b * c, hs, ws),
            filters.reshape(b * c, 1, k, k),
            stride=self.scale,
            padding=(k - 1) // 2,
            groups=b * c,
        )
        encoded = encoded.view(b, c, hs // self.scale, ws // self.scale)
        return F.leaky_relu(norm(encoded), LEAKY_SLOPE)

    def kernels(self, guide: torch.Tensor) -> torch.Tensor:
        """Normalised reassembly kernels ``[B, group_size*K*K, sH, sW]`` (group-major, as
        :func:`uplab.ops.carafe` reads them); each group's sum to 1 when ``K > 1``."""
        b, c, hs, ws = guide.shape
        kk = self.kernel_size**2
        affinity = (
            self._encode(guide, self.filter_u, self.norm_u)
            * self._encode(guide, self.filter_v, self.norm_v)
        ).sum(dim=1, keepdim=True) / math.sqrt(c)
        weights = self.kernel_weights(F.adaptive_avg_pool2d(guide, 1))
        logits = F.pixel_shuffle(weights * affinity, self.scale).view(
            b, kk, self.group_size, hs, ws
        )
        kernels = torch.sigmoid(logits)
        if kk > 1:
            kernels = F.softmax(kernels, dim=1)
        return kernels.transpose(1, 2).reshape(b, self.group_size * kk, hs, ws)

    def forward(self, x: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
        return carafe(
            x,
            self.kernels(guide),
            self.kernel_size,
            self.scale,
            self.group_size,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, kernel_size={self.kernel_size}, "
            f"encoder_kernel_size={self.encoder_kernel_size}, share={self.share}, "
            f"group_size={self.group_size}"
        )


_RELEASED_KEYS = {
    "bnu.0": "norm_u",
    "bnv.0": "norm_v",
    "bconv_U.1": "filter_u",
    "bconv_V.1": "filter_v",
    "bconv_UP.1": "kernel_weights",
    "bconv_DP.1": None,  # downsampling kernels: not part of upsampling
}


@register_official("BilinearModel.InterChannelUpDown")
def _from_inter_channel_up_down(
    state_dict,
    c: int,
    up_kernel_size: int = 3,
    encode_kernel_size: int = 6,
    share: bool = True,
    downupsample_group: int = 1,
):
    module = A2U(
        c,
        scale=2,
        kernel_size=up_kernel_size,
        encoder_kernel_size=encode_kernel_size,
        share=share,
        group_size=downupsample_group,
    )
    key_map = {}
    for key in state_dict:
        prefix, _, param = key.rpartition(".")
        if prefix in _RELEASED_KEYS:
            target = _RELEASED_KEYS[prefix]
            key_map[key] = None if target is None else f"{target}.{param}"
    return load_mapped(module, state_dict, key_map)
