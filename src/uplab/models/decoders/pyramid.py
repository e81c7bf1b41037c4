"""Checks shared by the decoders: the pyramid's shapes and the upsampler's need for a guide."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from torch import nn

from uplab.upsamplers import build, is_guided


def check_pyramid(decoder: str, features: Sequence[torch.Tensor]) -> None:
    """Raise ``ValueError`` unless each level is exactly twice the size of the next coarser one.

    The ×2 upsampling steps of a decoder only fit such a pyramid; inputs whose sides are not
    divisible by the backbone's total stride break it.
    """
    shapes = [tuple(f.shape) for f in features]
    for fine, coarse in zip(shapes, shapes[1:], strict=False):
        if len(fine) != 4 or len(coarse) != 4 or fine[-2:] != (2 * coarse[-2], 2 * coarse[-1]):
            raise ValueError(
                f"{decoder}: each level must be [B, C, 2H, 2W] of the next coarser one; got levels "
                f"{shapes} (input sides must be divisible by the backbone's total stride)"
            )


def upsampler_is_guided(factory: Callable[..., nn.Module]) -> bool:
    """Whether the upsampler that ``factory`` builds reads a guide (``uplab.upsamplers.is_guided``).

    ``factory`` is a ``functools.partial`` of :func:`uplab.upsamplers.build` (what Hydra makes of
    ``conf/upsampler/<name>.yaml``) or any callable building an upsampler.
    """
    if isinstance(factory, functools.partial) and factory.func is build:
        name = factory.keywords.get("name", factory.args[0] if factory.args else None)
        if name is not None:
            return is_guided(name)
    return bool(getattr(factory, "guided", False))
