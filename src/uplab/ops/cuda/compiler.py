"""Compilation of the CUDA sources in ``kernels/*.cu`` by NVRTC through CuPy, memoized.

A file is compiled once per (storage type, device, NVRTC options) with every template
instantiation it has for that type (:func:`name_expressions`); every size is a kernel argument,
so new shapes never recompile. The shared header is inlined into each source, so NVRTC needs no
include path and CuPy's on-disk compile cache sees every byte that is compiled. CuPy is imported
only when something is compiled.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

from uplab.ops.cuda import variants

KERNEL_FILES = {
    "carafe.cu": ("reassemble", "reassemble_transpose", "reassemble_tiled"),
    "carafe_mma.cu": ("reassemble_mma",),
    "local_similarity.cu": ("window_dot", "window_dot_tiled"),
}
TILED_KERNELS = ("reassemble_tiled", "window_dot_tiled")
MMA_KERNELS = ("reassemble_mma",)
HEADER = "uplab_scalar.cuh"


def kernel_dir() -> Path:
    """Folder holding the ``.cu`` files: ``uplab/_kernels`` in a wheel, ``<repo>/kernels`` in a
    source checkout."""
    packaged = resources.files("uplab") / "_kernels"
    if packaged.is_dir():
        return Path(str(packaged))
    source_tree = Path(__file__).resolve().parents[4] / "kernels"
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
            if scalar in variants.MMA_SCALARS:
                expressions.extend(tiled_name(kernel, scalar, k) for k in variants.MMA_KERNEL_SIZES)
        elif kernel not in TILED_KERNELS:
            expressions.append(f"{kernel}<{scalar}>")
        elif scalar in variants.TILED_SCALARS:
            expressions.extend(tiled_name(kernel, scalar, k) for k in variants.TILED_KERNEL_SIZES)
    return tuple(expressions)


def tiled_name(kernel: str, scalar: str, kernel_size: int) -> str:
    return f"{kernel}<{scalar}, {kernel_size}>"


@functools.cache
def compiled(
    file: str, scalar: str, device_index: int, options: tuple[str, ...] = variants.NVRTC_OPTIONS
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
