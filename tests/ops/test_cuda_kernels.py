"""CUDA kernels against the PyTorch path (the reference): outputs and gradients of carafe and
local_similarity for every dtype, odd and non-square sizes, k in {1,3,5,7}, s in {1,2,4}, groups;
the golden cases at 1e-10 in float64; bit-identical gradients across runs; streams, autocast,
non-contiguous inputs; whole SAPA-G and FADE modules through ``backend="cuda"`` vs ``"torch"``;
the cp.async staging of ``reassemble_tiled`` and ``window_dot_tiled`` (``-DTILED_ASYNC_STAGING=1``,
the default) vs the plain-load staging, bit for bit, and vs the PyTorch path; the tensor-core
forward (``reassemble_mma``, float16/bfloat16, the default there) vs the PyTorch path.

Tolerances: float64 1e-10 absolute (the golden standard); float32 1e-4; float16 and bfloat16
compare with the float64 PyTorch path on the same (rounded) inputs at the output dtype's
resolution: both accumulate in float32 and round once, so only that last rounding differs.
"""

import math

import pytest
import torch

from uplab.ops import carafe, dispatch, local_similarity
from uplab.ops.cuda import compiler, geometry, launchers, variants

GPU_READY = torch.cuda.is_available() and dispatch.cupy_status() is None
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not GPU_READY, reason="needs a CUDA device and CuPy"),
]

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
TOL = {  # (atol, rtol)
    torch.float64: (1e-10, 0.0),
    torch.float32: (1e-4, 1e-4),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (2e-2, 1e-2),
}


def _run(op, inputs, grad, backend):
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = op(*leaves, backend=backend)
    out.backward(grad)
    return [out.detach()] + [t.grad for t in leaves]


def _compare(op, inputs, grad, dtype):
    """CUDA kernels in ``dtype`` vs the PyTorch path in float64 on the same values."""
    got = _run(op, [t.to(dtype) for t in inputs], grad.to(dtype), "cuda")
    want = _run(op, [t.to(dtype).double() for t in inputs], grad.to(dtype).double(), "torch")
    atol, rtol = TOL[dtype]
    for name, g, w in zip(["output", "grad[0]", "grad[1]"], got, want, strict=True):
        assert g.dtype == dtype, name
        torch.testing.assert_close(g.double(), w, atol=atol, rtol=rtol, msg=name)


def _carafe_inputs(b, c, h, w, k, s, g=1):
    f = torch.randn(b, c, h, w, device="cuda", dtype=torch.float64)
    m = torch.randn(b, g * k * k, s * h, s * w, device="cuda", dtype=torch.float64)
    return [f, m], torch.randn(b, c, s * h, s * w, device="cuda", dtype=torch.float64)


def _similarity_inputs(b, c, h, w, k, s):
    q = torch.randn(b, c, s * h, s * w, device="cuda", dtype=torch.float64)
    key = torch.randn(b, c, h, w, device="cuda", dtype=torch.float64)
    return [q, key], torch.randn(b, k * k, s * h, s * w, device="cuda", dtype=torch.float64)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("s", [1, 2, 4])
@pytest.mark.parametrize("k", [1, 3, 5, 7])
def test_carafe_matches_torch_path(k, s, dtype):
    # 5 x 7 low-resolution map: odd, non-square, and k=7 windows cross every border.
    inputs, grad = _carafe_inputs(2, 11, 5, 7, k, s)
    _compare(lambda f, m, backend: carafe(f, m, k, s, backend=backend), inputs, grad, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("s", [1, 2, 4])
@pytest.mark.parametrize("k", [1, 3, 5, 7])
def test_local_similarity_matches_torch_path(k, s, dtype):
    inputs, grad = _similarity_inputs(2, 11, 5, 7, k, s)
    _compare(
        lambda q, key, backend: local_similarity(q, key, k, s, backend=backend), inputs, grad, dtype
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("groups, s", [(2, 2), (4, 3), (3, 1)])
def test_carafe_groups_match_torch_path(groups, s, dtype):
    inputs, grad = _carafe_inputs(2, 12, 6, 9, 3, s, groups)
    op = lambda f, m, backend: carafe(f, m, 3, s, group_size=groups, backend=backend)  # noqa: E731
    _compare(op, inputs, grad, dtype)


def test_many_channels_and_split_launches_match_torch_path():
    # More channels than one register chunk, a ragged last chunk, and enough to split over blocks.
    inputs, grad = _carafe_inputs(1, 1037, 9, 13, 5, 2, 1)
    _compare(lambda f, m, backend: carafe(f, m, 5, 2, backend=backend), inputs, grad, torch.float32)
    inputs, grad = _similarity_inputs(1, 1037, 9, 13, 5, 2)
    op = lambda q, key, backend: local_similarity(q, key, 5, 2, backend=backend)  # noqa: E731
    _compare(op, inputs, grad, torch.float32)


@pytest.mark.parametrize("name", ["carafe_op_k5_s2", "carafe_op_k3_s2", "sim_op_k5_s2"])
def test_golden_cases_on_gpu(golden, name):
    case = golden[name]
    op = carafe if case["official_class"] == "op.carafe" else local_similarity
    inputs = [t.cuda().requires_grad_(True) for t in case["inputs"]]
    out = op(*inputs, **case["kwargs"], backend="cuda")
    torch.testing.assert_close(out.cpu(), case["output"], atol=1e-10, rtol=0)
    out.backward(case["grad_output"].cuda())
    for t, expected in zip(inputs, case["grad_inputs"], strict=True):
        torch.testing.assert_close(t.grad.cpu(), expected, atol=1e-10, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gradients_are_bit_identical_across_runs(dtype):
    inputs, grad = _carafe_inputs(2, 64, 33, 47, 5, 2, 2)
    inputs, grad = [t.to(dtype) for t in inputs], grad.to(dtype)
    op = lambda f, m, backend: carafe(f, m, 5, 2, group_size=2, backend=backend)  # noqa: E731
    first, second = _run(op, inputs, grad, "cuda"), _run(op, inputs, grad, "cuda")
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    inputs, grad = _similarity_inputs(2, 64, 33, 47, 5, 2)
    inputs, grad = [t.to(dtype) for t in inputs], grad.to(dtype)
    op = lambda q, key, backend: local_similarity(q, key, 5, 2, backend=backend)  # noqa: E731
    first, second = _run(op, inputs, grad, "cuda"), _run(op, inputs, grad, "cuda")
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_non_contiguous_inputs():
    f = torch.randn(2, 9, 7, 6, device="cuda").transpose(2, 3)  # [2, 9, 6, 7], strided
    m = torch.randn(2, 9, 12, 14, device="cuda").to(memory_format=torch.channels_last)
    expected = carafe(f.contiguous(), m.contiguous(), 3, 2, backend="torch")
    torch.testing.assert_close(carafe(f, m, 3, 2, backend="cuda"), expected, atol=1e-5, rtol=1e-5)
    q = torch.randn(2, 12, 14, 9, device="cuda").permute(0, 3, 1, 2)  # [2, 9, 12, 14]
    expected = local_similarity(q.contiguous(), f.contiguous(), 3, 2, backend="torch")
    got = local_similarity(q, f, 3, 2, backend="cuda")
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_runs_on_the_current_stream():
    inputs, _ = _carafe_inputs(4, 64, 40, 40, 5, 2)
    f, m = [t.float() for t in inputs]
    expected = carafe(f, m, 5, 2, backend="torch")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = carafe(f, m, 5, 2, backend="cuda")
    stream.synchronize()
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_works_under_autocast(dtype):
    inputs, grad = _carafe_inputs(2, 8, 6, 5, 3, 2)
    f, m = [t.to(dtype).requires_grad_(True) for t in inputs]
    plain = carafe(f, m, 3, 2, backend="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        out = carafe(f, m, 3, 2, backend="cuda")
        sim = local_similarity(out, f, 3, 2, backend="cuda")
    assert out.dtype == dtype and torch.equal(out, plain)
    sim.float().sum().backward()
    assert f.grad is not None and m.grad is not None and torch.isfinite(f.grad).all()


def test_new_sizes_do_not_recompile():
    f, m = [t.float() for t in _carafe_inputs(1, 4, 3, 5, 3, 2)[0]]
    carafe(f, m, 3, 2, backend="cuda")
    compiled = compiler.compiled.cache_info().currsize
    for b, c, h, w, k, s in [(2, 5, 7, 4, 5, 4), (1, 3, 11, 2, 7, 1)]:
        f, m = [t.float() for t in _carafe_inputs(b, c, h, w, k, s)[0]]
        carafe(f, m, k, s, backend="cuda")
    assert compiler.compiled.cache_info().currsize == compiled


def _module_pair(name, channels, **kw):
    from uplab.upsamplers import build

    torch.manual_seed(0)
    cuda_module = build(name, channels, 2, backend="cuda", **kw).cuda().double()
    torch_module = build(name, channels, 2, backend="torch", **kw).cuda().double()
    torch_module.load_state_dict(cuda_module.state_dict())
    return cuda_module, torch_module


@pytest.mark.parametrize("name", ["sapa_g", "fade"])
def test_whole_upsampler_forward_backward(name):
    cuda_module, torch_module = _module_pair(name, 16)
    x = torch.randn(2, 16, 7, 9, device="cuda", dtype=torch.float64)
    guide = torch.randn(2, 16, 14, 18, device="cuda", dtype=torch.float64)
    results = []
    for module in (cuda_module, torch_module):
        xs, gs = x.clone().requires_grad_(True), guide.clone().requires_grad_(True)
        out = module(xs, guide=gs)
        out.backward(torch.ones_like(out))
        params = {n: p.grad for n, p in module.named_parameters()}
        results.append((out.detach(), xs.grad, gs.grad, params))
    (out_c, gx_c, gg_c, p_c), (out_t, gx_t, gg_t, p_t) = results
    torch.testing.assert_close(out_c, out_t, atol=1e-10, rtol=0)
    torch.testing.assert_close(gx_c, gx_t, atol=1e-10, rtol=0)
    torch.testing.assert_close(gg_c, gg_t, atol=1e-10, rtol=0)
    assert p_c.keys() == p_t.keys()
    for n in p_c:
        torch.testing.assert_close(p_c[n], p_t[n], atol=1e-9, rtol=0, msg=n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("k, s", [(3, 2), (5, 2), (7, 4)])
def test_tiled_kernels_at_multi_tile_sizes_match_torch_path(k, s, dtype):
    # Several tiles each way with ragged last ones, groups, and enough blocks that the dispatcher
    # picks the tiled kernels for the forward and for window_dot (carafe's grad_masks,
    # local_similarity's forward); then window_dot_tiled forced on a grid too small for "auto".
    assert variants.tiled_applies(dtype, k, s)
    inputs, grad = _carafe_inputs(16, 24, 37, 45, k, s, 2)
    op = lambda f, m, backend: carafe(f, m, k, s, group_size=2, backend=backend)  # noqa: E731
    _compare(op, inputs, grad, dtype)
    inputs, grad = _similarity_inputs(16, 24, 37, 45, k, s)
    op = lambda q, key, backend: local_similarity(q, key, k, s, backend=backend)  # noqa: E731
    _compare(op, inputs, grad, dtype)
    q, key = [t[:1].to(dtype) for t in inputs]
    got = launchers.window_dot(q, key, k, s, 1, path="tiled")
    want = local_similarity(q.double(), key.double(), k, s, backend="torch")
    torch.testing.assert_close(got.double(), want, atol=TOL[dtype][0], rtol=TOL[dtype][1])


def _leave_nan_block(shape, dtype):
    """Free a NaN-filled block of this size into PyTorch's cache, where the next allocation of the
    size finds it: an output element the kernel fails to write then stays NaN and fails."""
    torch.full(shape, float("nan"), device="cuda", dtype=dtype)


def _reassemble_async_staging(features, masks, k, s, groups, stage, split_channels):
    """``reassemble_tiled`` built with the cp.async staging, ``stage`` channels per buffer."""
    b, c, h, w = features.shape
    _leave_nan_block((b, c, h * s, w * s), features.dtype)
    return launchers.reassemble(
        *(features, masks, k, s, groups),
        path="tiled",
        stage_channels=stage,
        staging="async",
        split_channels=split_channels,
    )


def _window_dot_async_staging(query, key, k, s, groups, stage):
    """``window_dot_tiled`` built with the cp.async staging, ``stage`` channels per buffer."""
    b, c, h, w = key.shape
    _leave_nan_block((b, groups * k * k, h * s, w * s), key.dtype)
    return launchers.window_dot(
        query, key, k, s, groups, path="tiled", stage_channels=stage, staging="async"
    )


# (width, elements the base lies past an aligned allocation): every copy width of the async
# staging (see the tests below) and the fallbacks for a misaligned base.
ASYNC_STAGING_WIDTHS = ((37, 0), (38, 0), (44, 0), (40, 0), (38, 1))


def _randn_at_offset(shape, offset, dtype):
    """A CUDA randn tensor of ``shape`` whose data starts ``offset`` elements into its storage."""
    storage = torch.randn(math.prod(shape) + offset, device="cuda", dtype=torch.float64)
    return storage.to(dtype)[offset:].view(shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("s", [2, 4])
@pytest.mark.parametrize("k", [3, 5, 7])
def test_async_staging_matches_sync_tiled_kernel_and_torch_path(k, s, dtype):
    # Widths 37, 38, 44, 40 take every copy width of the async staging (fp32: 4, 8, 16, 16 bytes;
    # 16-bit: element copies, 4, 8, 16 bytes); 38 with the base one element off takes the
    # fallbacks for a misaligned base. 21 rows: three tiles down, ragged. 15 channels staged 2 per
    # buffer: a block holding a whole group (split_channels=False) runs 8 chunks (groups=1) or 3
    # ragged ones (groups=3) through both buffers; the GPU-filling split runs short blocks.
    torch.manual_seed(0)
    atol, rtol = TOL[dtype]
    for groups in (1, 3):
        for width, offset in ASYNC_STAGING_WIDTHS:
            features = _randn_at_offset((2, 15, 21, width), offset, dtype)
            masks = torch.randn(2, groups * k * k, 21 * s, width * s, device="cuda").to(dtype)
            want = carafe(
                features.double(), masks.double(), k, s, group_size=groups, backend="torch"
            )
            sync = launchers.reassemble(features, masks, k, s, groups, path="tiled")
            for split_channels in (False, True):
                got = _reassemble_async_staging(features, masks, k, s, groups, 2, split_channels)
                case = f"groups={groups} width={width} offset={offset} split={split_channels}"
                assert torch.equal(got, sync), f"async staging differs from the sync kernel: {case}"
                torch.testing.assert_close(got.double(), want, atol=atol, rtol=rtol, msg=case)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("s", [2, 4])
@pytest.mark.parametrize("k", [3, 5, 7])
def test_window_dot_async_staging_matches_sync_tiled_kernel_and_torch_path(k, s, dtype):
    # As for carafe above, with the copy widths taken by the key (widths 37, 38, 44, 40; 38 with
    # the key's base one element off): 15 channels staged 2 per buffer run 8 chunks (groups=1) or
    # 3 ragged ones of a 5-channel group (groups=3) through both buffers. The sync kernel stages
    # up to 16 channels per barrier, but both sum the channels one by one in order, so they must
    # agree bit for bit. The reference sums each group with the float64 PyTorch path.
    torch.manual_seed(0)
    atol, rtol = TOL[dtype]
    for groups in (1, 3):
        for width, offset in ASYNC_STAGING_WIDTHS:
            key = _randn_at_offset((2, 15, 21, width), offset, dtype)
            query = torch.randn(2, 15, 21 * s, width * s, device="cuda").to(dtype)
            want = torch.cat(
                [
                    local_similarity(q.double(), kg.double(), k, s, backend="torch")
                    for q, kg in zip(query.chunk(groups, 1), key.chunk(groups, 1), strict=True)
                ],
                dim=1,
            )
            sync = launchers.window_dot(query, key, k, s, groups, path="tiled")
            got = _window_dot_async_staging(query, key, k, s, groups, 2)
            case = f"groups={groups} width={width} offset={offset}"
            assert torch.equal(got, sync), f"async staging differs from the sync kernel: {case}"
            torch.testing.assert_close(got.double(), want, atol=atol, rtol=rtol, msg=case)


# The shipped tile (32 x 4 parents), and the other tiles and the strips bench_gpu.py and
# bench_mma_variants.py time beside it.
MMA_TILES = {
    "32x4": variants.MmaVariant(),
    "8x8": variants.MmaVariant(warps_x=1, warps_y=8),
    "16x8": variants.MmaVariant(warps_x=2, warps_y=8),
    "8x8-strip": variants.MmaVariant(warps_x=1, warps_y=8, strip=True),
    "32x4-strip": variants.MmaVariant(strip=True),
}


@pytest.mark.parametrize("tile", MMA_TILES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("k", variants.MMA_KERNEL_SIZES)
def test_tensor_core_forward_matches_torch_path(k, dtype, tile, monkeypatch):
    # reassemble_mma on the real mma.sync (the CPU emulation checks the same cases against its
    # lane-by-lane model, tests/ops/test_kernels_on_cpu.py): ragged tiles, a full and a ragged
    # 16-channel chunk per group, groups, every cp.async copy width, misaligned base; for the
    # shipped 32 x 4-parent tile and the variants a GPU run may make the default; strips of 3
    # tiles (the launcher would take 1 at these sizes), so that 37 rows end in a ragged strip.
    monkeypatch.setattr(variants, "MMA_VARIANT", MMA_TILES[tile])
    if MMA_TILES[tile].strip:
        monkeypatch.setattr(geometry, "mma_strip_tiles", lambda *args: 3)
    torch.manual_seed(0)
    atol, rtol = TOL[dtype]
    cases = ((1, (19, 0)), (2, (20, 0)), (1, (24, 0)), (2, (22, 1)), (1, (70, 0)))  # 70: 2+ tiles
    for groups, (width, offset) in cases:
        features = _randn_at_offset((3, 20 * groups, 37, width), offset, dtype)
        masks = torch.randn(3, groups * k * k, 74, 2 * width, device="cuda").to(dtype)
        want = carafe(features.double(), masks.double(), k, 2, group_size=groups, backend="torch")
        _leave_nan_block(want.shape, dtype)
        got = launchers.reassemble(features, masks, k, 2, groups, path="mma")
        case = f"groups={groups} width={width} offset={offset}"
        torch.testing.assert_close(got.double(), want, atol=atol, rtol=rtol, msg=case)


@pytest.mark.parametrize("tile", [t for t in MMA_TILES if MMA_TILES[t].strip])
def test_tensor_core_strips_opt_in_to_shared_memory_past_48_kib(tile, monkeypatch):
    # A strip build's carry holds every channel of its block: 512 channels in one block (no
    # split for occupancy here) take 73 KiB at K=5 for 8 x 8 tiles and 185 KiB for 32 x 4 (two
    # blocks of 105 KiB on an A100), which the launch must opt in to (cuFuncSetAttribute).
    variant = MMA_TILES[tile]
    monkeypatch.setattr(variants, "MMA_VARIANT", variant)
    monkeypatch.setattr(geometry, "mma_strip_tiles", lambda *args: 3)
    monkeypatch.setattr(geometry, "TILED_BLOCKS_PER_SM", 0)
    features = torch.randn(2, 512, 37, 70, device="cuda").to(torch.bfloat16)
    masks = torch.randn(2, 25, 74, 140, device="cuda").to(torch.bfloat16)
    config = geometry.mma_device_config(features, 5, 1)
    assert config.shared_mem > geometry.SHARED_MEMORY_LIMIT
    want = carafe(features.double(), masks.double(), 5, 2, backend="torch")
    _leave_nan_block(want.shape, torch.bfloat16)
    got = launchers.reassemble(features, masks, 5, 2, 1, path="mma")
    atol, rtol = TOL[torch.bfloat16]
    torch.testing.assert_close(got.double(), want, atol=atol, rtol=rtol)


def test_tensor_core_forward_through_autograd(monkeypatch):
    # TILED_MMA: carafe's "auto" forward takes reassemble_mma (the backward is unchanged).
    monkeypatch.setattr(variants, "TILED_MMA", True)
    inputs, grad = _carafe_inputs(4, 48, 33, 40, 5, 2)
    op = lambda f, m, backend: carafe(f, m, 5, 2, backend=backend)  # noqa: E731
    _compare(op, inputs, grad, torch.bfloat16)
