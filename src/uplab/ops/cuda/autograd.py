"""CUDA path of the ops: autograd Functions over the kernels in ``kernels/*.cu``.

Reached through :func:`uplab.ops.carafe` and :func:`uplab.ops.local_similarity` when the backend
resolves to ``"cuda"`` (see :mod:`uplab.ops.dispatch`), after the entry points have validated
shapes, devices and dtypes. Inputs are made contiguous here; float16 and bfloat16 accumulate in
float32, float64 in float64. Every backward is a gather (no atomics), so gradients are
bit-identical across runs. Under ``torch.autocast`` the ops run in their inputs' dtype and the
backward sees the same autocast state as the forward (``custom_fwd``/``custom_bwd``).

The gradients reuse the forward kernels (CARAFE, Wang et al., ICCV 2019, Eq. 3; SAPA, Lu et al.,
NeurIPS 2022, Eq. 4):

- carafe: ``d features = reassemble_transpose(grad, masks)``,
  ``d masks = window_dot(grad, features)`` (per group);
- local_similarity: ``d query = reassemble(key, grad)``, ``d key = reassemble_transpose(query, grad)``.
"""

from __future__ import annotations

import torch

from uplab.ops.cuda import launchers


class _CarafeCuda(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, features, masks, kernel_size, scale_factor, group_size):
        features, masks = features.contiguous(), masks.contiguous()
        ctx.save_for_backward(features, masks)
        ctx.config = (kernel_size, scale_factor, group_size)
        return launchers.reassemble(features, masks, kernel_size, scale_factor, group_size)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_out):
        features, masks = ctx.saved_tensors
        k, s, g = ctx.config
        grad_out = grad_out.contiguous()
        grad_features = grad_masks = None
        if ctx.needs_input_grad[0]:
            grad_features = launchers.reassemble_transpose(grad_out, masks, k, s, g)
        if ctx.needs_input_grad[1]:
            grad_masks = launchers.window_dot(grad_out, features, k, s, g)
        return grad_features, grad_masks, None, None, None


class _LocalSimilarityCuda(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, query, key, kernel_size, scale_factor):
        query, key = query.contiguous(), key.contiguous()
        ctx.save_for_backward(query, key)
        ctx.config = (kernel_size, scale_factor)
        return launchers.window_dot(query, key, kernel_size, scale_factor, 1)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_sim):
        query, key = ctx.saved_tensors
        k, s = ctx.config
        grad_sim = grad_sim.contiguous()
        grad_query = grad_key = None
        if ctx.needs_input_grad[0]:
            grad_query = launchers.reassemble(key, grad_sim, k, s, 1)
        if ctx.needs_input_grad[1]:
            grad_key = launchers.reassemble_transpose(query, grad_sim, k, s, 1)
        return grad_query, grad_key, None, None


def carafe(
    features: torch.Tensor, masks: torch.Tensor, kernel_size: int, scale_factor: int, group_size: int
) -> torch.Tensor:
    """CARAFE reassembly on CUDA tensors; same contract as :func:`uplab.ops.carafe`."""
    return _CarafeCuda.apply(features, masks, kernel_size, scale_factor, group_size)


def local_similarity(
    query: torch.Tensor, key: torch.Tensor, kernel_size: int, scale_factor: int
) -> torch.Tensor:
    """SAPA's local similarity on CUDA tensors; same contract as
    :func:`uplab.ops.local_similarity`."""
    return _LocalSimilarityCuda.apply(query, key, kernel_size, scale_factor)
