"""Launch geometry of the kernels: grid, block, dynamic shared memory and the per-block work split
of each kernel family, from the tensor sizes and the device's multiprocessors.

Each ``*_config`` returns a :class:`LaunchConfig` whose grid covers every output exactly once
(``tests/ops/test_kernel_compile.py`` checks it) and whose shared memory stays within
:data:`SHARED_MEMORY_LIMIT`, or, for the tensor-core kernel's strip builds, within what the
device lets a block opt in to (:func:`mma_shared_limit`). Where a build is not given, the one
the launchers take (:data:`uplab.ops.cuda.variants.MMA_VARIANT` or ``TILED_STAGING``) is read
at each call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from uplab.ops.cuda import device_properties, variants
from uplab.ops.cuda.variants import MMA_CHANNELS, MMA_KERNEL_SIZES, STAGINGS, MmaVariant

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


@dataclass(frozen=True)
class LaunchConfig:
    """Grid and block shape, dynamic shared memory in bytes, and the per-block work split
    (channels per block, or window offsets per block for the generic
    :func:`~uplab.ops.cuda.launchers.window_dot`)."""

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
    GPU short of blocks. ``staging`` is the build's halo staging (default
    :data:`~uplab.ops.cuda.variants.TILED_STAGING`): "sync" stages float tiles, "async" two buffers
    of the storage type (``itemsize`` bytes an element); ``stage`` shrinks until the block's shared
    memory fits :data:`SHARED_MEMORY_LIMIT`."""
    staging = staging or variants.TILED_STAGING
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


# Threads of reassemble_mma an SM holds (its registers: about 120 a thread, 2 blocks of 256).
MMA_BLOCK_THREADS_PER_SM = 512


def mma_row_stride(kernel_size: int, variant: MmaVariant | None = None) -> int:
    """Elements per staged feature row of ``reassemble_mma`` (MMA_ROW_STRIDE in carafe_mma.cu):
    the tile's halo, one element of start shift and one of a pair's overhang; the width that makes
    its 32-bit A-fragment loads free of bank conflicts, with :func:`mma_chunk_plane` (checked for
    every tile the variant benchmark times)."""
    variant = variant or variants.MMA_VARIANT
    return variant.tile[0] + kernel_size + 1


def mma_chunk_plane(kernel_size: int, variant: MmaVariant | None = None) -> int:
    """Elements per staged channel of ``reassemble_mma`` (MMA_CHUNK_PLANE in carafe_mma.cu): the
    halo rows of :func:`mma_row_stride` elements, padded to a size in 4-byte words of 4 past a
    multiple of 8, so that the 8 channels of an A-fragment load start 4 banks apart."""
    variant = variant or variants.MMA_VARIANT
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
    variant = variant or variants.MMA_VARIANT
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
    variant = variant or variants.MMA_VARIANT
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
    """Launch of ``reassemble_mma`` (``variant``, default
    :data:`~uplab.ops.cuda.variants.MMA_VARIANT`): one block of ``warps_x * warps_y`` warps per
    tile of ``variant.tile`` parents, a group's channels split over grid.y in multiples of
    MMA_CHANNELS until the GPU has TILED_BLOCKS_PER_SM blocks per SM. A strip build's blocks take
    a strip of :func:`mma_strip_tiles` tiles each, and as many channels as their carry leaves room
    for in ``shared_limit`` bytes (:func:`mma_shared_limit`: the device's opt-in shared memory
    where it has more than the default 48 KiB)."""
    variant = variant or variants.MMA_VARIANT
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


def mma_shared_limit(device_index: int, variant: MmaVariant | None = None) -> int:
    """Shared memory a block of ``variant`` may take on this device: the default 48 KiB, or for a
    strip build (whose carry grows with the block's channels) what the device lets a block opt in
    to, as long as the MMA_BLOCK_THREADS_PER_SM threads an SM holds still fit (1 KiB of each
    block is the system's)."""
    variant = variant or variants.MMA_VARIANT
    if not variant.strip:
        return SHARED_MEMORY_LIMIT
    per_block, per_sm = device_properties.shared_memory(device_index)
    blocks = max(1, MMA_BLOCK_THREADS_PER_SM // variant.threads)
    return max(SHARED_MEMORY_LIMIT, min(per_block, per_sm // blocks - 1024))


def mma_device_config(
    features: torch.Tensor, kernel_size: int, groups: int, variant: MmaVariant | None = None
) -> LaunchConfig:
    """:func:`mma_config` for ``features`` on their device: its multiprocessors, and the shared
    memory a block of ``variant`` (default :data:`~uplab.ops.cuda.variants.MMA_VARIANT`) may take
    there."""
    variant = variant or variants.MMA_VARIANT
    index = features.device.index
    b, c, h, w = features.shape
    return mma_config(
        *(b, c, h, w, kernel_size, groups, device_properties.multiprocessors(index)),
        features.element_size(),
        variant,
        shared_limit=mma_shared_limit(index, variant),
    )
