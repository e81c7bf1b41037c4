"""CARAFE: content-aware reassembly of features (Wang et al., ICCV 2019), as ``mmcv``'s
``CARAFEPack``: kernels predicted from the decoder feature alone (unguided).

Registers ``carafe`` and the converter for ``mmcv.CARAFEPack``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from uplab.ops import carafe
from uplab.upsamplers.base import Upsampler, require_odd_int, require_positive_int
from uplab.upsamplers.official import load_mapped, register_official
from uplab.upsamplers.registry import register


@register("carafe")
class CARAFE(Upsampler):
    """CARAFE (Wang et al., ICCV 2019): kernel prediction, then reassembly (Eq. 3).

    ``kernels = softmax_K²(pixel_shuffle(content_encoder(channel_compressor(x)), s))`` per group,
    then ``out = carafe(x, kernels)``. Same layers, names and initialisation as
    ``mmcv.ops.CARAFEPack``, so its checkpoints load with identical keys.

    Args:
        in_channels: channels ``C`` of ``x``.
        scale: integer ratio ``s``.
        kernel_size: odd reassembly window ``K`` (mmcv ``up_kernel``).
        group_size: channel groups with their own kernels (mmcv ``up_group``; ``C`` must be divisible
            by it).
        encoder_kernel_size: odd size of the content encoder (mmcv ``encoder_kernel``).
        encoder_dilation: dilation of the content encoder.
        compressed_channels: channels after the 1x1 compressor.
        backend: passed to :func:`uplab.ops.carafe`.

    Example:
        >>> up = CARAFE(16, scale=2)
        >>> up(torch.randn(1, 16, 5, 7)).shape
        torch.Size([1, 16, 10, 14])
    """

    def __init__(
        self,
        in_channels: int,
        scale: int = 2,
        kernel_size: int = 5,
        group_size: int = 1,
        encoder_kernel_size: int = 3,
        encoder_dilation: int = 1,
        compressed_channels: int = 64,
        backend: str = "auto",
    ):
        super().__init__(in_channels, scale)
        require_odd_int("kernel_size", kernel_size)
        require_odd_int("encoder_kernel_size", encoder_kernel_size)
        require_positive_int("encoder_dilation", encoder_dilation)
        require_positive_int("compressed_channels", compressed_channels)
        require_positive_int("group_size", group_size)
        if in_channels % group_size:
            raise ValueError(
                f"group_size must be a positive divisor of in_channels ({in_channels}), "
                f"got {group_size!r}"
            )
        self.kernel_size = kernel_size
        self.group_size = group_size
        self.backend = backend
        self.channel_compressor = nn.Conv2d(in_channels, compressed_channels, 1)
        self.content_encoder = nn.Conv2d(
            compressed_channels,
            kernel_size**2 * group_size * scale**2,
            encoder_kernel_size,
            padding=(encoder_kernel_size - 1) * encoder_dilation // 2,
            dilation=encoder_dilation,
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """mmcv's initialisation: Xavier-uniform compressor, near-zero encoder (uniform kernels)."""
        nn.init.xavier_uniform_(self.channel_compressor.weight)
        nn.init.zeros_(self.channel_compressor.bias)
        nn.init.normal_(self.content_encoder.weight, std=0.001)
        nn.init.zeros_(self.content_encoder.bias)

    def kernels(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised reassembly kernels ``[B, G*K*K, sH, sW]``; each group's sum to 1."""
        logits = F.pixel_shuffle(self.content_encoder(self.channel_compressor(x)), self.scale)
        b, _, h, w = logits.shape
        per_group = logits.view(b, self.group_size, self.kernel_size**2, h, w)
        return F.softmax(per_group, dim=2).view(b, -1, h, w)

    def forward(self, x: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
        return carafe(
            x, self.kernels(x), self.kernel_size, self.scale, self.group_size, backend=self.backend
        )

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, kernel_size={self.kernel_size}, group_size={self.group_size}"
        )


@register_official("mmcv.CARAFEPack")
def _from_carafe_pack(
    state_dict,
    channels: int,
    scale_factor: int,
    up_kernel: int = 5,
    up_group: int = 1,
    encoder_kernel: int = 3,
    encoder_dilation: int = 1,
    compressed_channels: int = 64,
):
    module = CARAFE(
        channels,
        scale_factor,
        kernel_size=up_kernel,
        group_size=up_group,
        encoder_kernel_size=encoder_kernel,
        encoder_dilation=encoder_dilation,
        compressed_channels=compressed_channels,
    )
    return load_mapped(module, state_dict, {})
