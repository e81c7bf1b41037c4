"""A2U's learned downsampling (Dai, Lu, Shen, "Learning Affinity-Aware Upsampling for Deep Image
Matting", CVPR 2021): every low-resolution point is a weighted sum of a ``k x k`` window of the
high-resolution map, with per-point, per-group weights predicted by the network.

The released op is ``bidownsample_naive`` (dongdong93/a2u_matting, ``scripts/Biupdownsample``,
``BidownsampleNaiveForward`` in ``src/cuda/bidownsample_naive_cuda_kernel.cu``); this is its
PyTorch form, which runs on any device (no CUDA kernel of its own): ``k*k`` strided slices of the
zero-padded input, accumulated, so no temporary is larger than the output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from uplab.ops._checks import check_is_tensor, check_nchw, check_same_batch_device_dtype

__all__ = ["learned_downsample", "window_start"]


def window_start(kernel_size: int) -> int:
    """Offset of the window's first row (and column) from ``s * i``, as the released kernel
    places it: ``-(k - 2) / 2`` for even ``k`` (the 6x6 window of output row ``i`` covers rows
    ``2i - 2 ... 2i + 3`` at ``s = 2``), ``-(k - 1) / 2`` for odd ``k``."""
    return -((kernel_size - 2) // 2 if kernel_size % 2 == 0 else (kernel_size - 1) // 2)


def learned_downsample(
    features: torch.Tensor,
    kernels: torch.Tensor,
    kernel_size: int,
    scale_factor: int = 2,
    group_size: int = 1,
) -> torch.Tensor:
    """``out[b, c, i, j] = sum_{y, x} kernels[b, g(c)*k*k + y*k + x, i, j] *
    features[b, c, s*i + o + y, s*j + o + x]`` with ``o = window_start(k)`` and zeros outside
    the map (the released ``bidownsample_naive``).

    Args:
        features: ``[B, C, H, W]``, ``H`` and ``W`` multiples of ``scale_factor``.
        kernels: ``[B, group_size*k*k, H/s, W/s]``, group-major (group ``g`` of channel ``c`` is
            ``c // (C / group_size)``, as the released kernel reads them); not normalised here
            (A2U softmaxes them).
        kernel_size: window size ``k`` (A2U's is ``2 * up_kernel_size = 6``).
        scale_factor: stride ``s`` of the windows.
        group_size: channel groups, each with its own kernels.

    Returns:
        ``[B, C, H/s, W/s]``.

    Example:
        >>> x = torch.arange(16.0).view(1, 1, 4, 4)
        >>> mean = torch.full((1, 36, 2, 2), 1 / 36)
        >>> learned_downsample(x, mean, 6).shape
        torch.Size([1, 1, 2, 2])
    """
    check_is_tensor("features", features)
    check_is_tensor("kernels", kernels)
    check_nchw("features", features)
    check_nchw("kernels", kernels)
    check_same_batch_device_dtype("features", features, "kernels", kernels)
    for name, value in (
        ("kernel_size", kernel_size),
        ("scale_factor", scale_factor),
        ("group_size", group_size),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"learned_downsample: {name} must be a positive int, got {value!r}")
    b, c, h, w = features.shape
    if h % scale_factor or w % scale_factor or c % group_size:
        raise ValueError(
            f"learned_downsample: expected features [B, C, H, W] with H, W multiples of "
            f"scale_factor={scale_factor} and C a multiple of group_size={group_size}, got "
            f"{tuple(features.shape)}; pad or crop the input"
        )
    ho, wo = h // scale_factor, w // scale_factor
    expected = (b, group_size * kernel_size**2, ho, wo)
    if tuple(kernels.shape) != expected:
        raise ValueError(
            f"learned_downsample: expected kernels of shape {expected} (B, group_size*k*k, H/s, "
            f"W/s) for features {tuple(features.shape)}, got {tuple(kernels.shape)}"
        )
    before = -window_start(kernel_size)
    # rows up to s*(ho-1) + k - 1 - before are read; a negative pad crops rows no window reaches
    after_h = scale_factor * (ho - 1) + kernel_size - before - h
    after_w = scale_factor * (wo - 1) + kernel_size - before - w
    padded = F.pad(features, (before, after_w, before, after_h))
    padded = padded.view(b, group_size, c // group_size, *padded.shape[-2:])
    weights = kernels.view(b, group_size, kernel_size**2, 1, ho, wo)
    out = None
    for y in range(kernel_size):
        for x in range(kernel_size):
            window = padded[
                ...,
                y : y + scale_factor * ho : scale_factor,
                x : x + scale_factor * wo : scale_factor,
            ]
            term = weights[:, :, y * kernel_size + x] * window
            out = term if out is None else out + term
    return out.reshape(b, c, ho, wo)
