"""Local query–key similarity of SAPA (Lu et al., NeurIPS 2022, Eq. 4 before the softmax).

``sim[b, ky*K + kx, H, W] = sum_c query[b, c, H, W] * key[b, c, H//s - r + ky, W//s - r + kx]``

with ``r = (K - 1) // 2``. Each high-resolution point is compared with the ``K x K`` window around
its low-resolution parent. A neighbour outside the map contributes similarity 0: it still enters a
following softmax with logit 0, exactly as the released SAPA kernels do (they skip the product
but leave the zero-initialised logit in place).

The PyTorch path is shift-and-accumulate over window offsets: each step reads a shifted view of
the zero-padded key and broadcasts it over the ``s x s`` children of every low-resolution point,
so nothing ``K*K`` times the key (an unfold) is ever built.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import handle_torch_function, has_torch_function

from uplab.ops._checks import check_similarity_args
from uplab.ops.carafe import _compute_dtype, _offsets
from uplab.ops.dispatch import resolve_backend


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
    check_similarity_args(query, key, kernel_size, scale_factor)
    if resolve_backend(backend, query, "local_similarity") == "cuda":
        from uplab.ops import cuda

        return cuda.local_similarity(query, key, kernel_size, scale_factor)
    return _LocalSimilarityTorch.apply(query, key, kernel_size, scale_factor)


class _LocalSimilarityTorch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, kernel_size, scale_factor):
        ctx.save_for_backward(query, key)
        ctx.config = (kernel_size, scale_factor)
        b, c, h, w = key.shape
        k, s = kernel_size, scale_factor
        r = (k - 1) // 2
        dt = _compute_dtype(query.dtype)
        padded = F.pad(key.to(dt), (r, r, r, r))
        q = query.to(dt).view(b, c, h, s, w, s)
        sim = torch.empty(b, k * k, h, s, w, s, dtype=dt, device=query.device)
        for idx, ky, kx in _offsets(k):
            window = padded[:, :, ky : ky + h, None, kx : kx + w, None]
            torch.sum(q * window, dim=1, out=sim[:, idx])
        return sim.view(b, k * k, h * s, w * s).to(query.dtype)

    @staticmethod
    def backward(ctx, grad_sim):
        query, key = ctx.saved_tensors
        k, s = ctx.config
        b, c, h, w = key.shape
        r = (k - 1) // 2
        dt = _compute_dtype(query.dtype)
        need_q, need_k = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        padded = F.pad(key.to(dt), (r, r, r, r))
        q = query.to(dt).view(b, c, h, s, w, s)
        gs = grad_sim.to(dt).reshape(b, k * k, h, s, w, s)
        grad_q = torch.zeros_like(q) if need_q else None
        grad_padded = torch.zeros_like(padded) if need_k else None
        for idx, ky, kx in _offsets(k):
            g = gs[:, idx, None]
            if need_q:
                grad_q.addcmul_(g, padded[:, :, ky : ky + h, None, kx : kx + w, None])
            if need_k:
                grad_padded[:, :, ky : ky + h, kx : kx + w] += (g * q).sum((3, 5))
        if need_q:
            grad_q = grad_q.view(query.shape).to(query.dtype)
        grad_k = grad_padded[..., r : r + h, r : r + w].to(key.dtype) if need_k else None
        return grad_q, grad_k, None, None
