"""The launch of a compiled kernel on PyTorch's current stream: the kernel's build
(:func:`uplab.ops.cuda.compiler.compiled`), CuPy's view of the stream, the opt-in to more than
48 KiB of dynamic shared memory, and the call.

:func:`launch` is the one place a kernel runs; the CPU emulation of the kernels
(``tests/ops/test_kernels_on_cpu.py``) replaces it with a run of the emulator.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import torch

from uplab.ops.cuda import compiler, variants
from uplab.ops.cuda.geometry import SHARED_MEMORY_LIMIT

if TYPE_CHECKING:
    from uplab.ops.cuda.geometry import LaunchConfig

# id of a compiled kernel (cached for the process) -> the dynamic shared memory it was opted in to
_OPTED_IN: dict[int, int] = {}


def _opt_in(function, shared_mem: int) -> None:
    """Let ``function`` take ``shared_mem`` bytes of dynamic shared memory: past 48 KiB the driver
    refuses a launch that did not opt in. Once per kernel and larger size; under its device."""
    if shared_mem <= max(SHARED_MEMORY_LIMIT, _OPTED_IN.get(id(function), 0)):
        return
    function.max_dynamic_shared_size_bytes = shared_mem
    _OPTED_IN[id(function)] = shared_mem


def launch(
    kernel: str,
    file: str,
    config: LaunchConfig,
    tensors,
    ints,
    kernel_size: int | None = None,
    options: tuple[str, ...] = variants.NVRTC_OPTIONS,
) -> None:
    """Launch ``kernel`` (``<scalar>``, or ``<scalar, kernel_size>`` for a tiled kernel) of
    ``file`` built with ``options`` on PyTorch's current stream under the first tensor's device.
    ``tensors`` are the kernel's pointer arguments (inputs, then the output), ``ints`` its int
    arguments, in the kernel's order."""
    import cupy
    import numpy as np

    device = tensors[0].device
    scalar = variants.scalar_type(tensors[0].dtype)
    name = (
        f"{kernel}<{scalar}>"
        if kernel_size is None
        else compiler.tiled_name(kernel, scalar, kernel_size)
    )
    function = compiler.compiled(file, scalar, device.index, options)[name]
    args = tuple(np.uint64(t.data_ptr()) for t in tensors) + tuple(np.int32(i) for i in ints)
    stream = cupy_stream(device.index, torch.cuda.current_stream(device).cuda_stream)
    with cupy.cuda.Device(device.index):
        _opt_in(function, config.shared_mem)
        function(config.grid, config.block, args, shared_mem=config.shared_mem, stream=stream)


@functools.lru_cache(maxsize=64)
def cupy_stream(device_index: int, handle: int):
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
