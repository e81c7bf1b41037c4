"""Content-aware reassembly (CARAFE, Wang et al., ICCV 2019, Eq. 3), the kernel-application step
shared by CARAFE, FADE, SAPA and A2U.

``out[b, c, H, W] = sum_{ky, kx} masks[b, g*K*K + ky*K + kx, H, W]
                    * features[b, c, H//s - r + ky, W//s - r + kx]``

with ``r = (K - 1) // 2``, ``g = c // (C / group_size)`` and zeros outside the feature map, exactly
as ``mmcv.ops.carafe`` and the released SAPA/FADE kernels compute it.

The PyTorch path below is shift-and-accumulate: one pass per window offset, each reading a shifted
view of the (zero-padded) low-resolution features and broadcasting it over the ``s x s`` children of
every low-resolution point. No tensor larger than the output is ever built, unlike the
unfold-and-repeat formulation (``K*K*s*s`` times the features) of the community pure-PyTorch FADE.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import handle_torch_function, has_torch_function

from uplab.ops._checks import check_carafe_args
from uplab.ops.dispatch import resolve_backend


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
    check_carafe_args(features, masks, kernel_size, scale_factor, group_size)
    if resolve_backend(backend, features, "carafe") == "cuda":
        from uplab.ops import cuda

        return cuda.carafe(features, masks, kernel_size, scale_factor, group_size)
    return _CarafeTorch.apply(features, masks, kernel_size, scale_factor, group_size)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half-precision inputs accumulate in float32, as the CUDA kernels do.
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _offsets(kernel_size: int):
    for ky in range(kernel_size):
        for kx in range(kernel_size):
            yield ky * kernel_size + kx, ky, kx


class _CarafeTorch(torch.autograd.Function):
    """Shift-and-accumulate CARAFE with an explicit backward of the same shape (no K*K copies)."""

    @staticmethod
    def forward(ctx, features, masks, kernel_size, scale_factor, group_size):
        ctx.save_for_backward(features, masks)
        ctx.config = (kernel_size, scale_factor, group_size)
        b, c, h, w = features.shape
        k, s, g = kernel_size, scale_factor, group_size
        r = (k - 1) // 2
        dt = _compute_dtype(features.dtype)
        padded = F.pad(features.to(dt), (r, r, r, r)).view(b, g, c // g, h + 2 * r, w + 2 * r)
        m = masks.to(dt).view(b, g, k * k, h, s, w, s)
        out = torch.zeros(b, g, c // g, h, s, w, s, dtype=dt, device=features.device)
        for idx, ky, kx in _offsets(k):
            window = padded[:, :, :, ky : ky + h, None, kx : kx + w, None]
            out.addcmul_(m[:, :, idx, None], window)
        return out.view(b, c, h * s, w * s).to(features.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        features, masks = ctx.saved_tensors
        k, s, g = ctx.config
        b, c, h, w = features.shape
        r = (k - 1) // 2
        dt = _compute_dtype(features.dtype)
        go = grad_out.to(dt).reshape(b, g, c // g, h, s, w, s)
        need_f, need_m = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        padded = F.pad(features.to(dt), (r, r, r, r)).view(b, g, c // g, h + 2 * r, w + 2 * r)
        m = masks.to(dt).view(b, g, k * k, h, s, w, s)
        grad_padded = torch.zeros_like(padded) if need_f else None
        grad_m = torch.empty(b, g, k * k, h, s, w, s, dtype=dt, device=masks.device) if need_m else None
        for idx, ky, kx in _offsets(k):
            window = padded[:, :, :, ky : ky + h, None, kx : kx + w, None]
            if need_m:
                torch.sum(go * window, dim=2, out=grad_m[:, :, idx])
            if need_f:
                grad_padded[:, :, :, ky : ky + h, kx : kx + w] += (go * m[:, :, idx, None]).sum((4, 6))
        grad_f = None
        if need_f:
            grad_f = grad_padded[..., r : r + h, r : r + w].reshape(b, c, h, w).to(features.dtype)
        if need_m:
            grad_m = grad_m.view(masks.shape).to(masks.dtype)
        return grad_f, grad_m, None, None, None
