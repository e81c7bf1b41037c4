from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from uplab.models import DenseModel, TimmBackbone
from uplab.models.decoders import UNetDecoder
from uplab.upsamplers import available, build


class GuidedNearest(nn.Module):
    guided = True

    def __init__(self, calls, in_channels, scale=2, guide_channels=None):
        super().__init__()
        self.calls, self.out_channels, self.guide_channels = calls, in_channels, guide_channels

    def forward(self, x, guide=None):
        self.calls.append((tuple(x.shape), tuple(guide.shape)))
        return F.interpolate(x, scale_factor=2, mode="nearest")


def test_every_step_is_guided_by_the_finer_skip_up_to_full_resolution():
    calls = []
    decoder = UNetDecoder([4, 8, 16, 32], partial(GuidedNearest, calls), channels=64, min_channels=32)
    feats = [torch.randn(2, 4, 32, 32), torch.randn(2, 8, 16, 16), torch.randn(2, 16, 8, 8), torch.randn(2, 32, 4, 4)]
    out = decoder(feats)
    assert out.shape == (2, decoder.out_channels, 32, 32)
    # x and its guide share the width (FADE gates one by the other), and the guide is 2x larger
    assert [(x[1], x[-1], g[1], g[-1]) for x, g in calls] == [(64, 4, 64, 8), (32, 8, 32, 16), (32, 16, 32, 32)]


@pytest.mark.parametrize("name", ["bilinear", "fade", "sapa_g", "a2u"])
def test_full_resolution_depth_model(name):
    if name not in available():
        pytest.skip(f"upsampler {name!r} is not registered in this checkout")
    model = DenseModel(
        TimmBackbone("test_resnet", include_input=True),
        partial(UNetDecoder, channels=32),
        partial(build, name),
        out_channels=1,
    )
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 1, 32, 32)
    out.mean().backward()


def test_bad_pyramid_is_a_value_error():
    decoder = UNetDecoder([8, 16], partial(build, "nearest"))
    with pytest.raises(ValueError, match=r"\[B, C, 2H, 2W\] of the next coarser"):
        decoder([torch.randn(1, 8, 15, 15), torch.randn(1, 16, 8, 8)])


def test_coarse_control_takes_fewer_steps_and_no_upsampler_at_zero():
    calls = []
    feats = [torch.randn(1, 4, 32, 32), torch.randn(1, 8, 16, 16), torch.randn(1, 16, 8, 8), torch.randn(1, 32, 4, 4)]
    one = UNetDecoder([4, 8, 16, 32], partial(GuidedNearest, calls), channels=64, steps=1)
    assert one(feats).shape == (1, one.out_channels, 8, 8) and [g[1] for _, g in calls] == [64]
    none = UNetDecoder([4, 8, 16, 32], partial(GuidedNearest, calls), channels=64, steps=0)
    assert none(feats).shape == (1, 64, 4, 4) and len(none.upsamplers) == 0 and len(calls) == 1
    with pytest.raises(ValueError, match="steps must be between 0 and 3"):
        UNetDecoder([4, 8, 16, 32], partial(GuidedNearest, calls), steps=4)
