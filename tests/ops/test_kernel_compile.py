"""The CUDA sources compile for sm_80 and sm_90 with every template instantiation (NVRTC from
``cuda.bindings`` and ``nvcc -ptx``, whichever is present; no GPU needed), so does the
cp.async staging of ``reassemble_tiled`` and ``window_dot_tiled`` (``-DTILED_ASYNC_STAGING=1``, and
its plain-copy fallback below sm_80), and the launch geometry of
:mod:`uplab.ops.cuda.geometry` covers every output exactly once."""

import importlib.util
import math
import re
import shutil
import subprocess

import pytest
import torch

from uplab.ops.cuda import (
    compiler,
    device_properties,
    geometry,
    launchers,
    runtime,
    variants,
)

ARCHS = (80, 90)
FILES = sorted(compiler.KERNEL_FILES)
# The files whose tiled kernels have both halo stagings (carafe_mma.cu always uses cp.async).
STAGED_FILES = ("carafe.cu", "local_similarity.cu")
NVCC = shutil.which("nvcc")
HAS_NVRTC = importlib.util.find_spec("cuda") is not None and (
    importlib.util.find_spec("cuda.bindings") is not None
)


def _all_expressions(file):
    return [
        e
        for scalar in variants.SCALAR_TYPES.values()
        for e in compiler.name_expressions(file, scalar)
    ]


# Per file, one instantiation per storage type, every K once: the async build's code paths (copy
# widths per type, window unrolled per K) at a third of the compile time of all nine. The two files
# pair K and type differently, so that together they cover every K with every type.
ASYNC_EXPRESSIONS = {
    "carafe.cu": (
        "reassemble_tiled<float, 3>",
        "reassemble_tiled<half_t, 7>",
        "reassemble_tiled<bfloat16_t, 5>",
    ),
    "local_similarity.cu": (
        "window_dot_tiled<float, 7>",
        "window_dot_tiled<half_t, 5>",
        "window_dot_tiled<bfloat16_t, 3>",
    ),
}


def _nvrtc_ptx(file, arch, expressions=None, defines=()):
    from cuda.bindings import nvrtc

    def ok(result):
        err, *rest = result
        assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS, f"{file}: {err}"
        return rest[0] if rest else None

    prog = ok(
        nvrtc.nvrtcCreateProgram(compiler.kernel_source(file).encode(), file.encode(), 0, [], [])
    )
    try:
        expressions = _all_expressions(file) if expressions is None else expressions
        for expression in expressions:
            ok(nvrtc.nvrtcAddNameExpression(prog, expression.encode()))
        options = [o.encode() for o in (*variants.NVRTC_OPTIONS, *defines)] + [
            f"--gpu-architecture=compute_{arch}".encode()
        ]
        (err,) = nvrtc.nvrtcCompileProgram(prog, len(options), options)
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            size = ok(nvrtc.nvrtcGetProgramLogSize(prog))
            log = b" " * size
            nvrtc.nvrtcGetProgramLog(prog, log)
            pytest.fail(
                f"NVRTC failed on {file} for compute_{arch}:\n{log.decode(errors='replace')}"
            )
        lowered = [ok(nvrtc.nvrtcGetLoweredName(prog, e.encode())).decode() for e in expressions]
        ptx = b" " * ok(nvrtc.nvrtcGetPTXSize(prog))
        ok(nvrtc.nvrtcGetPTX(prog, ptx))
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
    return ptx.decode(errors="replace"), lowered


@pytest.mark.skipif(not HAS_NVRTC, reason="NVRTC (cuda.bindings) is not installed")
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("file", FILES)
def test_compiles_with_nvrtc(file, arch):
    ptx, lowered = _nvrtc_ptx(file, arch)
    assert f".target sm_{arch}" in ptx
    entries = set(re.findall(r"\.entry\s+(\w+)", ptx))
    assert entries == set(lowered), "every name expression must become exactly one kernel entry"
    if file in STAGED_FILES:
        assert "cp.async" not in ptx, "the shipped build stages synchronously"
    else:
        # the tensor-core forward: both 16-bit types' mma, cp.async staging, no trap left in
        for instruction in (
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32",
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32",
            "cp.async.wait_group 1",
        ):
            assert instruction in ptx
        assert "trap;" not in ptx


@pytest.mark.skipif(not HAS_NVRTC, reason="NVRTC (cuda.bindings) is not installed")
@pytest.mark.parametrize("arch", (75, *ARCHS))
@pytest.mark.parametrize("file", STAGED_FILES)
def test_async_staging_compiles_with_nvrtc(file, arch):
    expressions = ASYNC_EXPRESSIONS[file]
    ptx, lowered = _nvrtc_ptx(file, arch, expressions, (variants.ASYNC_STAGING_OPTION,))
    assert set(re.findall(r"\.entry\s+(\w+)", ptx)) == set(lowered)
    if arch >= 80:
        # 16-byte copies bypass L1 (.cg); 8- and 4-byte ones can only be .ca.
        for instruction in ("cp.async.cg.shared.global", "cp.async.ca.shared.global"):
            assert instruction in ptx
        assert "cp.async.wait_group 1" in ptx and "cp.async.commit_group" in ptx
    else:
        assert "cp.async" not in ptx, "below sm_80 the async build must use plain copies"


def _nvcc_ptx(tmp_path, file, arch, expressions, defines=()):
    # Taking each template's address in host code instantiates it, as NVRTC's name expressions do.
    unit = tmp_path / "instances.cu"
    unit.write_text(
        f'#include "{file}"\nvoid* uplab_instances[] = {{'
        + ", ".join(f"(void*)&{e}" for e in expressions)
        + "};\n"
    )
    ptx = tmp_path / "out.ptx"
    result = subprocess.run(
        [
            NVCC,
            "-ptx",
            f"-arch=sm_{arch}",
            "-std=c++17",
            *defines,
            "-I",
            str(compiler.kernel_dir()),
            str(unit),
            "-o",
            str(ptx),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return ptx.read_text()


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("file", FILES)
def test_compiles_with_nvcc(file, arch, tmp_path):
    expressions = _all_expressions(file)
    unit_ptx = _nvcc_ptx(tmp_path, file, arch, expressions)
    assert len(re.findall(r"\.entry\s+\w+", unit_ptx)) == len(expressions)


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("file", STAGED_FILES)
def test_async_staging_compiles_with_nvcc(file, arch, tmp_path):
    expressions = ASYNC_EXPRESSIONS[file]
    ptx = _nvcc_ptx(tmp_path, file, arch, expressions, (variants.ASYNC_STAGING_OPTION,))
    assert len(re.findall(r"\.entry\s+\w+", ptx)) == len(expressions)
    assert "cp.async.wait_group 1" in ptx


# every compile-time variant of reassemble_mma that benchmarks/bench_mma_variants.py may time
MMA_VARIANTS = [
    variants.MmaVariant(stages, slabs, warps_x, warps_y)
    for warps_x, warps_y in ((1, 8), (2, 8), (4, 4))
    for slabs in (1, 2)
    for stages in (2, 4)
    if geometry.mma_variant_fits(variants.MmaVariant(stages, slabs, warps_x, warps_y))
] + [variants.MmaVariant(warps_x=1, warps_y=8, strip=True), variants.MmaVariant(strip=True)]


@pytest.mark.skipif(not HAS_NVRTC and NVCC is None, reason="neither NVRTC nor nvcc is present")
@pytest.mark.parametrize("variant", MMA_VARIANTS, ids=str)
def test_tensor_core_variants_compile(variant, tmp_path):
    expressions = _all_expressions("carafe_mma.cu")
    defines = tuple(o for o in variant.options() if o.startswith("-D"))
    if HAS_NVRTC:
        ptx, lowered = _nvrtc_ptx("carafe_mma.cu", 90, expressions, defines)
        assert set(re.findall(r"\.entry\s+(\w+)", ptx)) == set(lowered)
    else:
        ptx = _nvcc_ptx(tmp_path, "carafe_mma.cu", 90, expressions, defines)
        assert len(re.findall(r"\.entry\s+\w+", ptx)) == len(expressions)
    assert f".maxntid {variant.threads}" in ptx
    assert f"cp.async.wait_group {variant.stages - 2}" in ptx


def test_sources_are_found_and_inline_their_header():
    for file in FILES:
        source = compiler.kernel_source(file)
        assert "#include" not in source
        assert "struct bfloat16_t" in source
        assert "void stage_halo_async_any(" in source  # the async staging helpers, shared
        for kernel in compiler.KERNEL_FILES[file]:
            assert re.search(rf"__global__ void {kernel}\(", source), kernel


def test_unsupported_dtype_is_a_value_error():
    with pytest.raises(ValueError, match="torch.int32"):
        variants.scalar_type(torch.int32)


def _reassemble_covers(batch, channels, h, w, k, s, groups, acc_bytes, n_sm):
    cfg = geometry.reassemble_config(batch, channels, h, w, k, s, groups, acc_bytes, n_sm)
    tiles_x = math.ceil(w * s / (2 * cfg.block[0]))
    tiles_y = math.ceil(h * s / (2 * cfg.block[1]))
    assert cfg.grid == (tiles_x * tiles_y, cfg.grid[1], batch * groups)
    assert cfg.per_block % geometry.REASSEMBLE_CHANNELS == 0
    # The channel chunks tile the group exactly: the last one starts inside the group.
    assert (cfg.grid[1] - 1) * cfg.per_block < channels // groups <= cfg.grid[1] * cfg.per_block
    assert cfg.shared_mem == k * k * 4 * cfg.block[0] * cfg.block[1] * acc_bytes
    assert cfg.shared_mem <= geometry.SHARED_MEMORY_LIMIT
    return cfg


@pytest.mark.parametrize(
    "shape",
    [
        (1, 256, 120, 120, 5, 2, 1, 4),
        (16, 256, 128, 128, 5, 2, 1, 4),
        (2, 6, 3, 5, 7, 3, 2, 8),
        (1, 1, 1, 1, 1, 1, 1, 4),
        (4, 64, 9, 7, 9, 4, 4, 8),
    ],
)
def test_reassemble_launch_covers_every_output(shape):
    cfg = _reassemble_covers(*shape, n_sm=132)
    assert cfg.grid[1] <= geometry.MAX_GRID_YZ


def test_small_images_split_channels_to_fill_the_gpu():
    small = _reassemble_covers(1, 256, 30, 30, 5, 2, 1, 4, n_sm=132)
    large = _reassemble_covers(16, 256, 128, 128, 5, 2, 1, 4, n_sm=132)
    assert small.grid[1] > 1 and large.grid[1] == 1


def test_large_kernels_shrink_the_block_and_huge_ones_are_refused():
    assert _reassemble_covers(1, 8, 4, 4, 7, 2, 1, 4, 1).block[:2] == (16, 2)
    with pytest.raises(ValueError, match="backend='torch'"):
        geometry.reassemble_config(1, 8, 4, 4, 57, 2, 1, 4, 1)


@pytest.mark.parametrize("k, acc_bytes, n_sm", [(5, 4, 132), (7, 4, 1), (9, 8, 1), (3, 8, 132)])
def test_window_dot_launch_splits_offsets_within_shared_memory(k, acc_bytes, n_sm):
    cfg = geometry.window_dot_config(2, 20, 30, k, 2, 1, acc_bytes, n_sm)
    assert (cfg.grid[1] - 1) * cfg.per_block < k * k <= cfg.grid[1] * cfg.per_block
    assert cfg.shared_mem == cfg.per_block * 4 * cfg.block[0] * cfg.block[1] * acc_bytes
    assert cfg.shared_mem <= geometry.SHARED_MEMORY_LIMIT


def test_transpose_launch_covers_every_low_resolution_point():
    cfg = geometry.reassemble_transpose_config(3, 40, 33, 65, 2, n_sm=132)
    assert cfg.grid[0] == math.ceil(65 / cfg.block[0]) * math.ceil(33 / cfg.block[1])
    assert cfg.per_block % geometry.TRANSPOSE_CHANNELS == 0
    assert (cfg.grid[1] - 1) * cfg.per_block < 20 <= cfg.grid[1] * cfg.per_block


def test_batch_times_groups_beyond_the_grid_is_refused():
    with pytest.raises(ValueError, match="batch \\* groups"):
        geometry.reassemble_transpose_config(70000, 1, 1, 1, 1, n_sm=1)


def test_tiled_kernels_take_even_scales_specialised_sizes_and_narrow_floats():
    assert variants.tiled_applies(torch.float32, 5, 2)
    assert variants.tiled_applies(torch.bfloat16, 7, 4)
    assert not variants.tiled_applies(torch.float64, 5, 2)
    assert not variants.tiled_applies(torch.float32, 5, 3)
    assert not variants.tiled_applies(torch.float16, 9, 2)
    assert "reassemble_tiled<half_t, 3>" in compiler.name_expressions("carafe.cu", "half_t")
    assert not any("tiled" in e for e in compiler.name_expressions("carafe.cu", "double"))


def test_tensor_core_kernel_takes_16_bit_floats_scale_2_and_small_windows():
    assert variants.mma_applies(torch.bfloat16, 5, 2) and variants.mma_applies(torch.float16, 3, 2)
    assert not variants.mma_applies(torch.float32, 5, 2)
    assert not variants.mma_applies(torch.bfloat16, 7, 2)
    assert not variants.mma_applies(torch.bfloat16, 5, 4)
    assert compiler.name_expressions("carafe_mma.cu", "bfloat16_t") == (
        "reassemble_mma<bfloat16_t, 3>",
        "reassemble_mma<bfloat16_t, 5>",
    )
    assert compiler.name_expressions("carafe_mma.cu", "float") == ()
    with pytest.raises(ValueError, match="tensor-core kernel takes dtype"):
        launchers._choose_path("mma", torch.float32, 5, 2, mma=True)
    with pytest.raises(ValueError, match="path must be one of"):
        launchers._choose_path("mma", torch.bfloat16, 5, 2)  # window_dot has no tensor-core kernel
    # "auto" takes it where it applies (TILED_MMA), and the tiled kernel otherwise
    assert launchers._choose_path("auto", torch.bfloat16, 5, 2, mma=True) == "mma"
    assert launchers._choose_path("auto", torch.bfloat16, 7, 2, mma=True) == "tiled"
    assert launchers._choose_path("auto", torch.bfloat16, 5, 2) == "tiled"  # window_dot


def test_tensor_core_variant_defaults_match_the_kernel_source():
    # MmaVariant() is what reassemble_mma builds by default, with -D options; the .cu defaults
    # (what the CPU emulator and the compile tests build) must be the same variant.
    source = (compiler.kernel_dir() / "carafe_mma.cu").read_text()
    pattern = r"#define (MMA_STAGES|MMA_SLABS|MMA_WARPS_X|MMA_WARPS_Y|MMA_STRIP) (\d+)"
    defaults = dict(re.findall(pattern, source))
    variant = variants.MmaVariant()
    assert defaults == {
        "MMA_STAGES": str(variant.stages),
        "MMA_SLABS": str(variant.slabs),
        "MMA_WARPS_X": str(variant.warps_x),
        "MMA_WARPS_Y": str(variant.warps_y),
        "MMA_STRIP": str(int(variant.strip)),
    }
    assert variants.MMA_VARIANT == variant
    small = geometry.mma_shared_mem(5, 2, variants.MmaVariant(stages=2, slabs=1))
    assert geometry.mma_shared_mem(5, 2, variants.MmaVariant(stages=4, slabs=2)) == 4 * small
    square = variants.MmaVariant(warps_x=1, warps_y=8)  # the 8 x 8 tile (the shipped tile is 32 x 4)
    wide = variants.MmaVariant(warps_x=2, warps_y=8)
    assert geometry.mma_row_stride(5, wide) == geometry.mma_row_stride(5, square) + 8
    cfg = geometry.mma_config(2, 64, 20, 40, 5, 1, 132, 2, wide)
    assert cfg.block == (512, 1, 1) and cfg.grid[0] == 3 * 3  # ceil(40 / 16) x ceil(20 / 8)
    # the shipped 32 x 4 tile's channel plane at K = 5 is padded from 152 words to 156 (A-load
    # banks); the 8 x 8 and 16 x 8 ones need no padding
    flat = variants.MmaVariant()
    assert flat.tile == (32, 4) and flat.threads == 512
    assert geometry.mma_chunk_plane(5) == 2 * 156 and geometry.mma_chunk_plane(3) == 216
    assert geometry.mma_chunk_plane(5, square) == 12 * geometry.mma_row_stride(5, square)
    assert geometry.mma_chunk_plane(5, wide) == 12 * geometry.mma_row_stride(5, wide)
    cfg = geometry.mma_config(2, 64, 20, 40, 5, 1, 132, 2, flat)
    assert cfg.block == (512, 1, 1) and cfg.grid[0] == 2 * 5  # ceil(40 / 32) x ceil(20 / 4)
    too_big = variants.MmaVariant(stages=4, slabs=2, warps_x=2, warps_y=8)  # 67,584 bytes at K=5
    assert not geometry.mma_variant_fits(too_big)
    with pytest.raises(ValueError, match="bytes of shared memory at K=5"):
        geometry.mma_config(2, 64, 20, 40, 5, 1, 132, 2, too_big)


def test_strip_launch_carries_every_channel_of_a_block_and_picks_its_length():
    # MmaVariant(strip=True): the carry (2R halo rows per channel of the block) joins the buffers
    # in shared memory, so a block's channels are capped by what fits; the strip length minimises
    # the model of mma_strip_tiles (at the benchmark's shape: whole columns of 16 tiles, 256 blocks
    # for 264 resident on 132 SMs, one round).
    strip = variants.MmaVariant(warps_x=1, warps_y=8, strip=True)  # 8 x 8 tiles
    assert (
        "-DMMA_STRIP=1" in strip.options()
        and "-DMMA_STRIP=1" not in variants.MmaVariant().options()
    )
    assert geometry.mma_carry_plane(5, strip) == 4 * geometry.mma_row_stride(5, strip) == 56
    cfg = geometry.mma_config(16, 256, 128, 128, 5, 1, 132, 2, strip)
    assert cfg.strip_tiles == 16 and cfg.grid == (16, 1, 16) and cfg.per_block == 256
    assert (
        cfg.shared_mem
        == geometry.mma_shared_mem(5, 2, variants.MmaVariant(warps_x=1, warps_y=8)) + 256 * 56 * 2
        <= geometry.SHARED_MEMORY_LIMIT
    )
    # 1037 channels do not fit one block's carry (288 at most at K=5): split into 4 of 272
    cfg = geometry.mma_config(16, 1037, 128, 128, 5, 1, 132, 2, strip)
    assert (
        cfg.per_block == 272 and cfg.grid[1] == 4 and cfg.shared_mem <= geometry.SHARED_MEMORY_LIMIT
    )
    assert cfg.grid[0] == 16 * math.ceil(16 / cfg.strip_tiles)
    # the shipped variant computes one tile a block whatever the model would say
    assert geometry.mma_config(16, 256, 128, 128, 5, 1, 132, 2).strip_tiles == 1
    assert geometry.mma_strip_tiles(16, 16, 16, 256, 5, 132, variants.MmaVariant()) == 1
    # few blocks: a strip of one tile keeps the SMs busy
    assert geometry.mma_strip_tiles(4, 4, 1, 256, 5, 132, strip) == 1
    # the model: rounds of resident blocks x one block's sectors per channel
    assert geometry.mma_strip_tiles(16, 16, 16, 256, 5, 132, strip) == 16
    assert geometry.mma_strip_tiles(16, 16, 64, 256, 5, 132, strip) == 16
    assert geometry.mma_strip_tiles(16, 16, 16, 256, 5, 33, strip) == 16


def test_strip_builds_opt_in_to_more_shared_memory_for_their_carry(monkeypatch):
    # A strip build's carry grows with the block's channels: past the default 48 KiB it may take
    # what the device lets a block opt in to, as long as the blocks an SM holds still fit (an
    # H100: 2 x 256 threads of 113 KiB, or one block of 512 threads of 227 KiB); other builds
    # keep 48 KiB.
    monkeypatch.setattr(device_properties, "shared_memory", lambda device_index: (232_448, 233_472))
    strip = variants.MmaVariant(warps_x=1, warps_y=8, strip=True)  # 8 x 8 tiles
    flat_strip = variants.MmaVariant(strip=True)  # the shipped 32 x 4 tiles
    assert geometry.mma_shared_limit(0, variants.MmaVariant()) == geometry.SHARED_MEMORY_LIMIT
    assert geometry.mma_shared_limit(0, strip) == 233_472 // 2 - 1024
    assert geometry.mma_shared_limit(0, flat_strip) == 232_448
    limit = geometry.mma_shared_limit(0, strip)
    # room for 880 channels' carry at K=5 (288 in 48 KiB): 512 in one block, 1037 in two
    cfg = geometry.mma_config(16, 512, 128, 128, 5, 1, 132, 2, strip, shared_limit=limit)
    assert cfg.grid[1] == 1 and cfg.shared_mem == geometry.mma_shared_mem(5, 2, strip, 512) <= limit
    cfg = geometry.mma_config(16, 1037, 128, 128, 5, 1, 132, 2, strip, shared_limit=limit)
    assert cfg.grid[1] == 2 and cfg.shared_mem <= limit
    # 32 x 4 in strips: its 256 channels in one block, masks read once (6 splits in 48 KiB)
    limit = geometry.mma_shared_limit(0, flat_strip)
    cfg = geometry.mma_config(16, 256, 128, 128, 5, 1, 132, 2, flat_strip, shared_limit=limit)
    assert cfg.per_block == 256 and cfg.shared_mem > geometry.SHARED_MEMORY_LIMIT
    assert geometry.mma_config(16, 256, 128, 128, 5, 1, 132, 2, flat_strip).grid[1] == 6


def test_device_config_takes_the_devices_multiprocessors_and_shared_memory(monkeypatch):
    # what reassemble, the variant benchmark and the GPU tests launch: mma_config with the
    # device's SM count and, for a strip build, its opt-in shared memory
    monkeypatch.setattr(device_properties, "multiprocessors", lambda device_index: 132)
    monkeypatch.setattr(device_properties, "shared_memory", lambda device_index: (232_448, 233_472))
    features = torch.empty(16, 512, 128, 128, dtype=torch.bfloat16)
    strip = variants.MmaVariant(warps_x=1, warps_y=8, strip=True)  # 8 x 8 tiles
    got = geometry.mma_device_config(features, 5, 1, strip)
    assert got == geometry.mma_config(16, 512, 128, 128, 5, 1, 132, 2, strip, 115_712)
    assert got.per_block == 512  # past 48 KiB: 288 channels at most there
    assert geometry.mma_device_config(features, 5, 1) == geometry.mma_config(
        16, 512, 128, 128, 5, 1, 132, 2
    )


def test_launch_opts_a_kernel_in_to_shared_memory_past_48_kib_once():
    class Kernel:  # CuPy's RawKernel: the attribute's setter calls cuFuncSetAttribute
        def __init__(self):
            self.sets = []

        def __setattr__(self, name, value):
            if name == "max_dynamic_shared_size_bytes":
                self.sets.append(value)
            object.__setattr__(self, name, value)

    kernel = Kernel()
    for shared_mem in (1024, geometry.SHARED_MEMORY_LIMIT, 80_000, 60_000, 80_000, 100_000):
        runtime._opt_in(kernel, shared_mem)
    assert kernel.sets == [80_000, 100_000]


@pytest.mark.parametrize(
    "shape", [(16, 256, 128, 128, 5, 1), (1, 1037, 9, 13, 3, 1), (2, 40, 11, 19, 5, 2)]
)
def test_tensor_core_launch_covers_every_output(shape):
    batch, channels, h, w, k, groups = shape
    cfg = geometry.mma_config(batch, channels, h, w, k, groups, 132, 2)
    tile_w, tile_h = variants.MMA_VARIANT.tile
    assert cfg.grid[0] == math.ceil(w / tile_w) * math.ceil(h / tile_h)
    assert cfg.grid[2] == batch * groups and cfg.block == (variants.MMA_VARIANT.threads, 1, 1)
    group_channels = channels // groups
    assert (cfg.grid[1] - 1) * cfg.per_block < group_channels <= cfg.grid[1] * cfg.per_block
    assert cfg.per_block % variants.MMA_CHANNELS == 0 or cfg.grid[1] == 1
    assert cfg.shared_mem <= geometry.SHARED_MEMORY_LIMIT


@pytest.mark.parametrize("tile, scale, radius", [(64, 2, 2), (8, 2, 3), (16, 4, 1), (64, 6, 2)])
def test_halo_extent_holds_every_tiles_parents(tile, scale, radius):
    # The kernels index the staged halo by (parent - first parent + radius): it must fit for every
    # tile origin (a multiple of the tile), whatever the scale does to the parents' range.
    for origin in range(0, 40 * tile, tile):
        parents = (origin + tile - 1) // scale - origin // scale + 1
        assert parents + 2 * radius <= geometry._halo_extent(tile, scale, radius)


@pytest.mark.parametrize(
    "shape",
    [
        (16, 256, 128, 128, 5, 2, 1),
        (1, 256, 120, 120, 5, 2, 1),
        (2, 12, 21, 37, 7, 4, 3),
        (1, 1037, 9, 13, 3, 2, 1),
    ],
)
@pytest.mark.parametrize("block, stage", [((32, 4), 16), ((32, 8), 32), ((16, 2), 8)])
@pytest.mark.parametrize("staging, itemsize", [("sync", 4), ("async", 4), ("async", 2)])
def test_tiled_launch_covers_every_output(shape, block, stage, staging, itemsize):
    batch, channels, h, w, k, s, groups = shape
    cfg = geometry.tiled_config(
        *(batch, channels, h, w, k, s, groups, 132, block, stage),
        staging=staging,
        itemsize=itemsize,
    )
    tile_h = geometry.tiled_quad_rows(k) * block[1]
    assert cfg.grid[0] == math.ceil(w * s / (2 * block[0])) * math.ceil(h * s / tile_h)
    assert cfg.grid[2] == batch * groups
    group_channels = channels // groups
    assert (cfg.grid[1] - 1) * cfg.per_block < group_channels <= cfg.grid[1] * cfg.per_block
    assert 1 <= cfg.stage <= stage
    assert cfg.shared_mem <= geometry.SHARED_MEMORY_LIMIT
    if staging == "async":
        assert cfg.shared_mem == geometry.tiled_async_shared_mem(k, s, block, cfg.stage, itemsize)
    whole = geometry.tiled_config(*shape, 132, block, stage, split_channels=False)
    assert whole.grid[1] == 1 and whole.per_block == group_channels


def test_tiled_launch_refuses_blocks_beyond_its_launch_bounds():
    with pytest.raises(ValueError, match="at most 256 threads"):
        geometry.tiled_config(1, 8, 4, 4, 5, 2, 1, 1, block=(32, 16))


def test_staging_names_its_build_and_refuses_unknown_ones():
    assert variants.build_options("sync") == variants.NVRTC_OPTIONS
    assert variants.build_options("async") == (
        *variants.NVRTC_OPTIONS,
        variants.ASYNC_STAGING_OPTION,
    )
    assert variants.TILED_STAGING in variants.STAGINGS
    with pytest.raises(ValueError, match=r"staging must be one of \('sync', 'async'\), got 'cp'"):
        variants.build_options("cp")
    with pytest.raises(ValueError, match="staging must be one of"):
        geometry.tiled_config(1, 8, 4, 4, 5, 2, 1, 1, staging="cp")


@pytest.mark.parametrize("itemsize", [4, 2])
@pytest.mark.parametrize("k, s, block", [(5, 2, (32, 8)), (7, 4, (32, 8)), (3, 2, (16, 2))])
def test_async_staging_rows_hold_every_tiles_copies(k, s, block, itemsize):
    # The kernel starts a staged row at the halo's first column rounded down to a multiple of the
    # copy width (1, 2, 4 or 8 elements: 16, 8 or 4 bytes, or single 16-bit elements) and copies
    # whole copies; each row must hold them, and rows and buffers must start 16-byte aligned.
    stage = 3
    radius = (k - 1) // 2
    tile_w, tile_h = 2 * block[0], geometry.tiled_quad_rows(k) * block[1]
    halo_w = geometry._halo_extent(tile_w, s, radius)
    halo_h = geometry._halo_extent(tile_h, s, radius)
    shared = geometry.tiled_async_shared_mem(k, s, block, stage, itemsize)
    row_stride, rest = divmod(shared, 2 * stage * halo_h * itemsize)
    assert rest == 0 and (row_stride * itemsize) % 16 == 0
    for elems in (e for e in (1, 2, 4, 8) if e * itemsize <= 16):
        for x_origin in range(0, 20 * tile_w, tile_w):
            x0 = x_origin // s - radius
            xa = x0 & -elems
            assert xa <= x0 < xa + elems
            assert math.ceil((x0 - xa + halo_w) / elems) * elems <= row_stride


def test_cupy_stream_wraps_torch_handle_once_per_device_without_warning():
    pytest.importorskip("cupy", reason="CuPy (the 'cuda' extra) is not installed")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the deliberate ExternalStream must not warn
        first, again = runtime.cupy_stream(0, 4242), runtime.cupy_stream(0, 4242)
        other_device = runtime.cupy_stream(1, 4242)
    assert first is again and first.ptr == 4242 and first.device_id == 0
    assert other_device is not first and other_device.device_id == 1
    # never a cupy.cuda.Stream, whose __del__ would destroy PyTorch's stream
    assert type(first).__name__ == "ExternalStream"
