"""One contract over the whole registry (the timm way): every upsampler maps [2, C, H, W] (and
its guide) to [2, C_out, 2H, 2W], backpropagates into every parameter, and rejects a guide of the
wrong size with a ValueError naming the shapes."""

import pytest
import torch

from uplab.upsamplers import available, build, is_guided

C, H, W = 32, 5, 7  # 32 channels: A2U's GroupNorm needs a multiple of 32; odd, non-square map


@pytest.mark.parametrize("name", available())
def test_maps_shape_and_backpropagates(name):
    up = build(name, in_channels=C, scale=2)
    x = torch.randn(2, C, H, W, requires_grad=True)
    guide = torch.randn(2, C, 2 * H, 2 * W, requires_grad=True) if up.guided else None
    out = up(x, guide=guide)
    assert out.shape == (2, up.out_channels, 2 * H, 2 * W)
    assert torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    if guide is not None:
        assert guide.grad is not None and guide.grad.abs().sum() > 0
    for pname, p in up.named_parameters():
        assert p.grad is not None, f"{name}: no gradient reaches {pname}"


@pytest.mark.parametrize("name", available())
def test_guided_flag_matches_registry(name):
    assert build(name, in_channels=C).guided == is_guided(name)


@pytest.mark.parametrize("name", [n for n in available() if is_guided(n)])
def test_rejects_wrong_guide(name):
    up = build(name, in_channels=C, scale=2)
    x = torch.randn(2, C, H, W)
    bad = torch.randn(2, C, 2 * H + 1, 2 * W)
    with pytest.raises(ValueError, match=r"\(2, 32, 11, 14\)"):
        up(x, guide=bad)
    with pytest.raises(ValueError, match="guide"):
        up(x, guide=None)


@pytest.mark.parametrize("name", available())
def test_rejects_wrong_channels(name):
    up = build(name, in_channels=C, scale=2)
    x = torch.randn(2, C + 1, H, W)
    guide = torch.randn(2, C, 2 * H, 2 * W)
    with pytest.raises(ValueError, match=r"\(2, 33, 5, 7\)"):
        up(x, guide=guide)


def test_unknown_name_lists_available():
    with pytest.raises(ValueError, match="available: .*bilinear"):
        build("no_such_upsampler", in_channels=C)
