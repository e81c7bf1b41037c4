"""A2U beyond the golden case: normalised kernels at any scale and group count, reassembly through
the shared carafe op, channel-wise encoding filters, samples kept apart in the batched encoding,
the converter dropping the downsampling branch (or keeping it), the learned downsampling against
the released formula, and clear errors."""

import pytest
import torch

from uplab.ops.reference import carafe_unfold
from uplab.upsamplers import build
from uplab.upsamplers.a2u import A2U
from uplab.upsamplers.official import load_official

C = 32  # GroupNorm(32) needs a multiple of 32


def _randomise(module):
    module.load_state_dict({k: torch.randn_like(v) for k, v in module.state_dict().items()})
    return module.double()


@pytest.mark.parametrize(("scale", "group_size"), [(2, 2), (3, 1), (4, 4)])
def test_kernels_are_normalised_per_group_and_reassemble_x(scale, group_size):
    up = _randomise(A2U(8, scale=scale, guide_channels=C, kernel_size=5, group_size=group_size))
    x = torch.randn(2, 8, 3, 5, dtype=torch.float64)
    guide = torch.randn(2, C, 3 * scale, 5 * scale, dtype=torch.float64)
    kernels = up.kernels(guide)
    assert kernels.shape == (2, group_size * 25, 3 * scale, 5 * scale)
    sums = kernels.view(2, group_size, 25, 3 * scale, 5 * scale).sum(dim=2)
    torch.testing.assert_close(sums, torch.ones_like(sums))
    expected = carafe_unfold(x, kernels, 5, scale, group_size=group_size)
    torch.testing.assert_close(up(x, guide), expected, atol=1e-12, rtol=0)


def test_unit_kernel_is_a_sigmoid_gate():
    up = _randomise(A2U(C, kernel_size=1))
    guide = torch.randn(1, C, 6, 8, dtype=torch.float64)
    kernels = up.kernels(guide)
    assert kernels.shape == (1, 1, 6, 8)
    assert ((kernels > 0) & (kernels < 1)).all()


def test_shared_filters_equal_identical_channelwise_filters():
    shared = _randomise(A2U(C, share=True))
    channelwise = A2U(C, share=False).double()
    state = shared.state_dict()
    for name in ("filter_u", "filter_v"):
        state[f"{name}.weight"] = state[f"{name}.weight"].expand(C, -1, -1, -1).clone()
        state[f"{name}.bias"] = state[f"{name}.bias"].expand(C).clone()
    channelwise.load_state_dict(state)
    guide = torch.randn(2, C, 6, 8, dtype=torch.float64)
    torch.testing.assert_close(channelwise.kernels(guide), shared.kernels(guide))


def test_samples_do_not_mix_in_the_batched_encoding():
    up = _randomise(A2U(C, scale=3, share=False))
    guide = torch.randn(3, C, 6, 9, dtype=torch.float64)
    batched = up.kernels(guide)
    for i in range(3):
        torch.testing.assert_close(batched[i : i + 1], up.kernels(guide[i : i + 1]))


# uplab's A2U module names -> the released A2U block's (dongdong93/a2u_matting)
RELEASED_NAMES = {
    "norm_u": "bnu.0",
    "norm_v": "bnv.0",
    "filter_u": "bconv_U.1",
    "filter_v": "bconv_V.1",
    "kernel_weights": "bconv_UP.1",
}


def test_converter_drops_the_downsampling_branch():
    donor = A2U(C, kernel_size=3, encoder_kernel_size=4)
    names = RELEASED_NAMES
    released = {}
    for key, value in donor.state_dict().items():
        module, param = key.split(".")
        released[f"{names[module]}.{param}"] = torch.randn_like(value, dtype=torch.float64)
    released["bconv_DP.1.weight"] = torch.randn(36, C, 1, 1, dtype=torch.float64)
    released["bconv_DP.1.bias"] = torch.randn(36, dtype=torch.float64)
    up, key_map = load_official(
        "BilinearModel.InterChannelUpDown",
        released,
        return_key_map=True,
        c=C,
        up_kernel_size=3,
        encode_kernel_size=4,
        share=True,
        downupsample_group=1,
    )
    assert key_map["bconv_DP.1.weight"] is None and key_map["bconv_DP.1.bias"] is None
    assert not any("DP" in name or "down" in name for name in up.state_dict())
    ours = up.state_dict()
    for key, value in released.items():
        if key_map[key] is not None:
            assert torch.equal(ours[key_map[key]], value), key
    assert up.encoder_kernel_size == 4


def test_registry_builds_the_paper_setting():
    up = build("a2u", in_channels=64)
    assert (up.kernel_size, up.encoder_kernel_size, up.share, up.group_size) == (3, 6, True, 1)
    assert up.filter_u.weight.shape == (1, 64, 1, 1)
    assert up.kernel_weights.weight.shape == (3 * 3 * 2 * 2, 64, 1, 1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"in_channels": 48}, "guide_channels must be a multiple of 32; got 48"),
        (
            {"in_channels": 16, "guide_channels": 32, "group_size": 3},
            r"divisor of in_channels \(16\)",
        ),
        ({"in_channels": 32, "kernel_size": 4}, "kernel_size must be an odd integer"),
        ({"in_channels": 32, "encoder_kernel_size": 0}, "encoder_kernel_size must be a positive"),
        ({"in_channels": 32, "scale": 1}, "needs scale >= 2; got scale=1"),
    ],
)
def test_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        A2U(**kwargs)


def released_down_up_kernels(up: A2U, guide: torch.Tensor):
    """InterChannelUpDown.forward (shared filters, one group) sample by sample: the
    downsampling kernels softmax(p_d * affinity) over 36 and the upsampling kernels
    softmax(sigmoid(pixel_shuffle(p_u * affinity))) over 9, from one affinity map."""
    n, c, h, w = guide.shape
    pad = (up.encoder_kernel_size - 1) // 2
    downs, ups = [], []
    for i in range(n):
        g = guide[i : i + 1]
        encoded = []
        for conv, norm in ((up.filter_u, up.norm_u), (up.filter_v, up.norm_v)):
            f = conv(torch.nn.functional.adaptive_avg_pool2d(g, up.encoder_kernel_size))
            e = torch.nn.functional.conv2d(
                g[0].unsqueeze(1), f.view(1, 1, *f.shape[-2:]), stride=2, padding=pad
            )
            encoded.append(torch.nn.functional.leaky_relu(norm(e.view(1, c, h // 2, w // 2)), 0.01))
        affinity = (encoded[0] * encoded[1]).sum(dim=1, keepdim=True) / c**0.5
        pooled = torch.nn.functional.adaptive_avg_pool2d(g, 1)
        p_d = up.downsample_weights(pooled).view(36, 1, 1, 1)
        p_u = up.kernel_weights(pooled).view(36, 1, 1, 1)
        downs.append(torch.softmax(torch.nn.functional.conv2d(affinity, p_d), dim=1))
        shuffled = torch.nn.functional.pixel_shuffle(torch.nn.functional.conv2d(affinity, p_u), 2)
        ups.append(torch.softmax(torch.sigmoid(shuffled), dim=1))
    return torch.cat(downs), torch.cat(ups)


def test_learned_downsampling_follows_the_release_from_the_affinity_of_the_upsampling():
    from uplab.ops import learned_downsample

    up = _randomise(A2U(C, learned_downsampling=True))
    guide = torch.randn(2, C, 8, 12, dtype=torch.float64)
    down_kernels, up_kernels = released_down_up_kernels(up, guide)
    torch.testing.assert_close(up.downsample(guide), learned_downsample(guide, down_kernels, 6))
    x = torch.randn(2, C, 4, 6, dtype=torch.float64)
    expected = carafe_unfold(x, up_kernels, 3, 2)
    # the kernels kept by downsample() for this guide, and those of a fresh forward
    torch.testing.assert_close(up(x, guide), expected)
    torch.testing.assert_close(up(x, guide.clone()), expected)


def test_converter_keeps_the_downsampling_branch_when_asked():
    donor = _randomise(A2U(C, learned_downsampling=True))
    names = {**RELEASED_NAMES, "downsample_weights": "bconv_DP.1"}
    released = {}
    for key, value in donor.state_dict().items():
        module, param = key.split(".")
        released[f"{names[module]}.{param}"] = value
    up = load_official("BilinearModel.InterChannelUpDown", released, c=C, learned_downsampling=True)
    assert torch.equal(up.downsample_weights.weight, released["bconv_DP.1.weight"])
    guide = torch.randn(1, C, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(up.downsample(guide), donor.downsample(guide))


def test_learned_downsampling_errors():
    with pytest.raises(ValueError, match="learned_downsampling=True"):
        A2U(C).downsample(torch.randn(1, C, 8, 8))
    with pytest.raises(ValueError, match="scale=3"):
        A2U(C, scale=3, learned_downsampling=True)
    with pytest.raises(ValueError, match=rf"\[B, {C}, H, W\]"):
        A2U(C, learned_downsampling=True).downsample(torch.randn(1, 8, 8, 8))


def test_downsample_then_upsample_on_one_guide_computes_one_affinity(monkeypatch):
    up = A2U(C, learned_downsampling=True)
    calls = []
    affinity = up._affinity
    monkeypatch.setattr(up, "_affinity", lambda g: calls.append(g) or affinity(g))
    guide = torch.randn(1, C, 8, 8)
    up.downsample(guide)
    up(torch.randn(1, C, 4, 4), guide=guide)
    assert len(calls) == 1
    up(torch.randn(1, C, 4, 4), guide=guide)  # nothing kept for a second forward
    assert len(calls) == 2
