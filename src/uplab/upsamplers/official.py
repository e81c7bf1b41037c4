"""Load weights of the released implementations into uplab's modules.

``load_official(official_class, state_dict, **official_kwargs)`` takes the released class's name
(as the golden vectors and checkpoints name it: ``"SAPA.SAPA"``, ``"FADE_L2H.FADE"``,
``"mmcv.CARAFEPack"``, ...), the state dict with the released key names, and the keyword
arguments that the released constructor was given; it builds the matching uplab module with the
same settings and maps the weights onto it, so published checkpoints load.

Each operator family registers its converters next to its module with :func:`register_official`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

_CONVERTERS: dict[str, Callable[..., nn.Module]] = {}


def register_official(*official_classes: str) -> Callable:
    """Decorator: ``fn(state_dict, **official_kwargs) -> (module, key_map)`` converts these
    classes. ``key_map`` maps each released key to the uplab state-dict key that holds it
    (same shape), or to ``None`` for released weights that take no part in upsampling."""

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        for cls in official_classes:
            if cls in _CONVERTERS:
                raise ValueError(f"a converter for {cls!r} is registered twice")
            _CONVERTERS[cls] = fn
        return fn

    return decorator


def official_classes() -> list[str]:
    """Released classes that :func:`load_official` can convert."""
    return sorted(_CONVERTERS)


def load_official(
    official_class: str,
    state_dict: Mapping[str, torch.Tensor],
    return_key_map: bool = False,
    **official_kwargs,
):
    """Build the uplab module matching a released class and load its weights.

    Args:
        official_class: the released class, e.g. ``"FADE_L2H.FADE"``.
        state_dict: its parameters and buffers, with the released key names.
        return_key_map: also return the map from released keys to uplab keys.
        **official_kwargs: the arguments the released constructor was given.

    Returns:
        The uplab module (dtype of the state dict's floating tensors), in eval mode; with
        ``return_key_map``, the pair ``(module, key_map)``.

    Example:
        >>> m = load_official("SAPA.SAPA", sd, dim_y=256, embedding_dim=32)
    """
    try:
        convert = _CONVERTERS[official_class]
    except KeyError:
        raise ValueError(
            f"no converter for released class {official_class!r}; known: "
            f"{', '.join(official_classes())}"
        ) from None
    module, key_map = convert(dict(state_dict), **official_kwargs)
    module.eval()
    return (module, dict(key_map)) if return_key_map else module


def load_mapped(
    module: nn.Module, state_dict: Mapping[str, torch.Tensor], key_map: Mapping[str, str | None]
) -> tuple[nn.Module, dict[str, str | None]]:
    """Load ``state_dict`` into ``module`` after renaming keys by ``key_map`` (released name →
    uplab name; unmapped keys keep their name; ``None`` drops the key). Strict: a missing or
    unexpected key raises, naming the keys; the module takes the state dict's floating dtype.

    Returns:
        ``(module, full_key_map)`` with every released key in the map, as converters return.
    """
    full_map = {k: key_map.get(k, k) for k in state_dict}
    renamed = {full_map[k]: v for k, v in state_dict.items() if full_map[k] is not None}
    dtypes = {v.dtype for v in renamed.values() if v.is_floating_point()}
    if len(dtypes) == 1:
        module.to(dtypes.pop())
    own = module.state_dict()
    wrong = {
        f"{k} -> {full_map[k]}": (tuple(v.shape), tuple(own[full_map[k]].shape))
        for k, v in state_dict.items()
        if full_map[k] in own and v.shape != own[full_map[k]].shape
    }
    if wrong:
        raise ValueError(
            f"{type(module).__name__}: released weights have other shapes than the module built "
            f"from the given arguments (released key -> ours: (released shape, expected shape)): {wrong}; check the "
            "constructor arguments passed to load_official"
        )
    missing, unexpected = module.load_state_dict(renamed, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{type(module).__name__}: released weights do not fit; missing {sorted(missing)}, "
            f"unexpected {sorted(unexpected)}"
        )
    return module, full_map
