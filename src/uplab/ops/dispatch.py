"""One place that decides which implementation of an op runs.

``backend="auto"`` takes the CUDA kernels (``kernels/*.cu`` compiled at run time by CuPy) for CUDA
tensors when CuPy can be imported, and the PyTorch path otherwise; the first fallback on a CUDA
tensor warns once, naming what is missing. ``backend="cuda"`` insists on the kernels and raises a
clear error where they cannot run; ``backend="torch"`` always takes the PyTorch path. An empty
input (a zero batch, map or channel count) takes the PyTorch path whatever the backend, as there is
nothing to launch.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings

import torch

BACKENDS = ("auto", "torch", "cuda")


@functools.cache
def cupy_status() -> str | None:
    """``None`` when CuPy is importable, else a sentence saying why not."""
    if importlib.util.find_spec("cupy") is None:
        return "CuPy is not installed (pip install 'uplab[cuda]', i.e. cupy-cuda13x)"
    try:
        import cupy  # noqa: F401
    except Exception as exc:  # a broken CuPy install fails in many ways
        return f"CuPy is installed but failed to import: {exc}"
    return None


@functools.cache
def _warn_fallback_once(reason: str) -> None:
    warnings.warn(
        f"uplab.ops: CUDA tensors are going through the PyTorch path because {reason}. "
        "It is exact but slower and uses more memory than the CUDA kernels.",
        RuntimeWarning,
        stacklevel=4,
    )


def resolve_backend(backend: str, tensor: torch.Tensor, op: str) -> str:
    """Return ``"torch"`` or ``"cuda"`` for running ``op`` on ``tensor``."""
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return "torch"
    reason = cupy_status()
    if backend == "cuda":
        if not tensor.is_cuda:
            raise ValueError(
                f"{op}: backend='cuda' needs CUDA tensors, got a tensor on {tensor.device}; "
                "move the inputs with .cuda() or use backend='auto'"
            )
        if reason is not None:
            raise RuntimeError(f"{op}: backend='cuda' cannot run because {reason}")
    elif not tensor.is_cuda:
        return "torch"
    if tensor.numel() == 0:
        return "torch"  # nothing to launch; the PyTorch path returns the empty result
    if backend == "cuda":
        return "cuda"
    if reason is not None:
        _warn_fallback_once(reason)
        return "torch"
    return "cuda"


def promote_under_autocast(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Under ``torch.autocast`` the two inputs of an op may come out of layers in different
    precisions (e.g. float16 kernels from a convolution, float32 features from a norm layer): the
    ops then promote both to the wider type, as autocast does for ``cat`` and ``stack``. Outside
    autocast a dtype mismatch is the caller's error and is reported by the shape checks."""
    if a.dtype == b.dtype or not (a.is_floating_point() and b.is_floating_point()):
        return a, b
    if not torch.is_autocast_enabled(a.device.type):
        return a, b
    common = torch.promote_types(a.dtype, b.dtype)
    return a.to(common), b.to(common)
