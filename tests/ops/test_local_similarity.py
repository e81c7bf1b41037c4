"""local_similarity: exact against the unfold reference, gradcheck at borders/odd sizes/all k
and s, half precision and bad input."""

import pytest
import torch

from uplab.ops import local_similarity
from uplab.ops.reference import local_similarity_unfold


def _inputs(b, c, h, w, s, dtype=torch.float64, grad=False):
    q = torch.randn(b, c, s * h, s * w, dtype=dtype, requires_grad=grad)
    key = torch.randn(b, c, h, w, dtype=dtype, requires_grad=grad)
    return q, key


@pytest.mark.parametrize("k", [1, 3, 5, 7])
@pytest.mark.parametrize("s", [1, 2, 3, 4])
def test_gradcheck_borders_odd_sizes(k, s):
    q, key = _inputs(1, 2, 3, 5, s, grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b: local_similarity(a, b, k, s), (q, key), fast_mode=True
    )


@pytest.mark.parametrize("k,s", [(1, 1), (3, 2), (5, 2), (5, 3), (7, 4)])
def test_matches_unfold_reference(k, s):
    q, key = _inputs(2, 6, 5, 4, s)
    torch.testing.assert_close(
        local_similarity(q, key, k, s), local_similarity_unfold(q, key, k, s)
    )


def test_outside_neighbours_give_zero_logit():
    q, key = _inputs(1, 3, 4, 4, 2)
    sim = local_similarity(q, key, 5, 2)
    # top-left high-res point: its parent is (0, 0), so window rows/cols -2, -1 are outside.
    outside = sim[0, :, 0, 0].view(5, 5)[:2].flatten()
    assert torch.equal(outside, torch.zeros_like(outside))


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
def test_half_precision_within_tolerance_of_fp32(dtype, tol):
    q, key = _inputs(2, 16, 6, 7, 2, dtype=torch.float32)
    q, key = q.to(dtype), key.to(dtype)
    out = local_similarity(q, key, 5, 2)
    assert out.dtype == dtype
    ref = local_similarity(q.float(), key.float(), 5, 2)
    torch.testing.assert_close(out.float(), ref, atol=tol * ref.abs().max().item(), rtol=tol)


@pytest.mark.parametrize(
    "qshape,kshape,k,s,match",
    [
        ((1, 4, 10, 10), (1, 4, 5, 5), 2, 2, "odd integer"),
        ((1, 4, 10, 12), (1, 4, 5, 5), 3, 2, r"query must have shape \(1, 4, 10, 10\)"),
        ((1, 3, 10, 10), (1, 4, 5, 5), 3, 2, r"got \(1, 3, 10, 10\)"),
        ((2, 4, 10, 10), (1, 4, 5, 5), 3, 2, "batch size"),
    ],
)
def test_bad_input_raises_clear_value_error(qshape, kshape, k, s, match):
    with pytest.raises(ValueError, match=match):
        local_similarity(torch.randn(qshape), torch.randn(kshape), k, s)


def test_unknown_backend():
    q, key = _inputs(1, 2, 3, 3, 2, dtype=torch.float32)
    with pytest.raises(ValueError, match="backend must be one of"):
        local_similarity(q, key, 3, 2, backend="triton")


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("which", ["query", "key"])
def test_an_input_that_is_not_a_tensor_is_named(which, autocast):
    # the check must run before autocast promotion reads .dtype
    q, key = _inputs(1, 2, 3, 3, 2, dtype=torch.float32)
    args = {"query": q, "key": key}
    args[which] = args[which].tolist()
    with (
        torch.autocast("cpu", enabled=autocast),
        pytest.raises(ValueError, match=f"{which} must be a torch.Tensor, got list"),
    ):
        local_similarity(args["query"], args["key"], 3, 2)


@pytest.mark.parametrize("shape", [(0, 4, 3, 5), (2, 4, 0, 5), (2, 4, 3, 0)])
def test_empty_batch_or_map_gives_an_empty_output_and_gradients(shape):
    b, c, h, w = shape
    key = torch.randn(shape, requires_grad=True)
    q = torch.randn(b, c, 2 * h, 2 * w, requires_grad=True)
    out = local_similarity(q, key, 3, 2)
    assert out.shape == (b, 9, 2 * h, 2 * w)
    out.sum().backward()
    assert q.grad.shape == q.shape and key.grad.shape == key.shape
