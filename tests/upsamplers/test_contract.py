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

    monkeypatch.setitem(
        registry._REGISTRY, "plain_conv", lambda in_channels, scale: torch.nn.Identity()
    )
    with pytest.raises(ValueError, match="recompute=True needs an Upsampler"):
        build("plain_conv", in_channels=C, recompute=True)


def _inputs(up, b=2, h=H, w=W, dtype=torch.float32):
    x = torch.randn(b, C, h, w, dtype=dtype)
    guide = torch.randn(b, C, 2 * h, 2 * w, dtype=dtype) if up.guided else None
    return x, guide


GUIDED = [n for n in available() if is_guided(n)]
WITH_PARAMETERS = [
    n for n in available() if any(True for _ in build(n, in_channels=C).parameters())
]
WITH_KERNEL_SIZE = ["a2u", "carafe", "fade", "fade_lite", "pixelshuffle", "sapa_b", "sapa_g",
                    "sapa_i", "semishift"]  # fmt: skip
WITH_OUT_CHANNELS = ["deconv", "pixelshuffle", "sapa_b", "sapa_g"]


@pytest.mark.parametrize("name", available())
def test_rejects_x_that_is_not_a_tensor(name):
    up = build(name, in_channels=C)
    x, guide = _inputs(up)
    with pytest.raises(ValueError, match="x must be a 4-D tensor .* got ndarray"):
        up(x.numpy(), guide=guide)


@pytest.mark.parametrize("name", GUIDED)
def test_rejects_guide_that_is_not_a_tensor(name):
    up = build(name, in_channels=C)
    x, guide = _inputs(up)
    with pytest.raises(ValueError, match="guide must be a 4-D tensor .* got list"):
        up(x, guide=guide.tolist())


@pytest.mark.parametrize("name", available())
def test_rejects_integer_inputs(name):
    up = build(name, in_channels=C)
    x, guide = _inputs(up)
    with pytest.raises(
        ValueError, match="x must be a floating-point tensor, got dtype torch.int64"
    ):
        up(x.long(), guide=guide)
    if guide is not None:
        with pytest.raises(ValueError, match="guide must be a floating-point tensor"):
            up(x, guide=guide.long())


@pytest.mark.parametrize("name", GUIDED)
def test_rejects_guide_of_another_dtype(name):
    up = build(name, in_channels=C)
    x, guide = _inputs(up)
    with pytest.raises(
        ValueError, match="x has dtype torch.float32 but guide has dtype torch.float64"
    ):
        up(x, guide=guide.double())


@pytest.mark.parametrize("name", WITH_PARAMETERS)
def test_rejects_inputs_of_another_dtype_than_the_module(name):
    up = build(name, in_channels=C)
    x, guide = _inputs(up, dtype=torch.float64)
    with pytest.raises(ValueError, match="parameters have dtype torch.float32"):
        up(x, guide=guide)


@pytest.mark.parametrize("name", GUIDED)
def test_rejects_guide_on_another_device(name):
    up = build(name, in_channels=C)
    x, guide = _inputs(up)
    with pytest.raises(ValueError, match="x is on cpu but guide is on meta"):
        up(x, guide=guide.to("meta"))


@pytest.mark.parametrize("name", WITH_PARAMETERS)
def test_rejects_inputs_on_another_device_than_the_module(name):
    up = build(name, in_channels=C).to("meta")
    x, guide = _inputs(up)
    with pytest.raises(ValueError, match="parameters are on meta"):
        up(x, guide=guide)


@pytest.mark.parametrize("name", ["sapa_b", "fade", "dysample"])
def test_autocast_accepts_mixed_dtypes(name):
    # under autocast the layers and ops promote: a bfloat16 guide beside a float32 x is no error
    up = build(name, in_channels=C)
    x, guide = _inputs(up)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = up(x.bfloat16(), guide=guide)
    assert out.shape == (2, C, 2 * H, 2 * W)


@pytest.mark.parametrize("shape", [(0, H, W), (2, 0, W), (2, H, 0)], ids=["B=0", "H=0", "W=0"])
@pytest.mark.parametrize("name", available())
def test_empty_batch_or_map_gives_an_empty_output(name, shape):
    up = build(name, in_channels=C)
    x, guide = _inputs(up, *shape)
    x.requires_grad_()
    out = up(x, guide=guide)
    b, h, w = shape
    assert out.shape == (b, up.out_channels, 2 * h, 2 * w) and out.dtype == x.dtype
    out.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("name", available())
def test_nan_pixel_makes_its_children_nan(name):
    # every upsampler reads a pixel to build its own children: NaN in, NaN out there
    up = build(name, in_channels=C)
    x, guide = _inputs(up)
    x[1, :, 2, 3] = float("nan")
    out = up(x, guide=guide)
    assert out[1, :, 4:6, 6:8].isnan().all()
    assert not out[0].isnan().any()


@pytest.mark.parametrize(
    "argument, value",
    [
        ("scale", 0),
        ("scale", True),
        ("scale", 2.0),
        ("in_channels", 0),
        ("in_channels", True),
        ("guide_channels", 0),
        ("guide_channels", -32),
    ],
)
@pytest.mark.parametrize("name", available())
def test_build_rejects_sizes_that_are_not_positive_integers(name, argument, value):
    kwargs = {"in_channels": C, "scale": 2, argument: value}
    with pytest.raises(
        ValueError, match=rf"build\('{name}'\): {argument} must be a positive integer \(1, 2, 3"
    ):
        build(name, **kwargs)


@pytest.mark.parametrize("kernel_size", [4, 0, 3.0])
@pytest.mark.parametrize("name", WITH_KERNEL_SIZE)
def test_build_rejects_kernel_sizes_that_are_not_odd(name, kernel_size):
    with pytest.raises(ValueError, match=r"kernel_size must be an odd integer >= 1 \(1, 3, 5"):
        build(name, in_channels=C, kernel_size=kernel_size)


@pytest.mark.parametrize("name", WITH_OUT_CHANNELS)
def test_out_channels_is_honoured_or_rejected(name):
    up = build(name, in_channels=C, out_channels=5)
    x, guide = _inputs(up)
    assert up(x, guide=guide).shape == (2, 5, 2 * H, 2 * W) and up.out_channels == 5
    with pytest.raises(ValueError, match="out_channels must be a positive integer"):
        build(name, in_channels=C, out_channels=0)


def test_bilinear_rejects_a_boolean_option_as_scale():
    # True == 1 for Python, and a bilinear "upsampling" by 1 returns its input unchanged
    with pytest.raises(ValueError, match=r"scale must be a positive integer .* got True"):
        build("bilinear", in_channels=C, scale=True)


def test_build_rejects_an_option_the_upsampler_does_not_have():
    with pytest.raises(
        ValueError, match=r"build\('bilinear'\): .*unexpected keyword argument 'kernel_size'"
    ):
        build("bilinear", in_channels=C, kernel_size=3)


def test_bilinear_baseline_by_hand():
    # align_corners=False at scale 2: output pixel j samples (j + 0.5) / 2 - 0.5, clamped to the
    # map, so a row [a, b] becomes [a, 3a/4 + b/4, a/4 + 3b/4, b]; rows then columns.
    x = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    expected = torch.tensor(
        [
            [0.0, 0.25, 0.75, 1.0],
            [0.5, 0.75, 1.25, 1.5],
            [1.5, 1.75, 2.25, 2.5],
            [2.0, 2.25, 2.75, 3.0],
        ]
    )
    assert torch.equal(build("bilinear", in_channels=1)(x)[0, 0], expected)
