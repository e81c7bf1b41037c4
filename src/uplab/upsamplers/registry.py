"""Name → constructor registry, in the manner of timm's ``create_model``.

``build(name, in_channels, scale=2, **kw)`` drops keyword arguments set to ``None`` so configs can
leave options out, an unknown name lists what is available, and an argument the upsampler does not
accept (a scale, channel count or kernel size that is not a positive integer, an even window, an
option it does not have) is a ValueError that names the upsampler, the argument and the values
allowed.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from uplab.upsamplers.base import Upsampler, require_positive_int

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable:
    """Decorator: register an upsampler class or factory under ``name``."""

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"upsampler {name!r} is registered twice")
        _REGISTRY[name] = fn
        return fn

    return decorator


def available() -> list[str]:
    """Names of all registered upsamplers, sorted."""
    return sorted(_REGISTRY)


def is_guided(name: str) -> bool:
    """Whether the upsampler registered as ``name`` needs ``guide`` in its forward."""
    return bool(getattr(_lookup(name), "guided", False))


def _lookup(name: str) -> Callable[..., nn.Module]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown upsampler {name!r}; available: {', '.join(available())}"
        ) from None


def build(
    name: str,
    in_channels: int,
    scale: int = 2,
    guide_channels: int | None = None,
    recompute: bool = False,
    **kwargs,
) -> nn.Module:
    """Build the upsampler registered as ``name``.

    Decoders call every upsampler the same way, ``build(name, in_channels, scale,
    guide_channels=...)``; ``guide_channels`` reaches guided upsamplers only, so unguided ones
    need not know about it.

    Args:
        name: a name from :func:`available`.
        in_channels: channels of the low-resolution decoder feature.
        scale: integer upsampling ratio.
        guide_channels: channels of the high-resolution encoder feature (guided upsamplers;
            default ``in_channels``).
        recompute: recompute the upsampler's forward in backward instead of keeping its
            intermediate tensors (:attr:`uplab.upsamplers.Upsampler.recompute`); trades about
            one more upsampler forward per step for activation memory.
        **kwargs: the upsampler's own options; ``None`` values are dropped.

    Example:
        >>> up = build("sapa_b", in_channels=64, embedding_dim=32)
        >>> up(torch.randn(1, 64, 8, 8), guide=torch.randn(1, 64, 16, 16)).shape
        torch.Size([1, 64, 16, 16])
    """
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    factory = _lookup(name)
    try:
        require_positive_int("in_channels", in_channels)
        require_positive_int("scale", scale)
        if guide_channels is not None:
            require_positive_int("guide_channels", guide_channels)
            if getattr(factory, "guided", False):
                kwargs["guide_channels"] = guide_channels
        module = factory(in_channels=in_channels, scale=scale, **kwargs)
    except ValueError as error:
        raise ValueError(f"build({name!r}): {error}") from None
    except TypeError as error:
        if "unexpected keyword argument" not in str(error):
            raise
        raise ValueError(
            f"build({name!r}): {error}; see the options in the docstring of "
            f"{getattr(factory, '__qualname__', factory)} (or conf/upsampler/{name}.yaml)"
        ) from None
    if recompute:
        if not isinstance(module, Upsampler):
            raise ValueError(f"recompute=True needs an Upsampler; {name!r} built {type(module).__name__}")
        module.recompute = True
    return module
