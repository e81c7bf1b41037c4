"""SAPA beyond the golden cases: any integer scale on odd, non-square maps against the unfold
references, guide and decoder of different widths, the 'cat' query, value embedding, the
SAPAExp converter's modes, and clear errors."""

import pytest
import torch
import torch.nn.functional as F

from uplab.ops.reference import carafe_unfold, local_similarity_unfold
from uplab.upsamplers import build
from uplab.upsamplers.official import load_official
from uplab.upsamplers.sapa import SAPAB, SAPAG, SAPAI

F64 = torch.float64


def _reference(x, query, key, kernel_size, scale):
    kernels = torch.softmax(local_similarity_unfold(query, key, kernel_size, scale), dim=1)
    return carafe_unfold(x, kernels, kernel_size, scale)


def _nearest(t, scale):
    rows = torch.arange(t.shape[-2] * scale) // scale
    cols = torch.arange(t.shape[-1] * scale) // scale
    return t[..., rows[:, None], cols[None, :]]


def _layer_norm(t, norm):
    return F.layer_norm(t.movedim(1, -1), norm.normalized_shape, norm.weight, norm.bias).movedim(
        -1, 1
    )


def _linear(t, layer):
    return F.linear(t.movedim(1, -1), layer.weight, layer.bias).movedim(-1, 1)


def _randomise(module):
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return module


@pytest.mark.parametrize("scale", [3, 4])
def test_sapa_i_any_scale(scale):
    x = torch.randn(2, 4, 3, 5, dtype=F64)
    guide = torch.randn(2, 4, 3 * scale, 5 * scale, dtype=F64)
    out = SAPAI(4, scale=scale, kernel_size=3)(x, guide)
    torch.testing.assert_close(out, _reference(x, guide, x, 3, scale), atol=1e-12, rtol=0)


@pytest.mark.parametrize("scale", [3, 4])
def test_sapa_b_any_scale_and_guide_width(scale):
    up = _randomise(SAPAB(4, scale=scale, guide_channels=6, embedding_dim=5)).double()
    x = torch.randn(2, 4, 3, 5, dtype=F64)
    guide = torch.randn(2, 6, 3 * scale, 5 * scale, dtype=F64)
    query = _linear(_layer_norm(guide, up.guide_norm), up.query_embedding)
    key = _linear(_layer_norm(x, up.x_norm), up.key)
    expected = _reference(x, query, key, 5, scale)
    torch.testing.assert_close(up(x, guide), expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("q_mode", ["gate", "cat"])
def test_sapa_g_query_modes_any_scale(q_mode):
    scale = 3
    up = _randomise(SAPAG(4, scale=scale, guide_channels=6, embedding_dim=5, q_mode=q_mode))
    up = up.double()
    x = torch.randn(2, 4, 3, 5, dtype=F64)
    guide = torch.randn(2, 6, 9, 15, dtype=F64)
    guide_normed, x_normed = _layer_norm(guide, up.guide_norm), _layer_norm(x, up.x_norm)
    if q_mode == "cat":  # as released: [LN(guide), up(x)], the decoder part not normalised
        query = _linear(torch.cat([guide_normed, _nearest(x, scale)], dim=1), up.query_embedding)
    else:
        gate = _nearest(torch.sigmoid(_linear(x_normed, up.gate)), scale)
        from_x = _linear(_nearest(x, scale), up.query_x)
        query = gate * _linear(guide_normed, up.query_guide) + (1 - gate) * from_x
    expected = _reference(x, query, _linear(x_normed, up.key), 5, scale)
    torch.testing.assert_close(up(x, guide), expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", ["sapa_i", "sapa_b", "sapa_g"])
def test_kernels_sum_to_one(name):
    # A spatially constant x comes back unchanged wherever the parent's whole 5x5 window lies
    # inside the map: the softmax kernels sum to 1.
    up = build(name, in_channels=3, scale=2).double()
    x = torch.randn(1, 3, 1, 1, dtype=F64).expand(1, 3, 7, 8)
    out = up(x, torch.randn(1, 3, 14, 16, dtype=F64))
    inner = out[..., 4:10, 4:12]
    torch.testing.assert_close(inner, x[..., :1, :1].expand_as(inner))


def test_value_embedding_changes_width():
    up = SAPAG(8, guide_channels=4, out_channels=6)
    out = up(torch.randn(1, 8, 3, 5), torch.randn(1, 4, 6, 10))
    assert up.out_channels == 6 and out.shape == (1, 6, 6, 10)


def test_sapa_exp_converter_modes():
    dim_y, dim_x, emb = 6, 4, 5
    cat_state = {
        "norm_y.weight": torch.randn(dim_y, dtype=F64),
        "norm_y.bias": torch.randn(dim_y, dtype=F64),
        "norm_x.weight": torch.randn(dim_x, dtype=F64),
        "norm_x.bias": torch.randn(dim_x, dtype=F64),
        "q.weight": torch.randn(emb, dim_y + dim_x, dtype=F64),
        "q.bias": torch.randn(emb, dtype=F64),
        "k.weight": torch.randn(emb, dim_x, dtype=F64),
        "k.bias": torch.randn(emb, dtype=F64),
    }
    kw = dict(dim_y=dim_y, dim_x=dim_x, embedding_dim=emb)
    cat = load_official("SAPAExp.SAPAExp", cat_state, q_mode="cat", **kw)
    assert isinstance(cat, SAPAG) and cat.q_mode == "cat"
    encoder_state = {**cat_state, "q.weight": torch.randn(emb, dim_y, dtype=F64)}
    encoder_only = load_official("SAPAExp.SAPAExp", encoder_state, **kw)
    assert type(encoder_only) is SAPAB
    assert torch.equal(encoder_only.query_embedding.weight, encoder_state["q.weight"])


def test_sapa_without_norm_or_bias_has_fewer_parameters():
    up = SAPAB(8, embedding_dim=4, norm=False, qkv_bias=False)
    assert sum(p.numel() for p in up.parameters()) == 2 * 8 * 4


def test_released_sapa_i_takes_any_width_and_checks_shapes():
    up = load_official("SAPA-I", {}, kernel_size=3, scale_factor=3)
    x = torch.randn(1, 7, 2, 3, dtype=F64)
    assert up(x, guide=torch.randn(1, 7, 6, 9, dtype=F64)).shape == (1, 7, 6, 9)
    with pytest.raises(ValueError, match=r"\(1, 7, 6, 9\).*got \(1, 5, 6, 9\)"):
        up(x, guide=torch.randn(1, 5, 6, 9, dtype=F64))
    with pytest.raises(ValueError, match="guide=None"):
        up(x)


def test_sapa_i_rejects_other_guide_width():
    with pytest.raises(ValueError, match="guide_channels must equal in_channels"):
        build("sapa_i", in_channels=8, guide_channels=4)


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (SAPAG, {"q_mode": "encoder"}, r"q_mode must be one of \('gate', 'cat'\)"),
        (SAPAB, {"kernel_size": 4}, "kernel_size must be an odd integer"),
        (SAPAB, {"embedding_dim": 0}, "embedding_dim must be a positive integer"),
        (SAPAI, {"kernel_size": 2}, "kernel_size must be an odd integer"),
    ],
)
def test_rejects_bad_settings(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(8, **kwargs)
