import pytest
import torch
import torch.nn.functional as F
from torch import nn

from uplab import ops, upsamplers
from uplab.analysis.flops import FLOP_KINDS, count_flops, count_params, count_upsampler_params


def test_conv_counts_multiply_accumulates_and_bias():
    conv = nn.Conv2d(6, 8, 3, stride=2, padding=1, groups=2)
    out = count_flops(conv, torch.zeros(2, 6, 10, 12))
    positions = 2 * 5 * 6
    assert out["conv"] == positions * (8 * 3 * 9 + 8)
    assert out["total"] == out["modules"] == out["conv"]


def test_deconv_counts_input_positions_plus_bias_at_output():
    deconv = nn.ConvTranspose2d(4, 6, 4, stride=2, padding=1)
    out = count_flops(deconv, torch.zeros(1, 4, 5, 7))
    assert out["deconv"] == 5 * 7 * 4 * 6 * 16 + 6 * 10 * 14


def test_linear_norm_activation_pool_upsample_follow_mmcv():
    x = torch.zeros(1, 4, 6, 6)
    assert count_flops(nn.Linear(6, 3), x)["linear"] == x.numel() * 3
    assert count_flops(nn.BatchNorm2d(4), x)["norm"] == 2 * x.numel()
    assert count_flops(nn.GroupNorm(2, 4, affine=False), x)["norm"] == x.numel()
    assert count_flops(nn.LayerNorm(6), x)["norm"] == 2 * x.numel()
    assert count_flops(nn.ReLU(), x)["activation"] == x.numel()
    assert count_flops(nn.MaxPool2d(2), x)["pool"] == x.numel()
    assert count_flops(nn.Upsample(scale_factor=2), x)["upsample"] == 4 * x.numel()


def test_modules_the_counter_skips_count_zero():
    x = torch.zeros(1, 4, 6, 6)
    for module in (nn.GELU(), nn.Sigmoid(), nn.PixelShuffle(2), nn.Identity()):
        assert count_flops(module, x)["total"] == 0


def test_subclass_counts_like_its_base():
    class MyConv(nn.Conv2d):
        pass

    x = torch.zeros(1, 3, 5, 5)
    assert count_flops(MyConv(3, 4, 1), x)["conv"] == count_flops(nn.Conv2d(3, 4, 1), x)["conv"]


class _Call(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def test_carafe_op_counts_k2_per_output_element():
    f, m = torch.randn(2, 5, 3, 4), torch.rand(2, 25, 6, 8)
    out = count_flops(_Call(lambda a, b: ops.carafe(a, b, 5, 2)), f, m)
    assert out["carafe"] == 2 * 5 * 6 * 8 * 25
    assert out["ops"] == out["total"] == out["carafe"]


def test_local_similarity_counts_channels_per_similarity():
    q, k = torch.randn(1, 7, 6, 6), torch.randn(1, 7, 3, 3)
    out = count_flops(_Call(lambda a, b: ops.local_similarity(a, b, 3, 2)), q, k)
    assert out["local_similarity"] == 9 * 36 * 7


def test_grid_sample_unfold_and_softmax_spellings():
    x = torch.randn(1, 3, 4, 4)
    grid = torch.rand(1, 8, 8, 2) * 2 - 1
    assert count_flops(_Call(lambda a: F.grid_sample(a, grid, align_corners=False)), x)[
        "grid_sample"
    ] == 3 * 64 * 4
    nearest = _Call(lambda a: F.grid_sample(a, grid, mode="nearest", align_corners=False))
    assert count_flops(nearest, x)["grid_sample"] == 0
    assert count_flops(_Call(lambda a: F.unfold(a, 3, padding=1)), x)["unfold"] == 3 * 9 * 16
    assert count_flops(nn.Unfold(3, padding=1), x)["unfold"] == 3 * 9 * 16
    for fn in (lambda a: a.softmax(1), lambda a: torch.softmax(a, 1), lambda a: F.softmax(a, 1)):
        assert count_flops(_Call(fn), x)["softmax"] == x.numel()


def test_functional_conv_counts_outside_conv_modules_only():
    x, w = torch.randn(1, 6, 10, 12), torch.randn(8, 3, 3, 3)
    out = count_flops(_Call(lambda a: F.conv2d(a, w, torch.zeros(8), stride=2, padding=1, groups=2)), x)
    assert out["functional_conv"] == out["ops"] == 8 * 5 * 6 * (3 * 9 + 1)
    # inside nn.Conv2d the same call is the module's, counted once by its hook
    conv = nn.Conv2d(6, 8, 3, stride=2, padding=1, groups=2)
    inner = count_flops(nn.Sequential(conv, nn.ReLU()), x)
    assert inner["functional_conv"] == 0
    assert inner["conv"] == 8 * 5 * 6 * (3 * 9 + 1)


def test_a2u_guide_encodings_are_counted():
    up = upsamplers.build("a2u", in_channels=32, scale=2)
    x, guide = torch.randn(1, 32, 4, 6), torch.randn(1, 32, 8, 12)
    out = count_flops(up, x, guide=guide)
    # two encodings u, v: a 6x6 per-sample filter on each of the 32 guide channels, at 4x6
    assert out["functional_conv"] == 2 * 32 * 4 * 6 * 36


def test_upsampler_share_and_params_are_attributed():
    up = upsamplers.build("pixelshuffle", in_channels=4)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), up)
    out = count_flops(model, torch.zeros(1, 3, 5, 5))
    assert out["upsamplers"] == count_flops(up, torch.zeros(1, 4, 5, 5))["total"] > 0
    assert out["total"] == out["upsamplers"] + 25 * (4 * 3 + 4)
    assert count_upsampler_params(model) == count_params(up) == 4 * 16 * 9 + 16


def test_ops_inside_an_upsampler_count_towards_upsamplers():
    class Reassemble(upsamplers.Upsampler):
        def forward(self, x, guide=None):
            b, _, h, w = x.shape
            masks = torch.ones(b, 9, 2 * h, 2 * w).softmax(1)
            return ops.carafe(x, masks, 3, 2)

    out = count_flops(Reassemble(4), torch.zeros(1, 4, 3, 3))
    assert out["upsamplers"] == out["total"] == 9 * 36 + 4 * 36 * 9


def test_hooks_are_removed_even_when_forward_raises():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            raise RuntimeError("boom")

    model = Broken()
    with pytest.raises(RuntimeError, match="boom"):
        count_flops(model, torch.zeros(1, 3, 2, 2))
    assert not model.conv._forward_hooks
    assert not torch.overrides._is_torch_function_mode_enabled()


def test_result_lists_every_kind_and_sums():
    out = count_flops(nn.Sequential(nn.Conv2d(3, 3, 3), nn.ReLU()), torch.zeros(1, 3, 5, 5))
    assert set(FLOP_KINDS) <= set(out)
    assert out["total"] == sum(out[k] for k in FLOP_KINDS)


def test_count_params_trainable_only_and_bad_input():
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    net[0].requires_grad_(False)
    assert count_params(net) == 16 + 10
    assert count_params(net, trainable_only=True) == 10
    with pytest.raises(ValueError, match="nn.Module"):
        count_params("resnet")
    with pytest.raises(ValueError, match="nn.Module"):
        count_flops(lambda x: x, torch.zeros(1))


def test_matmul_counts_output_times_inner_dimension():
    a, b = torch.randn(2, 3, 5, 7), torch.randn(2, 3, 7, 4)
    for fn in (lambda x, y: x @ y, torch.matmul, lambda x, y: torch.bmm(x[0], y[0])):
        out = count_flops(_Call(fn), a, b)
        assert out["matmul"] == fn(a, b).numel() * 7


def test_layer_norm_can_be_left_out_as_mmcv_1_2_did():
    x = torch.zeros(1, 4, 6)
    net = nn.Sequential(nn.LayerNorm(6), nn.BatchNorm1d(4))
    assert count_flops(net, x)["norm"] == 4 * x.numel()
    assert count_flops(net, x, count_layer_norm=False)["norm"] == 2 * x.numel()


def test_softmax_can_be_left_out_as_segformers_tool_did():
    x = torch.randn(1, 3, 4, 4)
    assert count_flops(_Call(lambda a: a.softmax(1)), x, count_softmax=False)["total"] == 0
