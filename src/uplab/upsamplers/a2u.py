"""A2U: affinity-aware upsampling (Dai, Lu, Shen, "Learning Affinity-Aware Upsampling for Deep
Image Matting", CVPR 2021), as released in ``dongdong93/a2u_matting``
(``scripts/BilinearModel.py``, ``InterChannelUpDown``): reassembly kernels from a low-rank
bilinear (second-order) form of the high-resolution encoder feature, applied to the decoder
feature with CARAFE's reassembly.

The released block also predicts, from the same affinity map, the kernels of A2U's learned
*down*sampling of the guide (``bconv_DP``, used by the matting encoder to replace pooling). That
branch is built with ``learned_downsampling=True`` (:meth:`A2U.downsample`); without it the
module is the upsampler alone and the released ``bconv_DP`` weights are dropped on loading.

Registers ``a2u`` and the converter for ``BilinearModel.InterChannelUpDown``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from uplab.ops import carafe, learned_downsample
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

    With ``learned_downsampling`` (×2 only), :meth:`downsample` also scales the same affinity by
    per-sample weights ``p_d = conv1x1_d(avgpool_1(G))`` (released ``bconv_DP``), softmaxes them
    over ``(2K)^2`` (no sigmoid), and reduces ``G`` itself to ``[B, C_g, sH/2, sW/2]`` with
    :func:`uplab.ops.learned_downsample` over ``2K x 2K`` windows, as the released encoder does
    before each stride-2 step. The upsampling kernels of that affinity are kept for the next
    :meth:`forward` with the same guide tensor (unless ``recompute``), so the pair is computed
    once, as released.

    Departures from the release, none of which changes its published setting (``K = 3``,
    ``k = 6``, shared, one group, ×2), which the golden test reproduces to 1e-10:

    - Any integer ``scale >= 2`` (the release is ×2 only): stride ``s``, padding ``(k - 1) // 2``
      as released, which keeps ``H = sH / s`` for every ``s >= 2``.
    - ``group_size > 1``: the release normalises the kernels laid out as ``[K*K, groups]`` but its
      reassembly reads them as ``[groups, K*K]``, mixing kernels across groups; here each group's
      channels get that group's normalised kernel (the downsampling kernels likewise).
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
        learned_downsampling: build the downsampling branch (released ``bconv_DP``) and
            :meth:`downsample`; ``scale`` must be 2 and ``C_g`` divisible by ``group_size``.

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
        learned_downsampling: bool = False,
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
        self.learned_downsampling = learned_downsampling
        self.downsample_weights = None
        if learned_downsampling:
            if scale != 2 or cg % group_size:
                raise ValueError(
                    f"A2U's learned downsampling is released for scale 2 with the guide's "
                    f"channels divisible by group_size; got scale={scale}, guide_channels={cg}, "
                    f"group_size={group_size}: use scale=2 or learned_downsampling=False"
                )
            self.downsample_weights = nn.Conv2d(cg, self.downsample_kernel_size**2 * group_size, 1)
        # (guide, upsampling kernels) from the last downsample(), for forward() on that guide
        self._kernels_of_downsampled_guide: tuple[torch.Tensor, torch.Tensor] | None = None
        self.reset_parameters()

    @property
    def downsample_kernel_size(self) -> int:
        """Window of the learned downsampling: ``2K`` (released ``down_kernel_size``)."""
        return 2 * self.kernel_size

    def reset_parameters(self) -> None:
        """A2U's initialisation (its default config): Xavier-normal convolutions with the
        leaky-ReLU gain, zero biases, GroupNorm weight 1 and bias 0."""
        gain = nn.init.calculate_gain("leaky_relu", LEAKY_SLOPE)
        convs = (self.filter_u, self.filter_v, self.kernel_weights, self.downsample_weights)
        for conv in filter(None, convs):
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

    def _affinity(self, guide: torch.Tensor) -> torch.Tensor:
        """``sum_c U_c V_c / sqrt(C_g)``: ``[B, 1, H, W]``."""
        return (
            self._encode(guide, self.filter_u, self.norm_u)
            * self._encode(guide, self.filter_v, self.norm_v)
        ).sum(dim=1, keepdim=True) / math.sqrt(guide.shape[1])

    def kernels(self, guide: torch.Tensor, affinity: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised reassembly kernels ``[B, group_size*K*K, sH, sW]`` (group-major, as
        :func:`uplab.ops.carafe` reads them); each group's sum to 1 when ``K > 1``. ``affinity``:
        the guide's, when already computed."""
        b, c, hs, ws = guide.shape
        kk = self.kernel_size**2
        if affinity is None:
            affinity = self._affinity(guide)
        weights = self.kernel_weights(F.adaptive_avg_pool2d(guide, 1))
        logits = F.pixel_shuffle(weights * affinity, self.scale).view(
            b, kk, self.group_size, hs, ws
        )
        kernels = torch.sigmoid(logits)
        if kk > 1:
            kernels = F.softmax(kernels, dim=1)
        return kernels.transpose(1, 2).reshape(b, self.group_size * kk, hs, ws)

    def downsampling_kernels(self, guide: torch.Tensor, affinity: torch.Tensor) -> torch.Tensor:
        """Kernels of the learned downsampling ``[B, group_size*(2K)^2, sH/2, sW/2]``
        (group-major), each group's softmaxed over its ``(2K)^2`` window."""
        b, _, h, w = affinity.shape
        weights = self.downsample_weights(F.adaptive_avg_pool2d(guide, 1))
        logits = (weights * affinity).view(b, self.group_size, -1, h, w)
        return F.softmax(logits, dim=2).view(b, -1, h, w)

    def downsample(self, guide: torch.Tensor) -> torch.Tensor:
        """A2U's learned downsampling of ``guide`` ``[B, C_g, H, W]`` to ``[B, C_g, H/2, W/2]``
        (the released encoder's ``interchannel_downsampling`` with ``bconv_DP``'s kernels).

        Raises:
            ValueError: the module was built without ``learned_downsampling``, or the guide does
                not fit (``H``, ``W`` even, ``C_g`` channels).
        """
        if self.downsample_weights is None:
            raise ValueError(
                "A2U.downsample needs the downsampling branch; build the upsampler with "
                "learned_downsampling=True"
            )
        if guide.dim() != 4 or guide.shape[1] != self.guide_channels:
            raise ValueError(
                f"A2U.downsample: expected a guide [B, {self.guide_channels}, H, W], got "
                f"{tuple(guide.shape)}"
            )
        affinity = self._affinity(guide)
        if not self.recompute:  # a recomputed forward must rebuild its own graph
            self._kernels_of_downsampled_guide = (guide, self.kernels(guide, affinity))
        kernels = self.downsampling_kernels(guide, affinity)
        return learned_downsample(guide, kernels, self.downsample_kernel_size, 2, self.group_size)

    def _upsampling_kernels(self, guide: torch.Tensor) -> torch.Tensor:
        cached, self._kernels_of_downsampled_guide = self._kernels_of_downsampled_guide, None
        if cached is not None and cached[0] is guide:
            return cached[1]
        return self.kernels(guide)

    def forward(self, x: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
        return carafe(
            x,
            self._upsampling_kernels(guide),
            self.kernel_size,
            self.scale,
            self.group_size,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, kernel_size={self.kernel_size}, "
            f"encoder_kernel_size={self.encoder_kernel_size}, share={self.share}, "
            f"group_size={self.group_size}, learned_downsampling={self.learned_downsampling}"
        )


_RELEASED_KEYS = {
    "bnu.0": "norm_u",
    "bnv.0": "norm_v",
    "bconv_U.1": "filter_u",
    "bconv_V.1": "filter_v",
    "bconv_UP.1": "kernel_weights",
    "bconv_DP.1": "downsample_weights",  # dropped unless learned_downsampling
}


@register_official("BilinearModel.InterChannelUpDown")
def _from_inter_channel_up_down(
    state_dict,
    c: int,
    up_kernel_size: int = 3,
    encode_kernel_size: int = 6,
    share: bool = True,
    downupsample_group: int = 1,
    learned_downsampling: bool = False,
):
    """``learned_downsampling`` keeps ``bconv_DP`` (the released block always has it) for
    :meth:`A2U.downsample`; without it those weights are dropped."""
    module = A2U(
        c,
        scale=2,
        kernel_size=up_kernel_size,
        encoder_kernel_size=encode_kernel_size,
        share=share,
        group_size=downupsample_group,
        learned_downsampling=learned_downsampling,
    )
    key_map = {}
    for key in state_dict:
        prefix, _, param = key.rpartition(".")
        if prefix in _RELEASED_KEYS:
            target = _RELEASED_KEYS[prefix]
            if target == "downsample_weights" and not learned_downsampling:
                target = None
            key_map[key] = None if target is None else f"{target}.{param}"
    return load_mapped(module, state_dict, key_map)
