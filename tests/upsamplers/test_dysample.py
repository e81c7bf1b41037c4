"""DySample beyond the golden cases: zero offsets are bilinear interpolation at any scale, group
and style; offsets move the sampling points in the right direction, per group; the released
initialisation and converter; clear errors."""

from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from uplab.upsamplers import build
from uplab.upsamplers.dysample import DySample
from uplab.upsamplers.official import load_official


def _zero_offsets(up: DySample) -> DySample:
    torch.nn.init.zeros_(up.offset.weight)
    torch.nn.init.zeros_(up.offset.bias)
    if up.scope is not None:
        torch.nn.init.normal_(up.scope.weight)  # any scope: it only scales the zero offsets
    return up


@contextmanager
def _float64_default():
    # init_pos holds (j - (s-1)/2) / s: built in float32 and cast later it is off by ~1e-8 for
    # s = 3, so modules compared in float64 are built in float64 (as the golden README says).
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _bilinear(x, scale):
    return F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)


@settings(max_examples=30, deadline=None)
@given(
    scale=st.sampled_from([2, 3, 4]),
    style=st.sampled_from(["lp", "pl"]),
    groups=st.sampled_from([1, 2, 4]),
    dyscope=st.booleans(),
    h=st.integers(1, 6),
    w=st.integers(1, 6),
)
def test_zero_offsets_are_bilinear_interpolation(scale, style, groups, dyscope, h, w):
    channels = 4 * scale**2  # divisible by every group count and, for "pl", by scale**2
    with _float64_default():
        up = _zero_offsets(DySample(channels, scale, style=style, groups=groups, dyscope=dyscope))
    x = torch.randn(2, channels, h, w, dtype=torch.float64)
    with torch.no_grad():
        out = up(x)
    torch.testing.assert_close(out, _bilinear(x, scale), atol=1e-12, rtol=0)


def _shift_bias(up: DySample, axis: int, pixels: float, group: int | None = None) -> None:
    """Offset bias that moves every sampling point of ``group`` (all groups when None) by
    ``pixels`` input pixels along ``axis`` (0: x, 1: y), through the static 0.25 scope."""
    g, s = up.groups, up.scale
    per_position = s * s if up.style == "lp" else 1  # "pl" predicts one offset per output pixel
    bias = torch.zeros(2, g, per_position, dtype=up.offset.bias.dtype)
    bias[axis, slice(None) if group is None else group] = pixels / 0.25
    with torch.no_grad():
        up.offset.bias.copy_(bias.flatten())


@pytest.mark.parametrize("style", ["lp", "pl"])
@pytest.mark.parametrize("scale", [2, 3])
def test_offsets_move_sampling_points_along_their_axis(style, scale):
    # Moving every point one input pixel right (down) samples what bilinear upsampling shows
    # s output pixels further right (down), wherever that stays inside the map.
    channels = 2 * scale**2
    x = torch.randn(1, channels, 4, 5, dtype=torch.float64)
    reference = _bilinear(x, scale)
    for axis in (0, 1):
        with _float64_default():
            up = DySample(channels, scale, style=style, groups=2)
        torch.nn.init.zeros_(up.offset.weight)
        _shift_bias(up, axis, 1.0)
        with torch.no_grad():
            out = up(x)
        if axis == 0:
            torch.testing.assert_close(out[..., :-scale], reference[..., scale:])
        else:
            torch.testing.assert_close(out[..., :-scale, :], reference[..., scale:, :])


def test_each_group_samples_at_its_own_positions():
    with _float64_default():
        up = DySample(8, 2, groups=4)
    torch.nn.init.zeros_(up.offset.weight)
    _shift_bias(up, axis=0, pixels=1.0, group=1)
    x = torch.randn(1, 8, 3, 4, dtype=torch.float64)
    with torch.no_grad():
        out = up(x)
    reference = _bilinear(x, 2)
    moved = slice(2, 4)  # channels of group 1
    torch.testing.assert_close(out[:, moved, :, :-2], reference[:, moved, :, 2:])
    torch.testing.assert_close(out[:, :2], reference[:, :2])
    torch.testing.assert_close(out[:, 4:], reference[:, 4:])


def test_released_initialisation():
    up = DySample(16, scale=2, style="lp", groups=4, dyscope=True)
    assert up.offset.weight.shape == (2 * 4 * 4, 16, 1, 1)
    assert 0 < up.offset.weight.std() < 0.01
    assert not up.offset.bias.any() and not up.scope.weight.any()
    assert up.scope.bias is None
    pl = DySample(16, scale=2, style="pl", groups=4)
    assert pl.offset.weight.shape == (2 * 4, 16 // 4, 1, 1) and pl.scope is None
    assert "init_pos" in dict(pl.named_buffers())


def test_converter_loads_released_keys_at_any_scale():
    donor = DySample(9, scale=3, style="pl", groups=3, dyscope=True)
    state = {k: torch.randn_like(v, dtype=torch.float64) for k, v in donor.state_dict().items()}
    kwargs = dict(in_channels=9, scale=3, style="pl", groups=3, dyscope=True)
    up, key_map = load_official("dysample.DySample", state, return_key_map=True, **kwargs)
    assert key_map == {k: k for k in state}
    for key, value in up.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_registry_builds_the_paper_default():
    up = build("dysample", in_channels=16)
    assert (up.style, up.groups, up.scope, up.guided) == ("lp", 4, None, False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"in_channels": 6, "groups": 4},
            r"groups must be a positive divisor of in_channels \(6\)",
        ),
        (
            {"in_channels": 8, "style": "pl", "scale": 3, "groups": 1},
            r"divisible by scale\*\*2 = 9",
        ),
        ({"in_channels": 8, "style": "lpl"}, "style must be one of"),
    ],
)
def test_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DySample(**kwargs)
