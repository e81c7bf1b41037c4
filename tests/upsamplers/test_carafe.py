"""CARAFE beyond the golden case: any integer scale, odd and non-square maps, channel groups,
the mmcv converter's argument names, and clear errors."""

import pytest
import torch
import torch.nn.functional as F

from uplab.ops.reference import carafe_unfold
from uplab.upsamplers import build
from uplab.upsamplers.carafe import CARAFE
from uplab.upsamplers.official import load_official


@pytest.mark.parametrize("scale", [3, 4])
def test_any_scale_matches_unfold_reference(scale):
    up = CARAFE(4, scale=scale, kernel_size=3, group_size=2, compressed_channels=6).double()
    torch.nn.init.normal_(up.content_encoder.weight)  # non-uniform kernels
    x = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    kernels = up.kernels(x)
    assert kernels.shape == (2, 2 * 9, 3 * scale, 5 * scale)
    per_group_sums = kernels.view(2, 2, 9, 3 * scale, 5 * scale).sum(2)
    torch.testing.assert_close(per_group_sums, torch.ones_like(per_group_sums))
    expected = carafe_unfold(x, kernels, 3, scale, group_size=2)
    torch.testing.assert_close(up(x), expected, atol=1e-12, rtol=0)


def test_uniform_kernels_average_the_parent_window():
    # A zero content encoder gives uniform kernels: every child of a low-resolution point is the
    # zero-padded K x K mean around its parent, whatever the scale.
    up = CARAFE(3, scale=3, kernel_size=5).double()
    torch.nn.init.zeros_(up.content_encoder.weight)
    x = torch.randn(1, 3, 4, 7, dtype=torch.float64)
    box = F.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=True)
    rows, cols = torch.arange(12) // 3, torch.arange(21) // 3
    torch.testing.assert_close(up(x), box[:, :, rows[:, None], cols[None, :]])


def test_mmcv_converter_takes_mmcv_names():
    released = CARAFE(4, scale=3, kernel_size=3, group_size=2, encoder_kernel_size=1)
    state = {k: torch.randn_like(v, dtype=torch.float64) for k, v in released.state_dict().items()}
    mmcv_kwargs = dict(channels=4, scale_factor=3, up_kernel=3, up_group=2, encoder_kernel=1)
    up = load_official("mmcv.CARAFEPack", state, **mmcv_kwargs)
    assert (up.kernel_size, up.group_size, up.scale) == (3, 2, 3)
    for key, value in up.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_registry_defaults_are_mmcv_defaults():
    up = build("carafe", in_channels=8)
    assert up.content_encoder.weight.shape == (5 * 5 * 2 * 2, 64, 3, 3)
    assert not up.guided


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kernel_size": 4}, "kernel_size must be an odd integer"),
        ({"encoder_kernel_size": 2}, "encoder_kernel_size must be an odd integer"),
        ({"group_size": 3}, r"group_size must be a positive divisor of in_channels \(8\), got 3"),
    ],
)
def test_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CARAFE(8, **kwargs)
