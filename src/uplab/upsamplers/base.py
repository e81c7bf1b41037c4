"""The upsampler contract (see DESIGN.md): ``forward(x, guide=None)`` maps the low-resolution
decoder feature ``x`` ``[B, C, H, W]`` to ``[B, out_channels, s*H, s*W]``; guided operators also read
the high-resolution encoder feature ``guide`` ``[B, C_g, s*H, s*W]``.

Every call goes through one check (:meth:`Upsampler.check_inputs`, run by ``__call__`` before
``forward``): tensors, 4-D, floating point, ``x``, ``guide`` and the module's parameters on one
device and of one dtype, shapes that fit. Under ``torch.autocast`` the dtypes may differ: the
layers cast as autocast says and the ops promote their two inputs to the wider type
(:func:`uplab.ops.dispatch.promote_under_autocast`). An empty batch or map (``B``, ``H`` or ``W``
zero) gives an empty output ``[B, out_channels, s*H, s*W]`` without running the layers.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def require_positive_int(name: str, value: object) -> int:
    """``value`` if it is an integer >= 1 (``bool`` is not), else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer (1, 2, 3, ...), got {value!r}")
    return value


def require_odd_int(name: str, value: object) -> int:
    """``value`` if it is an odd integer >= 1, else a ValueError naming ``name``: a window centred
    on a pixel (and a ``same``-padded convolution) needs an odd size."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value % 2 == 0:
        raise ValueError(f"{name} must be an odd integer >= 1 (1, 3, 5, ...), got {value!r}")
    return value


def _first_parameter(module: nn.Module) -> nn.Parameter | None:
    """The module's first parameter, depth first; without ``parameters()``' bookkeeping, which
    costs several times more than the rest of the input check."""
    for p in module._parameters.values():
        if p is not None:
            return p
    for child in module._modules.values():
        if child is not None and (p := _first_parameter(child)) is not None:
            return p
    return None


def _describe(t: object) -> str:
    return f"shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__


class Upsampler(nn.Module):
    """Base class: holds the sizes every upsampler has and validates inputs.

    Args:
        in_channels: channels ``C`` of the decoder feature ``x``.
        scale: integer upsampling ratio ``s``.
        guide_channels: channels ``C_g`` of the encoder feature (guided operators only);
            defaults to ``in_channels``.

    Attributes:
        recompute: when ``True``, a training forward with gradients keeps only ``x`` and
            ``guide`` for backward and runs the upsampler's forward again there
            (``torch.utils.checkpoint``, non-reentrant, RNG state restored). Same outputs and
            gradients; the kernels, embeddings and normalised copies an upsampler would
            otherwise hold until backward are not kept. ``build(..., recompute=True)`` sets it.
    """

    guided: ClassVar[bool] = False
    recompute: bool = False

    def __init__(self, in_channels: int, scale: int = 2, guide_channels: int | None = None):
        super().__init__()
        self.in_channels = require_positive_int("in_channels", in_channels)
        self.scale = require_positive_int("scale", scale)
        if guide_channels is not None:
            require_positive_int("guide_channels", guide_channels)
        self.guide_channels = in_channels if guide_channels is None else guide_channels
        self.out_channels = in_channels

    def __call__(self, x: torch.Tensor, guide: torch.Tensor | None = None, **kwargs):
        self.check_inputs(x, guide)
        if x.numel() == 0:
            return self.empty_output(x)
        if self.recompute and self.training and torch.is_grad_enabled():
            return checkpoint(super().__call__, x, guide, use_reentrant=False, **kwargs)
        return super().__call__(x, guide, **kwargs)

    def empty_output(self, x: torch.Tensor) -> torch.Tensor:
        """The output for an ``x`` with no element: zeros ``[B, out_channels, s*H, s*W]``, kept in
        ``x``'s autograd graph (the sum of an empty tensor is 0)."""
        b, c, h, w = x.shape
        out_channels = c if self.out_channels is None else self.out_channels
        return x.new_zeros(b, out_channels, h * self.scale, w * self.scale) + x.sum()

    def check_tensors(self, x: torch.Tensor, guide: torch.Tensor | None) -> None:
        """Raise ``ValueError`` unless ``x`` (and, for guided upsamplers, ``guide`` when given) are
        4-D floating tensors on the module's device, of one dtype with each other and the module
        (any dtypes under ``torch.autocast``)."""
        if not self.guided:
            guide = None  # unguided upsamplers ignore it
        for label, t in (("x", x), ("guide", guide)):
            if t is None and label == "guide":
                continue
            if not isinstance(t, torch.Tensor) or t.dim() != 4:
                raise ValueError(
                    f"{type(self).__name__}: {label} must be a 4-D tensor [B, C, H, W], got "
                    f"{_describe(t)}"
                )
            if not t.is_floating_point():
                raise ValueError(
                    f"{type(self).__name__}: {label} must be a floating-point tensor, got dtype "
                    f"{t.dtype}; convert it with .float() (or the module's dtype)"
                )
        device, dtype = x.device, x.dtype
        weight = _first_parameter(self)
        for what, other in (("guide", guide), ("the module's parameters", weight)):
            if other is not None and other.device != device:
                raise ValueError(
                    f"{type(self).__name__}: x is on {device} but {what} "
                    f"{'is' if what == 'guide' else 'are'} on {other.device}; move them to one "
                    "device (tensor.to(device), module.to(device))"
                )
        if torch.is_autocast_enabled(device.type):
            return
        for what, other in (("guide", guide), ("the module's parameters", weight)):
            if other is not None and other.dtype != dtype:
                raise ValueError(
                    f"{type(self).__name__}: x has dtype {dtype} but {what} "
                    f"{'has' if what == 'guide' else 'have'} dtype {other.dtype}; cast them to one "
                    "dtype (tensor.to(dtype), module.to(dtype)) or run under torch.autocast, "
                    "which promotes"
                )

    def check_inputs(self, x: torch.Tensor, guide: torch.Tensor | None) -> None:
        """Raise ``ValueError`` naming what does not fit: the tensors (:meth:`check_tensors`), the
        channels of ``x``, and for guided upsamplers the guide's presence and shape."""
        self.check_tensors(x, guide)
        name = type(self).__name__
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"{name}: x must have {self.in_channels} channels, got shape {tuple(x.shape)}"
            )
        if not self.guided:
            return
        if guide is None:
            raise ValueError(
                f"{name} is a guided upsampler: forward(x, guide) needs the high-resolution "
                f"encoder feature [B, {self.guide_channels}, {self.scale}*H, {self.scale}*W] "
                f"for x {tuple(x.shape)}, got guide=None"
            )
        b, _, h, w = x.shape
        expected = (b, self.guide_channels, h * self.scale, w * self.scale)
        if tuple(guide.shape) != expected:
            raise ValueError(
                f"{name}: guide must have shape {expected} for x {tuple(x.shape)} at scale "
                f"{self.scale}, got guide {tuple(guide.shape)}"
            )

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, scale={self.scale}"
