from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from uplab.models.decoders import SegFormerHead
from uplab.upsamplers import build

CHANNELS = [8, 16, 24, 32]


def pyramid(batch=2, size=32, channels=CHANNELS):
    return [torch.randn(batch, c, size >> i, size >> i) for i, c in enumerate(channels)]


class RecordingUpsampler(nn.Module):
    """Nearest ×2 that records the shapes of x and guide of each call."""

    guided = True

    def __init__(self, calls, in_channels, scale=2, guide_channels=None):
        super().__init__()
        self.calls, self.out_channels = calls, in_channels

    def forward(self, x, guide=None):
        self.calls.append((self, x.shape[-1], guide.shape[-1]))
        return F.interpolate(x, scale_factor=2, mode="nearest")


def test_six_guided_steps_in_the_released_order():
    """c4 takes three steps (to c3, c2, c1 sizes), then c3 two, then c2 one; each guide is the
    next finer lateral, and each step has its own upsampler module."""
    calls = []
    head = SegFormerHead(CHANNELS, partial(RecordingUpsampler, calls), embed_dim=16)
    out = head(pyramid())
    assert out.shape == (2, 16, 32, 32)
    assert [(x, g) for _, x, g in calls] == [(4, 8), (8, 16), (16, 32), (8, 16), (16, 32), (16, 32)]
    assert [m for m, _, _ in calls] == list(head.upsamplers)


def test_bilinear_resizes_each_level_directly():
    """The released baseline resizes c2..c4 straight to c1's size (not three ×2 steps)."""
    head = SegFormerHead(CHANNELS, partial(build, "bilinear"), embed_dim=16).eval()
    assert head.resize_directly and len(head.upsamplers) == 0
    feats = pyramid(batch=1)
    lateral = [proj(f) for proj, f in zip(head.linear_c, feats, strict=True)]
    resized = [F.interpolate(f, size=(32, 32), mode="bilinear", align_corners=False) for f in lateral[1:]]
    expected = head.linear_fuse(torch.cat([*resized[::-1], lateral[0]], dim=1))
    assert torch.allclose(head(feats), expected, atol=1e-6)


def test_learned_upsampler_is_trained_through():
    head = SegFormerHead(CHANNELS, partial(build, "deconv"), embed_dim=16)
    assert len(head.upsamplers) == 6
    head(pyramid()).sum().backward()
    assert all(p.grad is not None for p in head.upsamplers.parameters())


def test_in_index_selects_the_last_four_of_a_longer_pyramid():
    head = SegFormerHead([3, 4, *CHANNELS], partial(build, "nearest"), embed_dim=16)
    feats = [torch.randn(1, 3, 128, 128), torch.randn(1, 4, 64, 64), *pyramid(batch=1)]
    assert head(feats).shape == (1, 16, 32, 32)


def test_bad_pyramid_and_bad_in_index_are_value_errors():
    head = SegFormerHead(CHANNELS, partial(build, "nearest"), embed_dim=16)
    feats = pyramid()
    feats[2] = torch.randn(2, 24, 5, 5)
    with pytest.raises(ValueError, match=r"\[B, C, 2H, 2W\] of the next coarser"):
        head(feats)
    with pytest.raises(ValueError, match="in_index"):
        SegFormerHead(CHANNELS, partial(build, "nearest"), in_index=(0, 1, 2, 7))


def test_coarse_output_control_fuses_at_the_coarsest_level_without_upsamplers():
    calls = []
    feats = pyramid()
    head = SegFormerHead(CHANNELS, partial(RecordingUpsampler, calls), embed_dim=16, dropout=0.0, coarse_output=True)
    out = head(feats)
    assert out.shape == (2, 16, 4, 4) and len(head.upsamplers) == 0 and not calls
    # the finest level still reaches the output, area-pooled: changing it changes the output
    feats[0] = feats[0] + 1.0
    assert not torch.allclose(head(feats), out)


def test_fusing_conv_is_initialised_as_mmcv_conv_module_and_the_predictor_as_pytorch():
    """linear_fuse: kaiming_normal_(fan_out, relu), std sqrt(2 / 256); the class predictor
    (the release's linear_pred, a plain nn.Conv2d): uniform within 1 / sqrt(fan_in)."""
    from uplab.models import DenseModel

    torch.manual_seed(0)
    head = SegFormerHead([64, 128, 320, 512], partial(build, "bilinear"), embed_dim=256)
    fuse = head.linear_fuse[0].weight
    assert fuse.std().item() == pytest.approx((2 / 256) ** 0.5, rel=0.02)
    assert head.linear_fuse[1].weight.eq(1).all() and head.linear_fuse[1].bias.eq(0).all()

    class Pyramid(nn.Module):
        channels = CHANNELS

    model = DenseModel(Pyramid(), partial(SegFormerHead, embed_dim=256), partial(build, "bilinear"), 150)
    bound = 1 / 256**0.5
    weight = model.head.weight
    assert weight.abs().max().item() <= bound
    assert weight.std().item() == pytest.approx(bound / 3**0.5, rel=0.05)
