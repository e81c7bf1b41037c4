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


def _saved_bytes(fn) -> int:
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


@pytest.mark.parametrize("name", available())
def test_recompute_gives_the_same_outputs_and_gradients(name):
    torch.manual_seed(0)
    plain = build(name, in_channels=C, scale=2).double()
    lean = build(name, in_channels=C, scale=2, recompute=True).double()
    lean.load_state_dict(plain.state_dict())
    assert lean.recompute and not plain.recompute
    x = torch.randn(2, C, H, W, dtype=torch.float64)
    guide = torch.randn(2, C, 2 * H, 2 * W, dtype=torch.float64) if plain.guided else None
    grads = []
    for up in (plain, lean):
        xi = x.clone().requires_grad_()
        out = up(xi, guide=guide)
        out.pow(2).sum().backward()
        grads.append((out.detach(), xi.grad, [p.grad for p in up.parameters()]))
    (o1, gx1, gp1), (o2, gx2, gp2) = grads
    assert torch.equal(o1, o2) and torch.allclose(gx1, gx2, rtol=1e-12, atol=1e-12)
    for a, b in zip(gp1, gp2, strict=True):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def test_recompute_keeps_less_for_backward_and_is_off_in_eval():
    plain = build("sapa_g", in_channels=C, scale=2)
    lean = build("sapa_g", in_channels=C, scale=2, recompute=True)
    x = torch.randn(2, C, H, W, requires_grad=True)
    guide = torch.randn(2, C, 2 * H, 2 * W)
    kept_plain = _saved_bytes(lambda: plain(x, guide=guide))
    kept_lean = _saved_bytes(lambda: lean(x, guide=guide))
    assert kept_lean <= x.numel() * 4 + guide.numel() * 4 < kept_plain
    # in eval (or without gradients) nothing is recomputed: the plain forward runs
    lean.eval()
    kept_eval = _saved_bytes(lambda: lean(x, guide=guide))
    assert kept_eval == kept_plain


def test_recompute_needs_an_upsampler(monkeypatch):
    from uplab.upsamplers import registry

    monkeypatch.setitem(registry._REGISTRY, "plain_conv", lambda in_channels, scale: torch.nn.Identity())
    with pytest.raises(ValueError, match="recompute=True needs an Upsampler"):
        build("plain_conv", in_channels=C, recompute=True)
