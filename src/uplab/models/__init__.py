"""Models: a backbone, a decoder whose ×2 steps are upsamplers, and a prediction head."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from uplab.models.backbones import TimmBackbone
from uplab.models.decoders import SegFormerHead, UNetDecoder, upsampler_is_guided


class DenseModel(nn.Module):
    """Dense prediction in three lines: ``features = backbone(x)``, ``y = decoder(features)``,
    ``out = head(y)``, where the head is a 1×1 convolution to ``out_channels``.

    Args:
        backbone: a module returning a list of features and exposing ``channels``.
        decoder: factory ``decoder(in_channels=backbone.channels, upsampler=upsampler)``.
        upsampler: the upsampler factory handed to the decoder.
        out_channels: channels of the prediction (classes, 1 for depth or alpha).

    Raises:
        ValueError: if the upsampler needs a guide and the decoder gives none
            (a decoder without guides sets ``provides_guide = False``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        decoder: Callable[..., nn.Module],
        upsampler: Callable[..., nn.Module],
        out_channels: int,
    ):
        super().__init__()
        self.backbone = backbone
        self.decoder = decoder(in_channels=list(backbone.channels), upsampler=upsampler)
        if hasattr(backbone, "bind_decoder"):
            # an encoder that runs modules the decoder owns (A2U's learned downsampling)
            backbone.bind_decoder(self.decoder)
        if not getattr(self.decoder, "provides_guide", True) and upsampler_is_guided(upsampler):
            raise ValueError(
                f"the upsampler {getattr(upsampler, 'keywords', {}).get('name', upsampler)!r} needs "
                f"a guide feature, but the decoder {type(self.decoder).__name__} has none to give; "
                "choose an unguided upsampler (e.g. upsampler=bilinear, carafe or dysample) or a "
                "decoder with guides"
            )
        if getattr(self.decoder, "is_predictor", False):
            # the decoder ends in its own predictor (BTS's get_depth): no extra head
            if self.decoder.out_channels != out_channels:
                raise ValueError(
                    f"{type(self.decoder).__name__} predicts {self.decoder.out_channels} channels "
                    f"itself, but the task needs {out_channels}"
                )
            self.head = nn.Identity()
        else:
            self.head = nn.Conv2d(self.decoder.out_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)
        y = self.decoder(features)
        return self.head(y)


__all__ = ["DenseModel", "SegFormerHead", "TimmBackbone", "UNetDecoder"]
