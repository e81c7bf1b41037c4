"""Decoders ``(in_channels: list[int], upsampler: factory) -> nn.Module`` with ``out_channels``.

Every ×2 step of a decoder is one upsampler built from the factory as
``upsampler(in_channels=C, scale=2, guide_channels=C_g)`` and called as ``up(x, guide=finer)``.
"""

from uplab.models.decoders.pyramid import check_pyramid, upsampler_is_guided
from uplab.models.decoders.segformer_head import SegFormerHead
from uplab.models.decoders.unet import UNetDecoder

__all__ = ["SegFormerHead", "UNetDecoder", "check_pyramid", "upsampler_is_guided"]
