"""carafe: exact against the unfold reference, gradcheck at borders/odd sizes/all k and s,
properties, half precision and bad input."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from uplab.ops import carafe
from uplab.ops.reference import carafe_unfold


def _inputs(b, c, h, w, k, s, g=1, dtype=torch.float64, grad=False):
    f = torch.randn(b, c, h, w, dtype=dtype, requires_grad=grad)
    m = torch.randn(b, g * k * k, s * h, s * w, dtype=dtype, requires_grad=grad)
    return f, m


@pytest.mark.parametrize("k", [1, 3, 5, 7])
@pytest.mark.parametrize("s", [1, 2, 3, 4])
def test_gradcheck_borders_odd_sizes(k, s):
    # 3x5 map: with k=7 every window crosses the border, so the zero padding is exercised.
    f, m = _inputs(1, 2, 3, 5, k, s, grad=True)
    assert torch.autograd.gradcheck(lambda a, b: carafe(a, b, k, s), (f, m), fast_mode=True)


def test_gradcheck_groups_full_jacobian():
    # The full (slow-mode) Jacobian on one small grouped case; the sweep above uses fast mode.
    f, m = _inputs(1, 4, 3, 3, 3, 2, g=2, grad=True)
    assert torch.autograd.gradcheck(lambda a, b: carafe(a, b, 3, 2, group_size=2), (f, m))


@pytest.mark.parametrize("k,s,g", [(1, 1, 1), (3, 2, 1), (5, 2, 2), (5, 3, 4), (7, 4, 1)])
def test_matches_unfold_reference(k, s, g):
    f, m = _inputs(2, 8, 5, 6, k, s, g=g)
    torch.testing.assert_close(carafe(f, m, k, s, g), carafe_unfold(f, m, k, s, g))


def test_one_hot_centre_mask_is_nearest_upsampling():
    f = torch.randn(2, 3, 5, 7)
    for k, s in [(1, 2), (3, 2), (5, 3), (7, 4)]:
        m = torch.zeros(2, k * k, s * 5, s * 7)
        m[:, (k * k) // 2] = 1.0
        torch.testing.assert_close(
            carafe(f, m, k, s), F.interpolate(f, scale_factor=s, mode="nearest")
        )


@settings(max_examples=20, deadline=None)
@given(
    k=st.sampled_from([3, 5]),
    s=st.integers(1, 3),
    value=st.floats(-10, 10, allow_nan=False),
)
def test_normalised_kernels_preserve_constant_away_from_borders(k, s, value):
    h, w = 7, 8
    f = torch.full((1, 2, h, w), value, dtype=torch.float64)
    m = torch.softmax(torch.randn(1, k * k, s * h, s * w, dtype=torch.float64), dim=1)
    out = carafe(f, m, k, s)
    r = (k - 1) // 2
    interior = out[..., r * s : (h - r) * s, r * s : (w - r) * s]
    torch.testing.assert_close(interior, torch.full_like(interior, value))


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
def test_half_precision_within_tolerance_of_fp32(dtype, tol):
    # Inputs are rounded to the half type first, so the comparison measures the op, not the
    # input rounding; accumulation is in float32, leaving only the output rounding (2^-11, 2^-8).
    f, m = _inputs(2, 16, 9, 7, 5, 2, dtype=torch.float32)
    m = torch.softmax(m, dim=1)
    f, m = f.to(dtype), m.to(dtype)
    out = carafe(f, m, 5, 2)
    assert out.dtype == dtype
    ref = carafe(f.float(), m.float(), 5, 2)
    torch.testing.assert_close(out.float(), ref, atol=tol * ref.abs().max().item(), rtol=tol)


def test_half_precision_backward_runs_and_matches():
    f, m = _inputs(1, 4, 5, 5, 3, 2, dtype=torch.float32)
    fh, mh = f.bfloat16().requires_grad_(), m.bfloat16().requires_grad_()
    carafe(fh, mh, 3, 2).float().sum().backward()
    f32, m32 = fh.detach().float().requires_grad_(), mh.detach().float().requires_grad_()
    carafe(f32, m32, 3, 2).sum().backward()
    assert fh.grad.dtype == torch.bfloat16
    torch.testing.assert_close(fh.grad.float(), f32.grad, atol=0.05, rtol=0.02)
    torch.testing.assert_close(mh.grad.float(), m32.grad, atol=0.05, rtol=0.02)


def test_non_contiguous_inputs():
    f = torch.randn(2, 5, 6, 3).permute(0, 3, 1, 2)  # [2, 3, 5, 6], channels-last strides
    m = torch.randn(2, 10, 12, 9).permute(0, 3, 1, 2)
    torch.testing.assert_close(
        carafe(f, m, 3, 2), carafe_unfold(f.contiguous(), m.contiguous(), 3, 2)
    )


@pytest.mark.parametrize(
    "fshape,mshape,k,s,g,match",
    [
        ((1, 4, 5, 5), (1, 9, 10, 10), 4, 2, 1, "odd integer"),
        ((1, 4, 5, 5), (1, 9, 10, 10), 3, 0, 1, "scale_factor"),
        ((1, 4, 5, 5), (1, 9, 10, 10), 3, 1.5, 1, "scale_factor"),
        ((1, 4, 5, 5), (1, 25, 10, 10), 3, 2, 1, r"masks must have shape \(1, 9, 10, 10\)"),
        ((1, 4, 5, 5), (1, 9, 10, 11), 3, 2, 1, r"got \(1, 9, 10, 11\)"),
        ((1, 4, 5, 5), (2, 9, 10, 10), 3, 2, 1, "batch size"),
        ((1, 5, 5, 5), (1, 18, 10, 10), 3, 2, 2, "divisible by group_size"),
        ((4, 5, 5), (1, 9, 10, 10), 3, 2, 1, "NCHW"),
    ],
)
def test_bad_input_raises_clear_value_error(fshape, mshape, k, s, g, match):
    with pytest.raises(ValueError, match=match):
        carafe(torch.randn(fshape), torch.randn(mshape), k, s, g)


def test_dtype_mismatch_and_integer_inputs():
    with pytest.raises(ValueError, match="dtype"):
        carafe(torch.randn(1, 2, 3, 3), torch.randn(1, 9, 6, 6, dtype=torch.float64), 3, 2)
    with pytest.raises(ValueError, match="floating-point"):
        carafe(torch.ones(1, 2, 3, 3, dtype=torch.long), torch.randn(1, 9, 6, 6), 3, 2)


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("which", ["features", "masks"])
def test_an_input_that_is_not_a_tensor_is_named(which, autocast):
    # the check must run before autocast promotion reads .dtype
    f, m = _inputs(1, 2, 3, 3, 3, 2, dtype=torch.float32)
    args = {"features": f, "masks": m}
    args[which] = args[which].tolist()
    with (
        torch.autocast("cpu", enabled=autocast),
        pytest.raises(ValueError, match=f"{which} must be a torch.Tensor, got list"),
    ):
        carafe(args["features"], args["masks"], 3, 2)


@pytest.mark.parametrize("shape", [(0, 4, 3, 5), (2, 4, 0, 5), (2, 4, 3, 0)])
def test_empty_batch_or_map_gives_an_empty_output_and_gradients(shape):
    b, c, h, w = shape
    f = torch.randn(shape, requires_grad=True)
    m = torch.randn(b, 9, 2 * h, 2 * w, requires_grad=True)
    out = carafe(f, m, 3, 2)
    assert out.shape == (b, c, 2 * h, 2 * w)
    out.sum().backward()
    assert f.grad.shape == f.shape and m.grad.shape == m.shape
