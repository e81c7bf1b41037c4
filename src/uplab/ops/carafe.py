"""Content-aware reassembly (CARAFE, Wang et al., ICCV 2019, Eq. 3), the kernel-application step
shared by CARAFE, FADE, SAPA and A2U.

``out[b, c, H, W] = sum_{ky, kx} masks[b, g*K*K + ky*K + kx, H, W]
                    * features[b, c, H//s - r + ky, W//s - r + kx]``

with ``r = (K - 1) // 2``, ``g = c // (C / group_size)`` and zeros outside the feature map, exactly
as ``mmcv.ops.carafe`` and the released SAPA/FADE kernels compute it.

The PyTorch path computes, for each low-resolution point, the matrix product of its children's
kernels ``[s*s, K*K]`` with its feature window ``[K*K, C]``, gathering windows a few rows at a time
(:mod:`uplab.ops._windows`): every temporary is bounded by the input's size, unlike the
unfold-and-repeat formulation (``K*K*s*s`` times the features) of the community pure-PyTorch FADE.
It measured faster than shift-and-accumulate over window offsets (docs/benchmarks.md).
"""

from __future__ import annotations

import torch
from torch.overrides import handle_torch_function, has_torch_function

from uplab.ops._checks import check_carafe_args, check_is_tensor
from uplab.ops._windows import (
    compute_dtype,
    full_precision,
    gather_windows,
    pad_channels_last,
    row_chunks,
    scatter_windows_,
)
from uplab.ops.dispatch import promote_under_autocast, resolve_backend


def carafe(
    features: torch.Tensor,
    masks: torch.Tensor,
    kernel_size: int,
    scale_factor: int,
    group_size: int = 1,
    backend: str = "auto",
) -> torch.Tensor:
    """Reassemble ``features`` with per-pixel ``masks`` (CARAFE, Eq. 3).

    Args:
        features: low-resolution features ``[B, C, H, W]``.
        masks: reassembly kernels ``[B, group_size * K * K, s*H, s*W]`` (normalised or not: this op
            only applies them).
        kernel_size: odd window size ``K`` on the low-resolution map.
        scale_factor: integer upsampling ratio ``s``.
        group_size: channel groups sharing one kernel (``C`` must be divisible by it).
        backend: ``"auto"`` (CUDA kernels for CUDA tensors when CuPy is present, else PyTorch),
            ``"torch"`` or ``"cuda"``.

    Returns:
        ``[B, C, s*H, s*W]``.

    Example:
        >>> f = torch.randn(1, 4, 3, 5)
        >>> m = torch.softmax(torch.randn(1, 9, 6, 10), dim=1)
        >>> carafe(f, m, kernel_size=3, scale_factor=2).shape
        torch.Size([1, 4, 6, 10])
    """
    if has_torch_function((features, masks)):  # lets uplab.analysis.flops count this op
        return handle_torch_function(
            carafe, (features, masks), features, masks, kernel_size, scale_factor, group_size,
            backend=backend,
        )
    check_is_tensor("features", features)
    check_is_tensor("masks", masks)
    features, masks = promote_under_autocast(features, masks)
    check_carafe_args(features, masks, kernel_size, scale_factor, group_size)
    if resolve_backend(backend, features, "carafe") == "cuda":
        from uplab.ops import cuda

        return cuda.carafe(features, masks, kernel_size, scale_factor, group_size)
    return _CarafeTorch.apply(features, masks, kernel_size, scale_factor, group_size)


class _CarafeTorch(torch.autograd.Function):
    """Per low-resolution point, ``out[s*s, C/G] = masks[s*s, K*K] @ windows[K*K, C/G]`` for each
    group, over row chunks of windows (see :mod:`uplab.ops._windows`); the backward reuses the same
    chunks: ``grad_masks = grad_out @ windows^T`` and ``grad_windows = masks^T @ grad_out``."""

    @staticmethod
    @full_precision
    def forward(ctx, features, masks, kernel_size, scale_factor, group_size):
        ctx.save_for_backward(features, masks)
        ctx.config = (kernel_size, scale_factor, group_size)
        b, c, h, w = features.shape
        k, s, g = kernel_size, scale_factor, group_size
        dt = compute_dtype(features.dtype)
        padded = pad_channels_last(features, (k - 1) // 2, dt).unflatten(-1, (g, c // g))
        m = _masks_point_major(masks, k, s, g, dt)
        out = torch.empty(b, h, w, g, s * s, c // g, dtype=dt, device=features.device)
        for start, stop in row_chunks(h, w, c, k):
            windows = gather_windows(padded, start, stop, k, w)
            out[:, start:stop] = torch.matmul(m[:, start:stop], windows)
        # [B, H, W, G, s, s, C/G] -> [B, G, C/G, H, s, W, s]
        out = out.view(b, h, w, g, s, s, c // g).permute(0, 3, 6, 1, 4, 2, 5)
        return out.reshape(b, c, h * s, w * s).to(features.dtype)

    @staticmethod
    @full_precision
    def backward(ctx, grad_out):
        features, masks = ctx.saved_tensors
        k, s, g = ctx.config
        b, c, h, w = features.shape
        r = (k - 1) // 2
        dt = compute_dtype(features.dtype)
        need_f, need_m = ctx.needs_input_grad[:2]
        padded = pad_channels_last(features, r, dt).unflatten(-1, (g, c // g))
        m = _masks_point_major(masks, k, s, g, dt)
        go = grad_out.to(dt).reshape(b, g, c // g, h, s, w, s).permute(0, 3, 5, 1, 4, 6, 2)
        go = go.reshape(b, h, w, g, s * s, c // g)
        grad_padded = torch.zeros_like(padded) if need_f else None
        grad_m = torch.empty_like(m) if need_m else None
        for start, stop in row_chunks(h, w, c, k):
            windows = gather_windows(padded, start, stop, k, w)
            go_rows = go[:, start:stop]
            if need_m:
                grad_m[:, start:stop] = torch.matmul(go_rows, windows.transpose(-1, -2))
            if need_f:
                grad_windows = torch.matmul(m[:, start:stop].transpose(-1, -2), go_rows)
                scatter_windows_(grad_padded, grad_windows, start, k)
        grad_f = grad_m_out = None
        if need_f:
            grad_f = grad_padded[:, r : r + h, r : r + w].flatten(-2).permute(0, 3, 1, 2)
            grad_f = grad_f.contiguous().to(features.dtype)
        if need_m:
            # [B, H, W, G, s, s, K*K] -> [B, G, K*K, H, s, W, s]
            grad_m_out = grad_m.view(b, h, w, g, s, s, k * k).permute(0, 3, 6, 1, 4, 2, 5)
            grad_m_out = grad_m_out.reshape(masks.shape).to(masks.dtype)
        return grad_f, grad_m_out, None, None, None


def _masks_point_major(masks, k, s, g, dtype):
    """``[B, G*K*K, s*H, s*W]`` → ``[B, H, W, G, s*s, K*K]``: the kernels of each point's children."""
    b, _, hs, ws = masks.shape
    m = masks.to(dtype).view(b, g, k * k, hs // s, s, ws // s, s).permute(0, 3, 5, 1, 4, 6, 2)
    return m.reshape(b, hs // s, ws // s, g, s * s, k * k)
