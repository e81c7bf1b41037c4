"""Row-chunked K x K windows of a low-resolution map, in channels-last layout.

Both ops are, for every low-resolution point, a small matrix product between the ``s*s``
high-resolution children of the point and the ``K*K`` window around it:
carafe is ``[s*s, K*K] @ [K*K, C]`` and local similarity is ``[s*s, C] @ [C, K*K]``. Gathering the
windows of a few rows at a time (an unfold restricted to a chunk) turns each op into batched
matrix products while bounding every temporary by the size of the input map (or one row of
windows for maps smaller than a window), instead of ``K*K`` times it as a whole unfold would.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import torch
import torch.nn.functional as F


def full_precision(method):
    """Run an autograd Function's forward/backward with autocast off: the matrix products of the
    PyTorch path accumulate in :func:`compute_dtype`, never in autocast's lower precision."""

    @functools.wraps(method)
    def wrapper(ctx, *args):
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            return method(ctx, *args)

    return wrapper


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half-precision inputs accumulate in float32, as the CUDA kernels do."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def pad_channels_last(x: torch.Tensor, radius: int, dtype: torch.dtype) -> torch.Tensor:
    """``[B, C, H, W]`` → zero-padded ``[B, H + 2r, W + 2r, C]`` (contiguous)."""
    return F.pad(x.to(dtype), (radius,) * 4).permute(0, 2, 3, 1).contiguous()


def row_chunks(height: int, width: int, channels: int, kernel_size: int) -> Iterator[tuple[int, int]]:
    """Row ranges whose windows ``[rows, W, K*K, C]`` hold no more than the map ``[H, W, C]``."""
    rows = max(1, height // (kernel_size * kernel_size))
    for start in range(0, height, rows):
        yield start, min(start + rows, height)


def gather_windows(padded: torch.Tensor, start: int, stop: int, kernel_size: int, width: int) -> torch.Tensor:
    """Windows of rows ``start:stop``: ``[B, rows, W, *group, C]`` → ``[B, rows, W, K*K, C]``.

    ``padded`` is ``[B, H + 2r, W + 2r, ...]``; extra trailing dims (channel groups) are kept and
    the window index goes just before the last dim, so a group dim stays in front of it.
    """
    rows = stop - start
    return torch.stack(
        [
            padded[:, start + ky : start + ky + rows, kx : kx + width]
            for ky in range(kernel_size)
            for kx in range(kernel_size)
        ],
        dim=-2,
    )


def scatter_windows_(grad_padded: torch.Tensor, grad_windows: torch.Tensor, start: int, kernel_size: int) -> None:
    """Adjoint of :func:`gather_windows`: add window gradients back onto the padded map."""
    rows, width = grad_windows.shape[1], grad_windows.shape[2]
    for ky in range(kernel_size):
        for kx in range(kernel_size):
            grad_padded[:, start + ky : start + ky + rows, kx : kx + width] += grad_windows[
                ..., ky * kernel_size + kx, :
            ]
