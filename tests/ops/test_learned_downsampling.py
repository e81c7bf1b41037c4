import pytest
import torch

from uplab.ops import learned_downsample


def one_hot(kernel_size, y, x, size=2):
    k = torch.zeros(1, kernel_size**2, size, size)
    k[:, y * kernel_size + x] = 1
    return k


def released_loop(features, kernels, k, s, g):
    """bidownsample_naive's index arithmetic, one output element at a time."""
    b, c, h, w = features.shape
    out = torch.zeros(b, c, h // s, w // s, dtype=features.dtype)
    lo = (k - 2) // 2 if k % 2 == 0 else (k - 1) // 2
    hi = k // 2 + 1 if k % 2 == 0 else (k - 1) // 2 + 1
    for n in range(b):
        for ch in range(c):
            group = ch // (c // g)
            for ph in range(h // s):
                for pw in range(w // s):
                    for iy in range(s * ph - lo, s * ph + hi):
                        for ix in range(s * pw - lo, s * pw + hi):
                            if 0 <= iy < h and 0 <= ix < w:
                                m = (group * k + iy - s * ph + lo) * k + ix - s * pw + lo
                                out[n, ch, ph, pw] += (
                                    features[n, ch, iy, ix] * kernels[n, m, ph, pw]
                                )
    return out


def test_6x6_windows_cover_rows_2i_minus_2_to_2i_plus_3_with_zeros_outside_by_hand():
    x = torch.arange(1.0, 17.0).view(1, 1, 4, 4)
    # offset (y, x) reads x[2i - 2 + y, 2j - 2 + x]
    assert learned_downsample(x, one_hot(6, 2, 2), 6).flatten().tolist() == [1, 3, 9, 11]
    assert learned_downsample(x, one_hot(6, 0, 0), 6).flatten().tolist() == [0, 0, 0, 1]
    assert learned_downsample(x, one_hot(6, 5, 5), 6).flatten().tolist() == [16, 0, 0, 0]
    assert learned_downsample(x, one_hot(6, 3, 4), 6).flatten().tolist() == [7, 0, 15, 0]
    # every window of a 4x4 map at stride 2 holds the whole map (zeros elsewhere)
    assert learned_downsample(x, torch.ones(1, 36, 2, 2), 6).flatten().tolist() == [136.0] * 4


def test_each_group_of_channels_reads_its_own_kernels():
    x = torch.arange(1.0, 17.0).view(1, 1, 4, 4).repeat(1, 2, 1, 1)
    kernels = torch.cat([one_hot(6, 2, 2), one_hot(6, 3, 3)], dim=1)  # group-major
    out = learned_downsample(x, kernels, 6, group_size=2)
    assert out[0, 0].flatten().tolist() == [1, 3, 9, 11]
    assert out[0, 1].flatten().tolist() == [6, 8, 14, 16]


@pytest.mark.parametrize(
    ("k", "s", "g"), [(6, 2, 1), (6, 2, 2), (4, 2, 1), (3, 2, 1), (5, 3, 1), (1, 2, 1)]
)
def test_matches_the_released_index_arithmetic(k, s, g):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 3 * s, 2 * s, dtype=torch.float64)
    kernels = torch.randn(2, g * k * k, 3, 2, dtype=torch.float64)
    expected = released_loop(x, kernels, k, s, g)
    torch.testing.assert_close(learned_downsample(x, kernels, k, s, g), expected)


def test_gradcheck_float64():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 6, 4, dtype=torch.float64, requires_grad=True)
    kernels = torch.randn(1, 2 * 36, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, m: learned_downsample(a, m, 6, 2, 2), (x, kernels))


def test_rejects_shapes_that_do_not_fit():
    x = torch.randn(1, 2, 6, 6)
    with pytest.raises(ValueError, match="multiples of scale_factor=4"):
        learned_downsample(x, torch.randn(1, 36, 1, 1), 6, scale_factor=4)
    with pytest.raises(ValueError, match=r"expected kernels of shape \(1, 36, 3, 3\)"):
        learned_downsample(x, torch.randn(1, 9, 3, 3), 6)
