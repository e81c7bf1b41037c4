"""FADE beyond the golden cases: the L2H and H2L converters agree, any integer scale on odd and
non-square maps against a per-point semi-shift reference, the gate, guides of another width
(with the aligner), FADE-Lite's encoder, and clear errors."""

import pytest
import torch
import torch.nn.functional as F

from uplab.ops.reference import carafe_unfold
from uplab.upsamplers import build
from uplab.upsamplers.fade import FADE, FADELite, SemiShiftUp
from uplab.upsamplers.official import load_official

F64 = torch.float64


def _randomise(module):
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return module.double()


def _parent_index(size, scale):
    return torch.arange(size * scale) // scale


def _semi_shift_reference(up, x, guide):
    """Per high-resolution point ``(i, j)``: the encoder term is the k x k window around
    ``(i, j)`` on the compressed guide, the decoder term the k x k window around the parent
    ``(i // s, j // s)`` on the compressed x; one set of weights (and its bias) for both."""
    kern = up.kernels
    weight, bias = kern.content_encoder.weight, kern.content_encoder.bias
    k = weight.shape[-1]
    enc = kern.compressor_guide(guide)
    dec = kern.compressor_x(x)
    b, e, h, w = dec.shape
    s = up.scale
    enc_windows = F.unfold(enc, k, padding=k // 2).view(b, e, k * k, h * s, w * s)
    dec_windows = F.unfold(dec, k, padding=k // 2).view(b, e, k * k, h, w)
    rows, cols = _parent_index(h, s), _parent_index(w, s)
    dec_windows = dec_windows[..., rows[:, None], cols[None, :]]
    w_flat = weight.flatten(2)  # [K*K, E, k*k]
    logits = torch.einsum("oec,bechw->bohw", w_flat, enc_windows + dec_windows)
    return logits + 2 * bias.view(1, -1, 1, 1)


@pytest.mark.parametrize("scale", [3, 4])
def test_semishift_any_scale_matches_per_point_reference(scale):
    up = _randomise(SemiShiftUp(4, scale=scale, guide_channels=6, kernel_size=3, embedding_dim=5))
    x = torch.randn(2, 4, 3, 5, dtype=F64)
    guide = torch.randn(2, 6, 3 * scale, 5 * scale, dtype=F64)
    logits = up.kernels(x, guide)
    torch.testing.assert_close(logits, _semi_shift_reference(up, x, guide), atol=1e-11, rtol=0)
    expected = carafe_unfold(x, torch.softmax(logits, dim=1), 3, scale)
    torch.testing.assert_close(up(x, guide), expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("scale", [3, 4])
def test_fade_gate_any_scale(scale):
    up = _randomise(FADE(4, scale=scale, embedding_dim=5))
    semishift = SemiShiftUp(4, scale=scale, embedding_dim=5).double()
    semishift.kernels.load_state_dict(up.kernels.state_dict())
    x = torch.randn(2, 4, 3, 5, dtype=F64)
    guide = torch.randn(2, 4, 3 * scale, 5 * scale, dtype=F64)
    gate_low = torch.sigmoid(F.conv2d(x, up.gate.conv.weight, up.gate.conv.bias))
    rows, cols = _parent_index(3, scale), _parent_index(5, scale)
    gate = gate_low[..., rows[:, None], cols[None, :]]
    expected = gate * guide + (1 - gate) * semishift(x, guide)
    torch.testing.assert_close(up(x, guide), expected, atol=1e-12, rtol=0)


def _l2h_state(channels, emb, k, gen):
    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=F64)

    return {
        "gate_generator.conv.weight": rand(1, channels, 1, 1),
        "gate_generator.conv.bias": rand(1),
        "ker_generator.compressor_en.weight": rand(emb, channels, 1, 1),
        "ker_generator.compressor_en.bias": rand(emb),
        "ker_generator.compressor_de.weight": rand(emb, channels, 1, 1),
        "ker_generator.content_encoder.weight": rand(k * k, emb, 3, 3),
        "ker_generator.content_encoder.bias": rand(k * k),
    }


def test_l2h_and_h2l_converters_agree():
    gen = torch.Generator().manual_seed(1)
    l2h = _l2h_state(channels=4, emb=8, k=5, gen=gen)
    renamed = {
        "ker_generator.compressor_en": "kernel_generator.conv1_en",
        "ker_generator.compressor_de": "kernel_generator.conv1_de",
        "ker_generator.content_encoder.weight": "kernel_generator.conv2_kernels",
        "ker_generator.content_encoder.bias": "kernel_generator.conv2_bias",
    }
    h2l = {}
    for key, value in l2h.items():
        for old, new in renamed.items():
            key = key.replace(old, new)
        h2l[key] = value
    a = load_official("FADE_L2H.FADE", l2h, in_channels_en=4)
    b = load_official("FADE_H2L.FADE", h2l, in_channels_en=4)
    x = torch.randn(2, 4, 4, 4, dtype=F64)  # square: the released H2L's only case
    guide = torch.randn(2, 4, 8, 8, dtype=F64)
    torch.testing.assert_close(a(x, guide), b(x, guide), atol=0, rtol=0)
    assert a.kernels.content_encoder.weight.shape == (25, 8, 3, 3)  # width read off the weights


def test_released_aligner_is_loaded():
    gen = torch.Generator().manual_seed(2)
    state = _l2h_state(channels=4, emb=8, k=3, gen=gen)
    state["ker_generator.compressor_en.weight"] = torch.randn(8, 6, 1, 1, dtype=F64)
    state["aligner.conv.weight"] = torch.randn(4, 6, 1, 1, dtype=F64)
    state["aligner.conv.bias"] = torch.randn(4, dtype=F64)
    up = load_official("FADE_L2H.FADE", state, in_channels_en=6, in_channels_de=4, up_kernel_size=3)
    assert up.guide_aligner is not None
    out = up(torch.randn(1, 4, 3, 5, dtype=F64), torch.randn(1, 6, 6, 10, dtype=F64))
    assert out.shape == (1, 4, 6, 10)


@pytest.mark.parametrize("name", ["fade", "fade_lite"])
def test_other_guide_width_needs_the_aligner(name):
    with pytest.raises(ValueError, match=r"guide_channels=8.*align_guide=True"):
        build(name, in_channels=4, guide_channels=8)
    up = build(name, in_channels=4, scale=3, guide_channels=8, align_guide=True)
    x, guide = torch.randn(1, 4, 3, 5), torch.randn(1, 8, 9, 15)
    assert up(x, guide).shape == (1, 4, 9, 15)


def test_semishift_takes_any_guide_width_without_aligner():
    up = build("semishift", in_channels=4, guide_channels=8)
    assert up(torch.randn(1, 4, 3, 5), torch.randn(1, 8, 6, 10)).shape == (1, 4, 6, 10)


def test_kernels_sum_to_one():
    # Without the gate, a spatially constant x comes back unchanged wherever the parent's whole
    # 5x5 window lies inside the map.
    up = build("semishift", in_channels=3, scale=3).double()
    x = torch.randn(1, 3, 1, 1, dtype=F64).expand(1, 3, 6, 7)
    out = up(x, torch.randn(1, 3, 18, 21, dtype=F64))
    inner = out[..., 6:12, 6:15]
    torch.testing.assert_close(inner, x[..., :1, :1].expand_as(inner))


def test_fade_lite_encoder_is_depthwise():
    up = FADELite(8, kernel_size=3)
    assert up.kernels.content_encoder.weight.shape == (9, 1, 3, 3)
    with pytest.raises(ValueError, match=r"embedding_dim must be 9; got 16"):
        FADELite(8, kernel_size=3, embedding_dim=16)
    with pytest.raises(ValueError, match="always depth-wise"):
        FADELite(8, depthwise_encoder=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kernel_size": 4}, "kernel_size must be an odd integer"),
        ({"encoder_kernel_size": 2}, "encoder_kernel_size must be an odd integer"),
        ({"depthwise_encoder": True, "embedding_dim": 16}, r"embedding_dim must be 25; got 16"),
    ],
)
def test_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FADE(8, **kwargs)
