"""The per-op launchers: three operations, each a choice of kernel family and its launch.

Three operations serve both ops (see the header comments of the ``.cu`` files and
:mod:`uplab.ops.cuda.autograd`):

- :func:`reassemble`: CARAFE forward, and local similarity's gradient w.r.t. the query;
- :func:`reassemble_transpose`: CARAFE's gradient w.r.t. the features, and local similarity's
  gradient w.r.t. the key;
- :func:`window_dot`: local similarity forward, and CARAFE's gradient w.r.t. the masks.

``reassemble`` and ``window_dot`` each have a generic kernel and a tiled one that stages the
low-resolution tile in shared memory and keeps the per-pixel operands in registers; ``reassemble``
also has a tensor-core kernel for 16-bit floats (which arguments each takes, and the builds the
launchers take by default: :mod:`uplab.ops.cuda.variants`). The launch shapes come from
:mod:`uplab.ops.cuda.geometry`, the launch itself from :func:`uplab.ops.cuda.runtime.launch`, on
PyTorch's current stream on the tensor's device. Callers pass contiguous tensors of one dtype on
one CUDA device.
"""

from __future__ import annotations

import torch

from uplab.ops.cuda import device_properties, geometry, runtime, variants
from uplab.ops.cuda.geometry import TILED_BLOCK, TILED_STAGE_CHANNELS
from uplab.ops.cuda.variants import (
    MMA_KERNEL_SIZES,
    MMA_SCALARS,
    MMA_SCALE,
    TILED_KERNEL_SIZES,
    TILED_SCALARS,
    build_options,
    mma_applies,
    tiled_applies,
)


def _acc_bytes(dtype: torch.dtype) -> int:
    return 8 if dtype == torch.float64 else 4


def _has_mma_sync(tensor: torch.Tensor) -> bool:
    """Whether ``tensor``'s device runs mma.sync on 16-bit floats (sm_80+); CPU tensors reach the
    kernels only under the test suite's emulation, which has it."""
    return not tensor.is_cuda or device_properties.compute_capability(tensor.device.index) >= (8, 0)


def _choose_path(
    path: str, dtype: torch.dtype, kernel_size: int, scale: int, mma: bool = False
) -> str:
    """The kernel family for ``path``; ``mma``: whether the caller has a tensor-core kernel."""
    paths = ("auto", "generic", "tiled", "mma") if mma else ("auto", "generic", "tiled")
    if path not in paths:
        raise ValueError(f"path must be one of {paths}, got {path!r}")
    if path == "mma" and not mma_applies(dtype, kernel_size, scale):
        raise ValueError(
            f"the tensor-core kernel takes dtype in {MMA_SCALARS}, kernel_size in "
            f"{MMA_KERNEL_SIZES} and scale {MMA_SCALE}, got {dtype}, {kernel_size}, {scale}"
        )
    fits = tiled_applies(dtype, kernel_size, scale)
    if path == "tiled" and not fits:
        raise ValueError(
            f"the tiled kernels take dtype in {TILED_SCALARS}, kernel_size in "
            f"{TILED_KERNEL_SIZES} and an even scale, got {dtype}, {kernel_size}, {scale}"
        )
    if path != "auto":
        return path
    if mma and variants.TILED_MMA and mma_applies(dtype, kernel_size, scale):
        return "mma"
    return "tiled" if fits else "generic"


def reassemble(
    features: torch.Tensor,
    masks: torch.Tensor,
    kernel_size: int,
    scale: int,
    groups: int,
    *,
    path: str = "auto",
    block: tuple[int, int] = TILED_BLOCK,
    stage_channels: int = TILED_STAGE_CHANNELS,
    staging: str | None = None,
    split_channels: bool = True,
) -> torch.Tensor:
    """``out[b,c,Y,X] = sum_k masks[b,g*K*K+k,Y,X] * features[b,c,Y//s-r+ky,X//s-r+kx]``.

    ``path`` picks the kernel (``"auto"``: the tensor-core one where
    :data:`~uplab.ops.cuda.variants.TILED_MMA` and :func:`mma_applies`, else the tiled one where
    :func:`tiled_applies`); ``block``, ``stage_channels``, ``staging`` (default
    :data:`~uplab.ops.cuda.variants.TILED_STAGING`) and ``split_channels`` shape the tiled launch
    (see :func:`~uplab.ops.cuda.geometry.tiled_config`; for benchmarks and tests)."""
    staging = staging or variants.TILED_STAGING
    b, c, h, w = features.shape
    out = features.new_empty(b, c, h * scale, w * scale)
    if out.numel() == 0:
        return out
    n_sm = device_properties.multiprocessors(features.device.index)
    chosen = _choose_path(path, features.dtype, kernel_size, scale, mma=True)
    if chosen == "mma" and not _has_mma_sync(features):
        if path == "mma":
            raise ValueError("the tensor-core kernel (path='mma') needs compute capability 8.0+")
        chosen = _choose_path("auto", features.dtype, kernel_size, scale)
    if chosen == "mma":
        config = geometry.mma_device_config(features, kernel_size, groups)
        runtime.launch(
            "reassemble_mma",
            "carafe_mma.cu",
            config,
            (features, masks, out),
            (c, h, w, groups, config.per_block, config.strip_tiles),
            kernel_size,
            variants.MMA_VARIANT.options(),
        )
        return out
    if chosen == "tiled":
        config = geometry.tiled_config(
            *(b, c, h, w, kernel_size, scale, groups, n_sm, block, stage_channels),
            split_channels=split_channels,
            staging=staging,
            itemsize=features.element_size(),
        )
        runtime.launch(
            "reassemble_tiled",
            "carafe.cu",
            config,
            (features, masks, out),
            (c, h, w, scale, groups, config.per_block, config.stage),
            kernel_size,
            build_options(staging),
        )
        return out
    config = geometry.reassemble_config(
        b, c, h, w, kernel_size, scale, groups, _acc_bytes(features.dtype), n_sm
    )
    runtime.launch(
        "reassemble",
        "carafe.cu",
        config,
        (features, masks, out),
        (c, h, w, kernel_size, scale, groups, config.per_block),
    )
    return out


def reassemble_transpose(
    grad_out: torch.Tensor, masks: torch.Tensor, kernel_size: int, scale: int, groups: int
) -> torch.Tensor:
    """The adjoint of :func:`reassemble` in its features: ``[B, C, sH, sW] -> [B, C, H, W]``."""
    b, c, out_h, out_w = grad_out.shape
    h, w = out_h // scale, out_w // scale
    grad_features = grad_out.new_empty(b, c, h, w)
    if grad_features.numel() == 0:
        return grad_features
    config = geometry.reassemble_transpose_config(
        b, c, h, w, groups, device_properties.multiprocessors(grad_out.device.index)
    )
    runtime.launch(
        "reassemble_transpose",
        "carafe.cu",
        config,
        (grad_out, masks, grad_features),
        (c, h, w, kernel_size, scale, groups, config.per_block),
    )
    return grad_features


def window_dot(
    query: torch.Tensor,
    key: torch.Tensor,
    kernel_size: int,
    scale: int,
    groups: int,
    *,
    path: str = "auto",
    block: tuple[int, int] = TILED_BLOCK,
    stage_channels: int = TILED_STAGE_CHANNELS,
    staging: str | None = None,
) -> torch.Tensor:
    """``out[b,g*K*K+k,Y,X] = sum_{c in g} query[b,c,Y,X] * key[b,c,Y//s-r+ky,X//s-r+kx]``.

    ``path`` picks the kernel (``"auto"``: the tiled one where :func:`tiled_applies` and its grid
    fills the GPU, since it cannot split the channel sum over blocks); ``block``,
    ``stage_channels`` and ``staging`` (default :data:`~uplab.ops.cuda.variants.TILED_STAGING`)
    shape the tiled launch (see :func:`~uplab.ops.cuda.geometry.tiled_config`; for benchmarks and
    tests)."""
    staging = staging or variants.TILED_STAGING
    b, c, h, w = key.shape
    out = query.new_empty(b, groups * kernel_size**2, h * scale, w * scale)
    if out.numel() == 0:
        return out
    n_sm = device_properties.multiprocessors(query.device.index)
    chosen = _choose_path(path, query.dtype, kernel_size, scale)
    if chosen == "tiled":
        config = geometry.tiled_config(
            b,
            c,
            h,
            w,
            kernel_size,
            scale,
            groups,
            n_sm,
            block,
            stage_channels,
            split_channels=False,
            staging=staging,
            itemsize=key.element_size(),
        )
        if path == "tiled" or config.grid[0] * config.grid[2] >= n_sm:
            runtime.launch(
                "window_dot_tiled",
                "local_similarity.cu",
                config,
                (query, key, out),
                (c, h, w, scale, groups, config.stage),
                kernel_size,
                build_options(staging),
            )
            return out
    config = geometry.window_dot_config(
        b, h, w, kernel_size, scale, groups, _acc_bytes(query.dtype), n_sm
    )
    runtime.launch(
        "window_dot",
        "local_similarity.cu",
        config,
        (query, key, out),
        (c, h, w, kernel_size, scale, groups, config.per_block),
    )
    return out
