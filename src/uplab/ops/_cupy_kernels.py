"""Run the CUDA C++ kernels of ``kernels/*.cu`` on PyTorch tensors through CuPy (NVRTC).

Three operations serve both ops (see the header comments of the ``.cu`` files):

- :func:`reassemble`: CARAFE forward, and local similarity's gradient w.r.t. the query;
- :func:`reassemble_transpose`: CARAFE's gradient w.r.t. the features, and local similarity's
  gradient w.r.t. the key;
- :func:`window_dot`: local similarity forward, and CARAFE's gradient w.r.t. the masks.

``reassemble`` and ``window_dot`` each have a generic kernel (any K and scale, every dtype) and a
tiled one (``*_tiled<T, K>``: K in :data:`TILED_KERNEL_SIZES`, even scales, 32- and 16-bit
floats) that stages the low-resolution tile in shared memory and keeps the per-pixel operands in
registers; :func:`tiled_applies` says which runs. The tiled kernels stage their halo with
cp.async by default (:data:`TILED_STAGING`); ``reassemble`` has a tensor-core kernel for 16-bit
floats (``reassemble_mma<T, K>``, :data:`TILED_MMA`, :func:`mma_applies`). Sources are compiled
once per (file, storage type, device) and memoized; every size is a kernel argument, so new shapes
never recompile. Launches go to PyTorch's current stream on the tensor's device. CuPy is imported
lazily, so this module imports (and its launch arithmetic is testable) without it. Callers pass
contiguous tensors of one dtype on one CUDA device.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

KERNEL_FILES = {
    "carafe.cu": ("reassemble", "reassemble_transpose", "reassemble_tiled"),
    "carafe_mma.cu": ("reassemble_mma",),
    "local_similarity.cu": ("window_dot", "window_dot_tiled"),
}
TILED_KERNELS = ("reassemble_tiled", "window_dot_tiled")
# Kernel sizes the tiled kernels are specialised for (template argument K), and the storage types
# they take (float64 would need twice the registers for its per-pixel operands).
TILED_KERNEL_SIZES = (3, 5, 7)
TILED_SCALARS = ("float", "half_t", "bfloat16_t")
# The tensor-core forward (kernels/carafe_mma.cu): 16-bit floats, scale 2, K*K <= 32; sm_80+.
# "auto" takes it where it applies (TILED_MMA): on an H100 at 16x256x128x128, bf16, K=5, its forward
# took 0.486 ms against the tiled FFMA kernel's 0.802 ms (docs/benchmarks.md, run 5).
MMA_KERNELS = ("reassemble_mma",)
MMA_KERNEL_SIZES = (3, 5)
MMA_SCALARS = ("half_t", "bfloat16_t")
MMA_SCALE = 2
MMA_PARENTS_X, MMA_CHANNELS = 8, 16  # as .cu
TILED_MMA = True
HEADER = "uplab_scalar.cuh"
SCALAR_TYPES = {
    torch.float32: "float",
    torch.float64: "double",
    torch.float16: "half_t",
    torch.bfloat16: "bfloat16_t",
}
NVRTC_OPTIONS = ("--std=c++17",)

# Channels (or quads) per thread, as #defined in the .cu files.
REASSEMBLE_CHANNELS = 8
TRANSPOSE_CHANNELS = 16
# Default dynamic shared memory a block may use without opting in (all CUDA GPUs since sm_20).
SHARED_MEMORY_LIMIT = 48 * 1024
MAX_GRID_YZ = 65535
# Enough blocks per SM to hide memory latency; more only adds per-block staging.
BLOCKS_PER_SM = 32
# Tiled kernels: threads per block at most (__launch_bounds__ in uplab_scalar.cuh), default block
# (a warp along x, so that shared-memory reads are consecutive and stores coalesce) and channels
# staged per barrier; blocks per SM the channel split of reassemble_tiled aims for.
TILED_MAX_THREADS = 256
TILED_BLOCK = (32, 8)
TILED_STAGE_CHANNELS = 16
TILED_BLOCKS_PER_SM = 6
# Halo staging of the tiled kernels: "async" (the default: a double buffer filled with cp.async,
# kernels built with ASYNC_STAGING_OPTION; helpers and rationale in kernels/uplab_scalar.cuh) or
# "sync" (plain loads into a float tile, the first tiled build). Measured on an H100 at
# 16x256x128x128 (docs/benchmarks.md): carafe's forward 1.87 -> 0.70 ms (fp32) and 1.75 -> 0.76 ms
# (bf16), bit for bit the same outputs. Read at each launch, so a benchmark may switch it for
# whole ops (scripts/bench_gpu.py).
STAGINGS = ("sync", "async")
TILED_STAGING = "async"
ASYNC_STAGING_OPTION = "-DTILED_ASYNC_STAGING=1"


def kernel_dir() -> Path:
    """Folder holding the ``.cu`` files: ``uplab/_kernels`` in a wheel, ``<repo>/kernels`` in a
    source checkout."""
    packaged = resources.files("uplab") / "_kernels"
    if packaged.is_dir():
        return Path(str(packaged))
    source_tree = Path(__file__).resolve().parents[3] / "kernels"
    if source_tree.is_dir():
        return source_tree
    raise FileNotFoundError(
        f"uplab's CUDA sources are missing: looked for {packaged} and {source_tree}"
    )


def kernel_source(file: str) -> str:
    """The file's source with the shared header inlined, so NVRTC needs no include path and
    CuPy's compile cache sees every byte that is compiled."""
    folder = kernel_dir()
    header = (folder / HEADER).read_text()
    return (folder / file).read_text().replace(f'#include "{HEADER}"', header)


def name_expressions(file: str, scalar: str) -> tuple[str, ...]:
    """The template instantiations of ``file`` for one storage type, e.g. ``reassemble<float>``
    and ``reassemble_tiled<float, 5>``."""
    expressions = []
    for kernel in KERNEL_FILES[file]:
        if kernel in MMA_KERNELS:
            if scalar in MMA_SCALARS:
                expressions.extend(tiled_name(kernel, scalar, k) for k in MMA_KERNEL_SIZES)
        elif kernel not in TILED_KERNELS:
            expressions.append(f"{kernel}<{scalar}>")
        elif scalar in TILED_SCALARS:
            expressions.extend(tiled_name(kernel, scalar, k) for k in TILED_KERNEL_SIZES)
    return tuple(expressions)


def tiled_name(kernel: str, scalar: str, kernel_size: int) -> str:
    return f"{kernel}<{scalar}, {kernel_size}>"


def tiled_applies(dtype: torch.dtype, kernel_size: int, scale: int) -> bool:
    """Whether the tiled kernels take these arguments (else the generic ones run)."""
    return (
        SCALAR_TYPES.get(dtype) in TILED_SCALARS
        and kernel_size in TILED_KERNEL_SIZES
        and scale % 2 == 0
    )


def build_options(staging: str) -> tuple[str, ...]:
    """NVRTC options of a kernel file built for this halo staging of its tiled kernels."""
    if staging not in STAGINGS:
        raise ValueError(f"staging must be one of {STAGINGS}, got {staging!r}")
    return NVRTC_OPTIONS + ((ASYNC_STAGING_OPTION,) if staging == "async" else ())


def mma_applies(dtype: torch.dtype, kernel_size: int, scale: int) -> bool:
    """Whether the tensor-core forward (``reassemble_mma``) takes these arguments."""
    return (
        SCALAR_TYPES.get(dtype) in MMA_SCALARS
        and kernel_size in MMA_KERNEL_SIZES
        and scale == MMA_SCALE
    )


def scalar_type(dtype: torch.dtype) -> str:
    if dtype not in SCALAR_TYPES:
        raise ValueError(
            f"the CUDA kernels take {sorted(str(d) for d in SCALAR_TYPES)}, got {dtype}"
        )
    return SCALAR_TYPES[dtype]


@dataclass(frozen=True)
class LaunchConfig:
    """Grid and block shape, dynamic shared memory in bytes, and the per-block work split
    (channels per block, or window offsets per block for the generic :func:`window_dot`)."""

    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_mem: int
    per_block: int
    stage: int = 0  # channels staged in shared memory per barrier (tiled kernels)
    strip_tiles: int = 1  # tiles a block computes down a column (reassemble_mma's strip builds)


def _check_batch_groups(batch: int, groups: int) -> None:
    if batch * groups > MAX_GRID_YZ:
        raise ValueError(
            f"the CUDA kernels take batch * groups <= {MAX_GRID_YZ}, got {batch} * {groups}; "
            "split the batch or use backend='torch'"
        )


def _quad_tiles(out_h: int, out_w: int, block: tuple[int, int]) -> int:
    return math.ceil(out_w / (2 * block[0])) * math.ceil(out_h / (2 * block[1]))


def _split(total: int, parts_wanted: int, multiple: int) -> int:
    """Items per part when ``total`` is split into about ``parts_wanted`` parts, rounded up to a
    multiple of ``multiple`` (the per-thread register chunk)."""
    parts = max(1, min(parts_wanted, math.ceil(total / multiple)))
    return math.ceil(math.ceil(total / parts) / multiple) * multiple


def reassemble_config(
    batch: int,
    channels: int,
    height: int,
    width: int,
    kernel_size: int,
    scale: int,
    groups: int,
    acc_bytes: int,
    n_sm: int,
) -> LaunchConfig:
    """Launch of ``reassemble``: 2x2 output quads per thread, the block's K*K masks in shared
    memory (the largest block whose masks fit), channels split over grid.y until the GPU is full."""
    _check_batch_groups(batch, groups)
    kk = kernel_size**2
    for block in ((16, 4), (16, 2), (8, 2), (8, 1), (4, 1), (2, 1), (1, 1)):
        shared_mem = kk * 4 * block[0] * block[1] * acc_bytes
        if shared_mem <= SHARED_MEMORY_LIMIT:
            break
    else:
        raise ValueError(
            f"kernel_size={kernel_size} is too large for the CUDA carafe kernel (its masks need "
            f"{shared_mem} bytes of shared memory per block, at most {SHARED_MEMORY_LIMIT}); "
            "use backend='torch'"
        )
    tiles = _quad_tiles(height * scale, width * scale, block)
    wanted = BLOCKS_PER_SM * n_sm // (tiles * batch * groups)
    per_block = _split(channels // groups, wanted, REASSEMBLE_CHANNELS)
    chunks = math.ceil(channels // groups / per_block)
    return LaunchConfig((tiles, chunks, batch * groups), (*block, 1), shared_mem, per_block)


def reassemble_transpose_config(
    batch: int, channels: int, height: int, width: int, groups: int, n_sm: int
) -> LaunchConfig:
    """Launch of ``reassemble_transpose``: one low-resolution point per thread, 32 x 4 blocks."""
    _check_batch_groups(batch, groups)
    block = (32, 4)
    tiles = math.ceil(width / block[0]) * math.ceil(height / block[1])
    wanted = BLOCKS_PER_SM // 2 * n_sm // (tiles * batch * groups)
    per_block = _split(channels // groups, wanted, TRANSPOSE_CHANNELS)
    chunks = math.ceil(channels // groups / per_block)
    return LaunchConfig((tiles, chunks, batch * groups), (*block, 1), 0, per_block)


def window_dot_config(
    batch: int,
    height: int,
    width: int,
    kernel_size: int,
    scale: int,
    groups: int,
    acc_bytes: int,
    n_sm: int,
) -> LaunchConfig:
    """Launch of ``window_dot``: 2x2 output quads per thread, window offsets split over grid.y
    both to bound the shared-memory running sums and to fill the GPU on small images."""
    _check_batch_groups(batch, groups)
    block = (16, 4)
    threads = block[0] * block[1]
    kk = kernel_size**2
    tiles = _quad_tiles(height * scale, width * scale, block)
    wanted = BLOCKS_PER_SM * n_sm // (tiles * batch * groups)
    fit = SHARED_MEMORY_LIMIT // (4 * threads * acc_bytes)
    per_block = min(_split(kk, wanted, 1), fit)
    chunks = math.ceil(kk / per_block)
    shared_mem = per_block * 4 * threads * acc_bytes
    return LaunchConfig((tiles, chunks, batch * groups), (*block, 1), shared_mem, per_block)


def tiled_quad_rows(kernel_size: int) -> int:
    """Output rows per thread of the tiled kernels (TILED_QUAD_ROWS in uplab_scalar.cuh)."""
    return 2 if kernel_size <= 5 else 1


def _halo_extent(tile: int, scale: int, radius: int) -> int:
    return (tile - 1) // scale + 2 + 2 * radius


def tiled_config(
    batch: int,
    channels: int,
    height: int,
    width: int,
    kernel_size: int,
    scale: int,
    groups: int,
    n_sm: int,
    block: tuple[int, int] = TILED_BLOCK,
    stage_channels: int = TILED_STAGE_CHANNELS,
    split_channels: bool = True,
    staging: str | None = None,
    itemsize: int = 4,
) -> LaunchConfig:
    """Launch of ``reassemble_tiled`` / ``window_dot_tiled``: one thread per 2x2 output quad
    (2x1 for K=7), the block's low-resolution tile plus halo staged in shared memory for
    ``stage`` channels at a time. ``split_channels`` (reassemble only; window_dot sums over the
    channels inside a block) spreads a group's channels over grid.y when the tiles alone leave the
    GPU short of blocks. ``staging`` is the build's halo staging (default :data:`TILED_STAGING`):
    "sync" stages float tiles, "async" two buffers of the storage type (``itemsize`` bytes an
    element); ``stage`` shrinks until the block's shared memory fits :data:`SHARED_MEMORY_LIMIT`."""
    staging = staging or TILED_STAGING
    _check_batch_groups(batch, groups)
    if block[0] * block[1] > TILED_MAX_THREADS:
        raise ValueError(f"tiled kernels take at most {TILED_MAX_THREADS} threads, got {block}")
    if staging not in STAGINGS:
        raise ValueError(f"staging must be one of {STAGINGS}, got {staging!r}")
    radius = (kernel_size - 1) // 2
    tile_w, tile_h = 2 * block[0], tiled_quad_rows(kernel_size) * block[1]
    halo_px = _halo_extent(tile_w, scale, radius) * _halo_extent(tile_h, scale, radius)
    if staging == "async":
        channel_bytes = tiled_async_shared_mem(kernel_size, scale, block, 1, itemsize)
    else:
        channel_bytes = 4 * halo_px
    group_channels = channels // groups
    stage = max(1, min(stage_channels, group_channels, SHARED_MEMORY_LIMIT // channel_bytes))
    tiles = math.ceil(width * scale / tile_w) * math.ceil(height * scale / tile_h)
    per_block, chunks = group_channels, 1
    if split_channels:
        wanted = math.ceil(TILED_BLOCKS_PER_SM * n_sm / (tiles * batch * groups))
        per_block = _split(group_channels, wanted, stage)
        chunks = math.ceil(group_channels / per_block)
    return LaunchConfig(
        (tiles, chunks, batch * groups), (*block, 1), stage * channel_bytes, per_block, stage
    )


def tiled_async_shared_mem(
    kernel_size: int, scale: int, block: tuple[int, int], stage_channels: int, itemsize: int
) -> int:
    """Dynamic shared memory of ``reassemble_tiled`` or ``window_dot_tiled`` built with
    :data:`ASYNC_STAGING_OPTION`: two buffers of ``stage_channels`` halo tiles in the storage type,
    each row padded to whole 16-byte copies after a start shift of less than one copy
    (``async_row_stride`` in kernels/uplab_scalar.cuh)."""
    radius = (kernel_size - 1) // 2
    halo_w = _halo_extent(2 * block[0], scale, radius)
    halo_h = _halo_extent(tiled_quad_rows(kernel_size) * block[1], scale, radius)
    per_copy = 16 // itemsize
    row_stride = math.ceil((halo_w + per_copy - 1) / per_copy) * per_copy
    return 2 * stage_channels * halo_h * row_stride * itemsize


@dataclass(frozen=True)
class MmaVariant:
    """Compile-time shape of ``reassemble_mma`` (MMA_STAGES, MMA_SLABS, MMA_WARPS_X, MMA_WARPS_Y,
    MMA_STRIP in carafe_mma.cu, whose defaults are this class's): ``stages`` cp.async buffers (2 to
    4), each of ``slabs`` 16-channel slabs (1 or 2) staged under one barrier, and a tile of
    ``warps_y`` parent rows of ``8 * warps_x`` parents, one warp per 8 (32 x 4 parents and 16 warps
    by default, the fastest tile on an H100, docs/benchmarks.md; 8 x 8 takes 8 warps, 16 x 8 16).
    With ``strip`` a block computes :func:`mma_strip_tiles` tiles down a column and carries each
    tile's bottom halo rows over to the next in shared memory, instead of reading them from global
    memory again."""

    stages: int = 3
    slabs: int = 1
    warps_x: int = 4
    warps_y: int = 4
    strip: bool = False

    def options(self) -> tuple[str, ...]:
        return NVRTC_OPTIONS + (
            f"-DMMA_STAGES={self.stages}",
            f"-DMMA_SLABS={self.slabs}",
            f"-DMMA_WARPS_X={self.warps_x}",
            f"-DMMA_WARPS_Y={self.warps_y}",
            *(("-DMMA_STRIP=1",) if self.strip else ()),
        )

    @property
    def tile(self) -> tuple[int, int]:
        """Parents of a block's tile, (width, height)."""
        return MMA_PARENTS_X * self.warps_x, self.warps_y

    @property
    def threads(self) -> int:
        """Threads of a block, one warp per 8 parents of the tile."""
        return 32 * self.warps_x * self.warps_y


# Read at each launch, so a benchmark may switch it (scripts/bench_mma_variants.py).
MMA_VARIANT = MmaVariant()
# Threads of reassemble_mma an SM holds (its registers: about 120 a thread, 2 blocks of 256).
MMA_BLOCK_THREADS_PER_SM = 512


def mma_row_stride(kernel_size: int, variant: MmaVariant | None = None) -> int:
    """Elements per staged feature row of ``reassemble_mma`` (MMA_ROW_STRIDE in carafe_mma.cu):
    the tile's halo, one element of start shift and one of a pair's overhang; the width that makes
    its 32-bit A-fragment loads free of bank conflicts, with :func:`mma_chunk_plane` (checked for
    every tile the variant benchmark times)."""
    variant = variant or MMA_VARIANT
    return variant.tile[0] + kernel_size + 1


def mma_chunk_plane(kernel_size: int, variant: MmaVariant | None = None) -> int:
    """Elements per staged channel of ``reassemble_mma`` (MMA_CHUNK_PLANE in carafe_mma.cu): the
    halo rows of :func:`mma_row_stride` elements, padded to a size in 4-byte words of 4 past a
    multiple of 8, so that the 8 channels of an A-fragment load start 4 banks apart."""
    variant = variant or MMA_VARIANT
    words = (variant.warps_y + kernel_size - 1) * mma_row_stride(kernel_size, variant) // 2
    return 2 * (words + (12 - words % 8) % 8)


def mma_shared_mem(
    kernel_size: int,
    itemsize: int,
    variant: MmaVariant | None = None,
    channels_per_block: int = MMA_CHANNELS,
) -> int:
    """Dynamic shared memory of ``reassemble_mma``: the variant's buffers of MMA_CHANNELS staged
    channels per slab, :func:`mma_chunk_plane` elements each, and for a strip build the carry of
    :func:`mma_carry_plane` elements per channel of the block."""
    variant = variant or MMA_VARIANT
    plane = mma_chunk_plane(kernel_size, variant)
    buffers = variant.stages * variant.slabs * MMA_CHANNELS * plane * itemsize
    if not variant.strip:
        return buffers
    return buffers + channels_per_block * mma_carry_plane(kernel_size, variant) * itemsize


def mma_carry_plane(kernel_size: int, variant: MmaVariant | None = None) -> int:
    """Elements per channel of a strip build's carry (kCarryPlane in carafe_mma.cu): the 2R halo
    rows of :func:`mma_row_stride` elements that a tile hands to the next one down its strip."""
    return (kernel_size - 1) * mma_row_stride(kernel_size, variant)


def mma_strip_tiles(
    tiles_x: int,
    tiles_y: int,
    stacks: int,
    channels_per_block: int,
    kernel_size: int,
    n_sm: int,
    variant: MmaVariant | None = None,
) -> int:
    """Tiles per block down a column for a strip build (1 otherwise): the strip length that
    minimises a model of the kernel's time, rounds of resident blocks (``stacks`` blocks per tile,
    batch x groups x channel splits, MMA_BLOCK_THREADS_PER_SM threads an SM) times one block's
    L2 sectors per channel: per tile its outputs and its share of the masks, per staged halo row
    about its bytes plus one sector (a row seldom starts on a sector boundary), bfloat16. A strip
    of S tiles stages S * tile rows + 2R halo rows instead of S * (tile rows + 2R); a long strip
    leaves few blocks, and a last round that fills few SMs, which the rounds count."""
    variant = variant or MMA_VARIANT
    if not variant.strip:
        return 1
    tile_w, tile_h = variant.tile
    radius = (kernel_size - 1) // 2
    outputs = 4 * tile_w * tile_h * 2 / 32  # sectors of a tile's outputs, per channel
    masks = kernel_size**2 * outputs / channels_per_block
    row = math.ceil((tile_w + 2 * radius) * 2 / 32) + 1
    slots = max(1, MMA_BLOCK_THREADS_PER_SM // variant.threads) * n_sm

    def time(strip: int) -> float:
        blocks = tiles_x * math.ceil(tiles_y / strip) * stacks
        return math.ceil(blocks / slots) * (
            strip * (outputs + masks) + (strip * tile_h + 2 * radius) * row
        )

    return min(range(1, tiles_y + 1), key=time)


def mma_variant_fits(variant: MmaVariant, itemsize: int = 2) -> bool:
    """Whether ``variant``'s shared memory stays within :data:`SHARED_MEMORY_LIMIT` for every
    kernel size the tensor-core forward takes."""
    return all(
        mma_shared_mem(k, itemsize, variant) <= SHARED_MEMORY_LIMIT for k in MMA_KERNEL_SIZES
    )


def mma_config(
    batch: int,
    channels: int,
    height: int,
    width: int,
    kernel_size: int,
    groups: int,
    n_sm: int,
    itemsize: int,
    variant: MmaVariant | None = None,
    shared_limit: int = SHARED_MEMORY_LIMIT,
) -> LaunchConfig:
    """Launch of ``reassemble_mma`` (``variant``, default :data:`MMA_VARIANT`): one block of
    ``warps_x * warps_y`` warps per tile of ``variant.tile`` parents, a group's channels split over
    grid.y in multiples of MMA_CHANNELS until the GPU has TILED_BLOCKS_PER_SM blocks per SM. A
    strip build's blocks take a strip of :func:`mma_strip_tiles` tiles each, and as many channels
    as their carry leaves room for in ``shared_limit`` bytes (:func:`mma_shared_limit`: the
    device's opt-in shared memory where it has more than the default 48 KiB)."""
    variant = variant or MMA_VARIANT
    _check_batch_groups(batch, groups)
    shared_mem = mma_shared_mem(kernel_size, itemsize, variant, channels_per_block=0)
    if shared_mem > SHARED_MEMORY_LIMIT:
        raise ValueError(
            f"{variant} needs {shared_mem} bytes of shared memory at K={kernel_size}, more than "
            f"the {SHARED_MEMORY_LIMIT} a block may use without opting in"
        )
    tile_w, tile_h = variant.tile
    tiles_x, tiles_y = math.ceil(width / tile_w), math.ceil(height / tile_h)
    group_channels = channels // groups
    parts = math.ceil(TILED_BLOCKS_PER_SM * n_sm / (tiles_x * tiles_y * batch * groups))
    if variant.strip:  # the carry holds every channel of the block
        carry = mma_carry_plane(kernel_size, variant) * itemsize
        room = (max(shared_limit, SHARED_MEMORY_LIMIT) - shared_mem) // carry
        room = room // MMA_CHANNELS * MMA_CHANNELS
        if room < MMA_CHANNELS:
            raise ValueError(
                f"{variant} leaves room for the carry of {room} channels at K={kernel_size} in "
                f"the {shared_limit} bytes of shared memory a block may use; it needs "
                f"{MMA_CHANNELS}"
            )
        parts = max(parts, math.ceil(group_channels / room))
    per_block = _split(group_channels, parts, MMA_CHANNELS)
    shared_mem = mma_shared_mem(kernel_size, itemsize, variant, per_block)
    chunks = math.ceil(group_channels / per_block)
    strip = 1
    if variant.strip:
        stacks = chunks * batch * groups
        strip = mma_strip_tiles(tiles_x, tiles_y, stacks, per_block, kernel_size, n_sm, variant)
    return LaunchConfig(
        (tiles_x * math.ceil(tiles_y / strip), chunks, batch * groups),
        (variant.threads, 1, 1),
        shared_mem,
        per_block,
        strip_tiles=strip,
    )


def _acc_bytes(dtype: torch.dtype) -> int:
    return 8 if dtype == torch.float64 else 4


@functools.cache
def _multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


@functools.cache
def _shared_memory(device_index: int) -> tuple[int, int]:
    """Opt-in shared memory of one block and an SM's shared memory, in bytes."""
    properties = torch.cuda.get_device_properties(device_index)
    return properties.shared_memory_per_block_optin, properties.shared_memory_per_multiprocessor


def mma_shared_limit(device_index: int, variant: MmaVariant | None = None) -> int:
    """Shared memory a block of ``variant`` may take on this device: the default 48 KiB, or for a
    strip build (whose carry grows with the block's channels) what the device lets a block opt in
    to, as long as the MMA_BLOCK_THREADS_PER_SM threads an SM holds still fit (1 KiB of each
    block is the system's)."""
    variant = variant or MMA_VARIANT
    if not variant.strip:
        return SHARED_MEMORY_LIMIT
    per_block, per_sm = _shared_memory(device_index)
    blocks = max(1, MMA_BLOCK_THREADS_PER_SM // variant.threads)
    return max(SHARED_MEMORY_LIMIT, min(per_block, per_sm // blocks - 1024))


def mma_device_config(
    features: torch.Tensor, kernel_size: int, groups: int, variant: MmaVariant | None = None
) -> LaunchConfig:
    """:func:`mma_config` for ``features`` on their device: its multiprocessors, and the shared
    memory a block of ``variant`` (default :data:`MMA_VARIANT`) may take there."""
    variant = variant or MMA_VARIANT
    index = features.device.index
    b, c, h, w = features.shape
    return mma_config(
        *(b, c, h, w, kernel_size, groups, _multiprocessors(index), features.element_size()),
        variant,
        shared_limit=mma_shared_limit(index, variant),
    )


# id of a compiled kernel (cached for the process) -> the dynamic shared memory it was opted in to
_OPTED_IN: dict[int, int] = {}


def _opt_in(function, shared_mem: int) -> None:
    """Let ``function`` take ``shared_mem`` bytes of dynamic shared memory: past 48 KiB the driver
    refuses a launch that did not opt in. Once per kernel and larger size; under its device."""
    if shared_mem <= max(SHARED_MEMORY_LIMIT, _OPTED_IN.get(id(function), 0)):
        return
    function.max_dynamic_shared_size_bytes = shared_mem
    _OPTED_IN[id(function)] = shared_mem


@functools.cache
def _compiled(
    file: str, scalar: str, device_index: int, options: tuple[str, ...] = NVRTC_OPTIONS
) -> dict:
    """Compile ``file`` for one storage type on one device with these NVRTC ``options``; kernels
    by name. Memoized."""
    import cupy

    expressions = name_expressions(file, scalar)
    with cupy.cuda.Device(device_index):
        module = cupy.RawModule(
            code=kernel_source(file), options=options, name_expressions=expressions
        )
        return {e: module.get_function(e) for e in expressions}


def _launch(
    kernel: str,
    file: str,
    config: LaunchConfig,
    tensors,
    ints,
    kernel_size: int | None = None,
    options: tuple[str, ...] = NVRTC_OPTIONS,
) -> None:
    """Launch ``kernel`` (``<scalar>``, or ``<scalar, kernel_size>`` for a tiled kernel) of
    ``file`` built with ``options`` on PyTorch's current stream under the first tensor's device.
    ``tensors`` are the kernel's pointer arguments (inputs, then the output), ``ints`` its int
    arguments, in the kernel's order."""
    import cupy
    import numpy as np

    device = tensors[0].device
    scalar = scalar_type(tensors[0].dtype)
    name = f"{kernel}<{scalar}>" if kernel_size is None else tiled_name(kernel, scalar, kernel_size)
    function = _compiled(file, scalar, device.index, options)[name]
    args = tuple(np.uint64(t.data_ptr()) for t in tensors) + tuple(np.int32(i) for i in ints)
    stream = _cupy_stream(device.index, torch.cuda.current_stream(device).cuda_stream)
    with cupy.cuda.Device(device.index):
        _opt_in(function, config.shared_mem)
        function(config.grid, config.block, args, shared_mem=config.shared_mem, stream=stream)


@functools.lru_cache(maxsize=64)
def _cupy_stream(device_index: int, handle: int):
    """CuPy's view of PyTorch's stream ``handle`` on ``device_index``, one per stream.

    ``ExternalStream`` although CuPy 14 deprecates it: its replacement ``Stream.from_external``
    returns a ``Stream``, whose ``__del__`` destroys the handle it wraps (``cupy/cuda/stream.pyx``),
    here PyTorch's stream. ``ExternalStream`` never owns the handle, so caching it is safe even
    after PyTorch reuses the handle. Its deprecation warning is silenced: the choice is deliberate,
    and the warning came once per launch."""
    import warnings

    import cupy

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return cupy.cuda.ExternalStream(handle, device_index)


@functools.cache
def _compute_capability(device_index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device_index)


def _has_mma_sync(tensor: torch.Tensor) -> bool:
    """Whether ``tensor``'s device runs mma.sync on 16-bit floats (sm_80+); CPU tensors reach the
    kernels only under the test suite's emulation, which has it."""
    return not tensor.is_cuda or _compute_capability(tensor.device.index) >= (8, 0)


def _choose_path(
    path: str, dtype: torch.dtype, kernel_size: int, scale: int, mma: bool = False
) -> str:
    """The kernel family for ``path``; ``mma``: whether the caller has a tensor-core kernel."""
    paths = ("auto", "generic", "tiled", "mma") if mma else ("auto", "generic", "tiled")
    if path not in paths:
        raise ValueError(f"path must be one of {paths}, got {path!r}")
    if path == "mma" and not mma_applies(dtype, kernel_size, scale):
        raise ValueError(
            f"the tensor-core kernel takes dtype in {MMA_SCALARS}, kernel_size in "
            f"{MMA_KERNEL_SIZES} and scale {MMA_SCALE}, got {dtype}, {kernel_size}, {scale}"
        )
    fits = tiled_applies(dtype, kernel_size, scale)
    if path == "tiled" and not fits:
        raise ValueError(
            f"the tiled kernels take dtype in {TILED_SCALARS}, kernel_size in "
            f"{TILED_KERNEL_SIZES} and an even scale, got {dtype}, {kernel_size}, {scale}"
        )
    if path != "auto":
        return path
    if mma and TILED_MMA and mma_applies(dtype, kernel_size, scale):
        return "mma"
    return "tiled" if fits else "generic"


def reassemble(
    features: torch.Tensor,
    masks: torch.Tensor,
    kernel_size: int,
    scale: int,
    groups: int,
    *,
    path: str = "auto",
    block: tuple[int, int] = TILED_BLOCK,
    stage_channels: int = TILED_STAGE_CHANNELS,
    staging: str | None = None,
    split_channels: bool = True,
) -> torch.Tensor:
    """``out[b,c,Y,X] = sum_k masks[b,g*K*K+k,Y,X] * features[b,c,Y//s-r+ky,X//s-r+kx]``.

    ``path`` picks the kernel (``"auto"``: the tensor-core one where :data:`TILED_MMA` and
    :func:`mma_applies`, else the tiled one where :func:`tiled_applies`); ``block``,
    ``stage_channels``, ``staging`` (default :data:`TILED_STAGING`) and ``split_channels`` shape
    the tiled launch (see :func:`tiled_config`; for benchmarks and tests)."""
    staging = staging or TILED_STAGING
    b, c, h, w = features.shape
    out = features.new_empty(b, c, h * scale, w * scale)
    if out.numel() == 0:
        return out
    n_sm = _multiprocessors(features.device.index)
    chosen = _choose_path(path, features.dtype, kernel_size, scale, mma=True)
    if chosen == "mma" and not _has_mma_sync(features):
        if path == "mma":
            raise ValueError("the tensor-core kernel (path='mma') needs compute capability 8.0+")
        chosen = _choose_path("auto", features.dtype, kernel_size, scale)
    if chosen == "mma":
        config = mma_device_config(features, kernel_size, groups)
        _launch(
            "reassemble_mma",
            "carafe_mma.cu",
            config,
            (features, masks, out),
            (c, h, w, groups, config.per_block, config.strip_tiles),
            kernel_size,
            MMA_VARIANT.options(),
        )
        return out
    if chosen == "tiled":
        config = tiled_config(
            *(b, c, h, w, kernel_size, scale, groups, n_sm, block, stage_channels),
            split_channels=split_channels,
            staging=staging,
            itemsize=features.element_size(),
        )
        _launch(
            "reassemble_tiled",
            "carafe.cu",
            config,
            (features, masks, out),
            (c, h, w, scale, groups, config.per_block, config.stage),
            kernel_size,
            build_options(staging),
        )
        return out
    config = reassemble_config(
        b, c, h, w, kernel_size, scale, groups, _acc_bytes(features.dtype), n_sm
    )
    _launch(
        "reassemble",
        "carafe.cu",
        config,
        (features, masks, out),
        (c, h, w, kernel_size, scale, groups, config.per_block),
    )
    return out


def reassemble_transpose(
    grad_out: torch.Tensor, masks: torch.Tensor, kernel_size: int, scale: int, groups: int
) -> torch.Tensor:
    """The adjoint of :func:`reassemble` in its features: ``[B, C, sH, sW] -> [B, C, H, W]``."""
    b, c, out_h, out_w = grad_out.shape
    h, w = out_h // scale, out_w // scale
    grad_features = grad_out.new_empty(b, c, h, w)
    if grad_features.numel() == 0:
        return grad_features
    config = reassemble_transpose_config(
        b, c, h, w, groups, _multiprocessors(grad_out.device.index)
    )
    _launch(
        "reassemble_transpose",
        "carafe.cu",
        config,
        (grad_out, masks, grad_features),
        (c, h, w, kernel_size, scale, groups, config.per_block),
    )
    return grad_features


def window_dot(
    query: torch.Tensor,
    key: torch.Tensor,
    kernel_size: int,
    scale: int,
    groups: int,
    *,
    path: str = "auto",
    block: tuple[int, int] = TILED_BLOCK,
    stage_channels: int = TILED_STAGE_CHANNELS,
    staging: str | None = None,
) -> torch.Tensor:
    """``out[b,g*K*K+k,Y,X] = sum_{c in g} query[b,c,Y,X] * key[b,c,Y//s-r+ky,X//s-r+kx]``.

    ``path`` picks the kernel (``"auto"``: the tiled one where :func:`tiled_applies` and its grid
    fills the GPU, since it cannot split the channel sum over blocks); ``block``,
    ``stage_channels`` and ``staging`` (default :data:`TILED_STAGING`) shape the tiled launch (see
    :func:`tiled_config`; for benchmarks and tests)."""
    staging = staging or TILED_STAGING
    b, c, h, w = key.shape
    out = query.new_empty(b, groups * kernel_size**2, h * scale, w * scale)
    if out.numel() == 0:
        return out
    n_sm = _multiprocessors(query.device.index)
    chosen = _choose_path(path, query.dtype, kernel_size, scale)
    if chosen == "tiled":
        config = tiled_config(
            b,
            c,
            h,
            w,
            kernel_size,
            scale,
            groups,
            n_sm,
            block,
            stage_channels,
            split_channels=False,
            staging=staging,
            itemsize=key.element_size(),
        )
        if path == "tiled" or config.grid[0] * config.grid[2] >= n_sm:
            _launch(
                "window_dot_tiled",
                "local_similarity.cu",
                config,
                (query, key, out),
                (c, h, w, scale, groups, config.stage),
                kernel_size,
                build_options(staging),
            )
            return out
    config = window_dot_config(b, h, w, kernel_size, scale, groups, _acc_bytes(query.dtype), n_sm)
    _launch(
        "window_dot",
        "local_similarity.cu",
        config,
        (query, key, out),
        (c, h, w, kernel_size, scale, groups, config.per_block),
    )
    return out
