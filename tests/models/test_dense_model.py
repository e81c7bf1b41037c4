from functools import partial

import pytest
import torch
from torch import nn

from uplab.models import DenseModel, TimmBackbone
from uplab.upsamplers import available, build


class NoGuideDecoder(nn.Module):
    """A decoder that calls its upsampler without a guide."""

    provides_guide = False

    def __init__(self, in_channels, upsampler):
        super().__init__()
        self.up = upsampler(in_channels=in_channels[-1], scale=2)
        self.out_channels = in_channels[-1]

    def forward(self, features):
        return self.up(features[-1])


def test_three_lines_backbone_decoder_head():
    model = DenseModel(TimmBackbone("test_resnet"), NoGuideDecoder, partial(build, "bilinear"), 5)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5, 4, 4)


def test_guided_upsampler_on_a_decoder_without_guide_is_a_config_error():
    guided = next((n for n in ("sapa_g", "fade", "sapa_b") if n in available()), None)
    if guided is None:
        pytest.skip("no guided upsampler registered in this checkout")
    with pytest.raises(ValueError, match=f"{guided}.*needs a guide.*unguided upsampler"):
        DenseModel(TimmBackbone("test_resnet"), NoGuideDecoder, partial(build, name=guided), 5)
