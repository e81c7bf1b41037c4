"""Argument validation shared by the ops: every mismatch becomes a ``ValueError`` that names
what was expected and what was given, before any indexing happens."""

from __future__ import annotations

import torch


def check_kernel_and_scale(kernel_size: int, scale_factor: int) -> None:
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be an odd integer >= 1, got {kernel_size!r}")
    if not isinstance(scale_factor, int) or scale_factor < 1:
        raise ValueError(f"scale_factor must be an integer >= 1, got {scale_factor!r}")


def check_is_tensor(name: str, t: object) -> None:
    """Runs first in every op, before anything reads a tensor attribute (autocast promotion)."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def check_nchw(name: str, t: torch.Tensor) -> None:
    check_is_tensor(name, t)
    if t.dim() != 4:
        raise ValueError(f"{name} must be NCHW (4-D), got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")


def check_same_batch_device_dtype(a_name: str, a: torch.Tensor, b_name: str, b: torch.Tensor) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{a_name} and {b_name} must have the same batch size, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.device != b.device:
        raise ValueError(f"{a_name} is on {a.device} but {b_name} is on {b.device}")
    if a.dtype != b.dtype:
        raise ValueError(f"{a_name} has dtype {a.dtype} but {b_name} has dtype {b.dtype}")


def check_carafe_args(
    features: torch.Tensor, masks: torch.Tensor, kernel_size: int, scale_factor: int, group_size: int
) -> None:
    check_kernel_and_scale(kernel_size, scale_factor)
    check_nchw("features", features)
    check_nchw("masks", masks)
    check_same_batch_device_dtype("features", features, "masks", masks)
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be an integer >= 1, got {group_size!r}")
    b, c, h, w = features.shape
    if c % group_size:
        raise ValueError(f"features channels ({c}) must be divisible by group_size ({group_size})")
    expected = (b, group_size * kernel_size**2, h * scale_factor, w * scale_factor)
    if tuple(masks.shape) != expected:
        raise ValueError(
            f"masks must have shape {expected} (batch, group_size*kernel_size**2, "
            f"scale*H, scale*W) for features {tuple(features.shape)}, kernel_size={kernel_size}, "
            f"scale_factor={scale_factor}, group_size={group_size}; got {tuple(masks.shape)}"
        )


def check_similarity_args(
    query: torch.Tensor, key: torch.Tensor, kernel_size: int, scale_factor: int
) -> None:
    check_kernel_and_scale(kernel_size, scale_factor)
    check_nchw("query", query)
    check_nchw("key", key)
    check_same_batch_device_dtype("query", query, "key", key)
    b, c, h, w = key.shape
    expected = (b, c, h * scale_factor, w * scale_factor)
    if tuple(query.shape) != expected:
        raise ValueError(
            f"query must have shape {expected} (the key's channels at scale_factor={scale_factor} "
            f"times its size) for key {tuple(key.shape)}; got {tuple(query.shape)}"
        )
