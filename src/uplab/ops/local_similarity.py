"""Local query–key similarity of SAPA (Lu et al., NeurIPS 2022, Eq. 4 before the softmax).

``sim[b, ky*K + kx, H, W] = sum_c query[b, c, H, W] * key[b, c, H//s - r + ky, W//s - r + kx]``

with ``r = (K - 1) // 2``. Each high-resolution point is compared with the ``K x K`` window around
its low-resolution parent. A neighbour outside the map contributes similarity 0: it still enters a
following softmax with logit 0, exactly as the released SAPA kernels do (they skip the product
but leave the zero-initialised logit in place).

The PyTorch path computes, for each low-resolution point, the product of its children's queries
``[s*s, C]`` with its key window ``[K*K, C]``, gathering windows a few rows at a time
(:mod:`uplab.ops._windows`), so nothing ``K*K`` times the key (a whole unfold) is ever built.
"""

from __future__ import annotations

import torch
from torch.overrides import handle_torch_function, has_torch_function

from uplab.ops._checks import check_is_tensor, check_similarity_args
from uplab.ops._windows import (
    compute_dtype,
    full_precision,
    gather_windows,
    pad_channels_last,
    row_chunks,
    scatter_windows_,
)
from uplab.ops.dispatch import promote_under_autocast, resolve_backend


def local_similarity(
    query: torch.Tensor,
    key: torch.Tensor,
    kernel_size: int,
    scale_factor: int,
    backend: str = "auto",
) -> torch.Tensor:
    """Inner products between each high-resolution query and its parent's ``K x K`` key window.

    Args:
        query: high-resolution queries ``[B, C, s*H, s*W]`` (SAPA: from the encoder feature).
        key: low-resolution keys ``[B, C, H, W]`` (SAPA: from the decoder feature).
        kernel_size: odd window size ``K``.
        scale_factor: integer ratio ``s`` between query and key resolution.
        backend: ``"auto"``, ``"torch"`` or ``"cuda"`` (see :func:`uplab.ops.carafe`).

    Returns:
        ``[B, K*K, s*H, s*W]`` similarity logits.

    Example:
        >>> q, k = torch.randn(1, 8, 6, 10), torch.randn(1, 8, 3, 5)
        >>> local_similarity(q, k, kernel_size=5, scale_factor=2).shape
        torch.Size([1, 25, 6, 10])
    """
    if has_torch_function((query, key)):  # lets uplab.analysis.flops count this op
        return handle_torch_function(
            local_similarity, (query, key), query, key, kernel_size, scale_factor, backend=backend
        )
    check_is_tensor("query", query)
    check_is_tensor("key", key)
    query, key = promote_under_autocast(query, key)
    check_similarity_args(query, key, kernel_size, scale_factor)
    if resolve_backend(backend, query, "local_similarity") == "cuda":
        from uplab.ops import cuda

        return cuda.local_similarity(query, key, kernel_size, scale_factor)
    return _LocalSimilarityTorch.apply(query, key, kernel_size, scale_factor)


class _LocalSimilarityTorch(torch.autograd.Function):
    """Per low-resolution point, ``sim[s*s, K*K] = queries[s*s, C] @ windows[K*K, C]^T`` over row
    chunks of key windows (see :mod:`uplab.ops._windows`); the backward reuses the same chunks:
    ``grad_queries = grad_sim @ windows`` and ``grad_windows = grad_sim^T @ queries``."""

    @staticmethod
    @full_precision
    def forward(ctx, query, key, kernel_size, scale_factor):
        ctx.save_for_backward(query, key)
        ctx.config = (kernel_size, scale_factor)
        b, c, h, w = key.shape
        k, s = kernel_size, scale_factor
        dt = compute_dtype(query.dtype)
        padded = pad_channels_last(key, (k - 1) // 2, dt)
        q = _point_major(query, s, dt)
        sim = torch.empty(b, h, w, s * s, k * k, dtype=dt, device=query.device)
        for start, stop in row_chunks(h, w, c, k):
            windows = gather_windows(padded, start, stop, k, w)
            sim[:, start:stop] = torch.matmul(q[:, start:stop], windows.transpose(-1, -2))
        return _channel_major(sim, s).to(query.dtype)

    @staticmethod
    @full_precision
    def backward(ctx, grad_sim):
        query, key = ctx.saved_tensors
        k, s = ctx.config
        b, c, h, w = key.shape
        r = (k - 1) // 2
        dt = compute_dtype(query.dtype)
        need_q, need_k = ctx.needs_input_grad[:2]
        padded = pad_channels_last(key, r, dt)
        q = _point_major(query, s, dt)
        gs = _point_major(grad_sim, s, dt)
        grad_q = torch.empty_like(q) if need_q else None
        grad_padded = torch.zeros_like(padded) if need_k else None
        for start, stop in row_chunks(h, w, c, k):
            windows = gather_windows(padded, start, stop, k, w)
            gs_rows = gs[:, start:stop]
            if need_q:
                grad_q[:, start:stop] = torch.matmul(gs_rows, windows)
            if need_k:
                grad_windows = torch.matmul(gs_rows.transpose(-1, -2), q[:, start:stop])
                scatter_windows_(grad_padded, grad_windows, start, k)
        if need_q:
            grad_q = _channel_major(grad_q, s).to(query.dtype)
        if need_k:
            grad_k = grad_padded[:, r : r + h, r : r + w].permute(0, 3, 1, 2).contiguous()
            grad_k = grad_k.to(key.dtype)
        else:
            grad_k = None
        return grad_q, grad_k, None, None


def _point_major(t: torch.Tensor, s: int, dtype: torch.dtype) -> torch.Tensor:
    """``[B, D, s*H, s*W]`` → ``[B, H, W, s*s, D]``: each low-resolution point's children."""
    b, d, hs, ws = t.shape
    t = t.to(dtype).view(b, d, hs // s, s, ws // s, s).permute(0, 2, 4, 3, 5, 1)
    return t.reshape(b, hs // s, ws // s, s * s, d)


def _channel_major(t: torch.Tensor, s: int) -> torch.Tensor:
    """Inverse of :func:`_point_major`."""
    b, h, w, _, d = t.shape
    return t.view(b, h, w, s, s, d).permute(0, 5, 1, 3, 2, 4).reshape(b, d, h * s, w * s)
