"""The kernel variants: which arguments each kernel family takes, how each build is configured
(NVRTC options, halo staging, the tensor-core tile), and which of them the launchers take.

Three families serve ``reassemble`` and ``window_dot`` (see :mod:`uplab.ops.cuda.launchers`): the
generic kernels (any K and scale, every dtype), the tiled ones (``*_tiled<T, K>``: K in
:data:`TILED_KERNEL_SIZES`, even scales, 32- and 16-bit floats; :func:`tiled_applies`) and, for
``reassemble``, the tensor-core one (``reassemble_mma<T, K>``: :func:`mma_applies`).

:data:`TILED_STAGING`, :data:`TILED_MMA` and :data:`MMA_VARIANT` are read at each launch (as
attributes of this module), so a benchmark or a test may switch them for whole ops.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SCALAR_TYPES = {
    torch.float32: "float",
    torch.float64: "double",
    torch.float16: "half_t",
    torch.bfloat16: "bfloat16_t",
}
NVRTC_OPTIONS = ("--std=c++17",)
# Kernel sizes the tiled kernels are specialised for (template argument K), and the storage types
# they take (float64 would need twice the registers for its per-pixel operands).
TILED_KERNEL_SIZES = (3, 5, 7)
TILED_SCALARS = ("float", "half_t", "bfloat16_t")
# The tensor-core forward (kernels/carafe_mma.cu): 16-bit floats, scale 2, K*K <= 32; sm_80+.
# "auto" takes it where it applies (TILED_MMA): on an H100 at 16x256x128x128, bf16, K=5, its forward
# takes 0.364 ms (66b4ab2) against the tiled FFMA kernel's 0.802 ms (fe702ff; docs/benchmarks.md,
# "Tensor cores").
MMA_KERNEL_SIZES = (3, 5)
MMA_SCALARS = ("half_t", "bfloat16_t")
MMA_SCALE = 2
MMA_PARENTS_X, MMA_CHANNELS = 8, 16  # as .cu
TILED_MMA = True
# Halo staging of the tiled kernels: "async" (the default: a double buffer filled with cp.async,
# kernels built with ASYNC_STAGING_OPTION; helpers and rationale in kernels/uplab_scalar.cuh) or
# "sync" (plain loads into a float tile). Measured on an H100 at
# 16x256x128x128 (docs/benchmarks.md): carafe's forward 1.87 -> 0.70 ms (fp32) and 1.75 -> 0.76 ms
# (bf16), bit for bit the same outputs. Read at each launch, so a benchmark may switch it for
# whole ops (benchmarks/bench_gpu.py).
STAGINGS = ("sync", "async")
TILED_STAGING = "async"
ASYNC_STAGING_OPTION = "-DTILED_ASYNC_STAGING=1"


def scalar_type(dtype: torch.dtype) -> str:
    if dtype not in SCALAR_TYPES:
        raise ValueError(
            f"the CUDA kernels take {sorted(str(d) for d in SCALAR_TYPES)}, got {dtype}"
        )
    return SCALAR_TYPES[dtype]


def tiled_applies(dtype: torch.dtype, kernel_size: int, scale: int) -> bool:
    """Whether the tiled kernels take these arguments (else the generic ones run)."""
    return (
        SCALAR_TYPES.get(dtype) in TILED_SCALARS
        and kernel_size in TILED_KERNEL_SIZES
        and scale % 2 == 0
    )


def mma_applies(dtype: torch.dtype, kernel_size: int, scale: int) -> bool:
    """Whether the tensor-core forward (``reassemble_mma``) takes these arguments."""
    return (
        SCALAR_TYPES.get(dtype) in MMA_SCALARS
        and kernel_size in MMA_KERNEL_SIZES
        and scale == MMA_SCALE
    )


def build_options(staging: str) -> tuple[str, ...]:
    """NVRTC options of a kernel file built for this halo staging of its tiled kernels."""
    if staging not in STAGINGS:
        raise ValueError(f"staging must be one of {STAGINGS}, got {staging!r}")
    return NVRTC_OPTIONS + ((ASYNC_STAGING_OPTION,) if staging == "async" else ())


@dataclass(frozen=True)
class MmaVariant:
    """Compile-time shape of ``reassemble_mma`` (MMA_STAGES, MMA_SLABS, MMA_WARPS_X, MMA_WARPS_Y,
    MMA_STRIP in carafe_mma.cu, whose defaults are this class's): ``stages`` cp.async buffers (2 to
    4), each of ``slabs`` 16-channel slabs (1 or 2) staged under one barrier, and a tile of
    ``warps_y`` parent rows of ``8 * warps_x`` parents, one warp per 8 (32 x 4 parents and 16 warps
    by default, the fastest tile on an H100, docs/benchmarks.md; 8 x 8 takes 8 warps, 16 x 8 16).
    With ``strip`` a block computes :func:`uplab.ops.cuda.geometry.mma_strip_tiles` tiles down a
    column and carries each tile's bottom halo rows over to the next in shared memory, instead of
    reading them from global memory again."""

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


# Read at each launch, so a benchmark may switch it (benchmarks/bench_mma_variants.py).
MMA_VARIANT = MmaVariant()
