"""Parameters and FLOPs in the convention of the SAPA/FADE/CARAFE tables.

Those papers count cost with the mmcv flops counter (``mmcv/cnn/utils/flops_counter.py``, used by
mmsegmentation's and mmdetection's ``get_flops`` tools). Its "FLOPs" are multiply–accumulates
(one multiply–add is one FLOP) summed over forward hooks on these module types only:

===================================  ==========================================================
module                               FLOPs of one forward call
===================================  ==========================================================
``Conv1d/2d/3d``                     ``B * prod(out spatial) * (Cout * Cin/groups * prod(k) + Cout if bias)``
``ConvTranspose2d``                  ``B * Hin * Win * Cin * Cout/groups * kh * kw + Cout * B * Hout * Wout if bias``
``Linear``                           ``numel(input) * out_features`` (no bias term)
``BatchNorm*/GroupNorm/InstanceNorm*/LayerNorm``  ``numel(input)``, twice that with an affine transform
``ReLU/PReLU/ELU/LeakyReLU/ReLU6``   ``numel(output)``
``Max/Avg/AdaptiveMax/AdaptiveAvg pools``  ``numel(input)``
``Upsample``                         ``numel(output)``
===================================  ==========================================================

Everything else (functional calls such as ``F.interpolate``, attention ``matmul``, GELU, sigmoid,
pixel shuffle) counts zero there, and so it does here: that is what makes the published numbers
reproducible. Two deliberate departures from the released counter, both invisible at batch 1 with
square outputs (every published setting): the deconvolution bias term uses ``Hout * Wout`` (the
counter multiplies ``Hout * Hout``), and ``Upsample`` counts the whole batch (the counter counts the
first sample only). Subclasses of the listed modules count like their base (the counter lists
mmcv's own subclasses by hand).

On top of that convention, :func:`count_flops` adds exact counts for the operations a module-hook
counter cannot see, which the learned upsamplers are built from:

- ``uplab.ops.carafe``: ``K*K`` multiply–accumulates per output element, ``B * C * sH * sW * K*K``
  (CARAFE, Eq. 3);
- ``uplab.ops.local_similarity``: ``C`` per similarity, ``B * K*K * sH * sW * C`` (SAPA, Eq. 4);
- ``grid_sample``: bilinear interpolation weighs 4 neighbours (2-D; 8 in 3-D), bicubic 16, nearest
  0, per output element ``B * C * Hout * Wout``;
- ``unfold``: counted like ``Upsample``, one per output element (it only rearranges data);
- ``softmax`` / ``log_softmax``: one per element, as the counter counts activations;
- ``matmul`` (``@``, ``torch.matmul``, ``bmm``): ``numel(out) * inner dim``. SegFormer's FLOPs tool
  adds exactly this for its attention (``sra_flops`` in NVlabs/SegFormer ``tools/get_flops.py``);
- functional ``conv1d/2d/3d`` outside an ``nn.Conv*`` module (whose hook already counts it):
  ``numel(out) * Cin/groups * prod(k)`` (+ ``numel(out)`` with a bias), the convolution formula
  above. A2U filters its guide with predicted per-sample filters this way; the published A2U
  increments (+0.66 matting, +0.41 SegFormer) include these encodings.

``count_layer_norm=False`` drops LayerNorm, as the mmcv 1.2 counter pinned by SegFormer (and so by
the SAPA/FADE SegFormer runs) did, and ``count_softmax=False`` drops softmax, which SegFormer's
tool does not add: with both, MiT-B1 + all-MLP head at 512x512 gives the published 15.91 GFLOPs
(15.94 with LayerNorm, 15.93 with softmax), and SAPA-B its published +1.02.

These are reported separately (``"ops"`` and one key per op), so ``result["modules"]`` is exactly
what the released counter prints.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections import defaultdict
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from uplab import ops
from uplab.upsamplers.base import Upsampler

__all__ = ["FLOP_KINDS", "count_flops", "count_params", "count_upsampler_params", "counting"]


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``module`` (shared parameters once).

    Args:
        module: any module.
        trainable_only: count only parameters with ``requires_grad`` (what the mmcv counter
            reports; a frozen backbone stage then drops out). The published tables count all.

    Example:
        >>> count_params(nn.Conv2d(3, 8, 3))
        224
    """
    if not isinstance(module, nn.Module):
        raise ValueError(f"count_params needs an nn.Module, got {type(module).__name__}")
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def count_upsampler_params(module: nn.Module) -> int:
    """Parameters inside every :class:`uplab.upsamplers.Upsampler` of ``module`` (once each)."""
    seen: set[int] = set()
    total = 0
    for sub in module.modules():
        if isinstance(sub, Upsampler):
            for p in sub.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    total += p.numel()
    return total


# ---- module hooks: the mmcv convention -------------------------------------------------------


def _conv_flops(m: nn.Module, inputs: tuple, output: torch.Tensor) -> tuple[str, int]:
    batch = output.shape[0]
    positions = batch * math.prod(output.shape[2:])
    per_position = math.prod(m.kernel_size) * m.in_channels * (m.out_channels // m.groups)
    bias = m.out_channels * positions if m.bias is not None else 0
    return "conv", per_position * positions + bias


def _deconv_flops(m: nn.Module, inputs: tuple, output: torch.Tensor) -> tuple[str, int]:
    x = inputs[0]
    positions = x.shape[0] * math.prod(x.shape[2:])
    per_position = math.prod(m.kernel_size) * m.in_channels * (m.out_channels // m.groups)
    bias = m.out_channels * output.shape[0] * math.prod(output.shape[2:]) if m.bias is not None else 0
    return "deconv", per_position * positions + bias


def _linear_flops(m: nn.Module, inputs: tuple, output: torch.Tensor) -> tuple[str, int]:
    return "linear", inputs[0].numel() * output.shape[-1]


def _norm_flops(m: nn.Module, inputs: tuple, output: torch.Tensor) -> tuple[str, int]:
    affine = getattr(m, "affine", False) or getattr(m, "elementwise_affine", False)
    return "norm", inputs[0].numel() * (2 if affine else 1)


def _activation_flops(m: nn.Module, inputs: tuple, output: torch.Tensor) -> tuple[str, int]:
    return "activation", output.numel()


def _pool_flops(m: nn.Module, inputs: tuple, output: torch.Tensor) -> tuple[str, int]:
    return "pool", inputs[0].numel()


def _upsample_flops(m: nn.Module, inputs: tuple, output: torch.Tensor) -> tuple[str, int]:
    return "upsample", output.numel()


_MODULE_RULES: dict[type, Callable[[nn.Module, tuple, torch.Tensor], tuple[str, int]]] = {
    nn.Conv1d: _conv_flops,
    nn.Conv2d: _conv_flops,
    nn.Conv3d: _conv_flops,
    nn.ConvTranspose2d: _deconv_flops,
    nn.Linear: _linear_flops,
    nn.BatchNorm1d: _norm_flops,
    nn.BatchNorm2d: _norm_flops,
    nn.BatchNorm3d: _norm_flops,
    nn.GroupNorm: _norm_flops,
    nn.InstanceNorm1d: _norm_flops,
    nn.InstanceNorm2d: _norm_flops,
    nn.InstanceNorm3d: _norm_flops,
    nn.LayerNorm: _norm_flops,
    nn.ReLU: _activation_flops,
    nn.PReLU: _activation_flops,
    nn.ELU: _activation_flops,
    nn.LeakyReLU: _activation_flops,
    nn.ReLU6: _activation_flops,
    nn.MaxPool1d: _pool_flops,
    nn.MaxPool2d: _pool_flops,
    nn.MaxPool3d: _pool_flops,
    nn.AvgPool1d: _pool_flops,
    nn.AvgPool2d: _pool_flops,
    nn.AvgPool3d: _pool_flops,
    nn.AdaptiveMaxPool1d: _pool_flops,
    nn.AdaptiveMaxPool2d: _pool_flops,
    nn.AdaptiveMaxPool3d: _pool_flops,
    nn.AdaptiveAvgPool1d: _pool_flops,
    nn.AdaptiveAvgPool2d: _pool_flops,
    nn.AdaptiveAvgPool3d: _pool_flops,
    nn.Upsample: _upsample_flops,
}


def _module_rule(module: nn.Module):
    for cls in type(module).__mro__:
        rule = _MODULE_RULES.get(cls)
        if rule is not None:
            return rule
    return None


# ---- functional ops: exact formulas ----------------------------------------------------------


def _named(func: Callable, args: tuple, kwargs: dict) -> dict:
    bound = inspect.signature(func).bind(*args, **kwargs)
    bound.apply_defaults()
    return bound.arguments


def _carafe_flops(func, args, kwargs, out: torch.Tensor) -> int:
    return out.numel() * _named(func, args, kwargs)["kernel_size"] ** 2


def _similarity_flops(func, args, kwargs, out: torch.Tensor) -> int:
    return out.numel() * _named(func, args, kwargs)["query"].shape[1]


def _grid_sample_flops(func, args, kwargs, out: torch.Tensor) -> int:
    mode = _named(func, args, kwargs)["mode"]
    if mode == "bilinear":
        taps = 8 if out.dim() == 5 else 4  # trilinear on volumetric input
    else:
        taps = {"bicubic": 16, "nearest": 0}[mode]
    return out.numel() * taps


def _elementwise_flops(func, args, kwargs, out: torch.Tensor) -> int:
    return out.numel()


def _matmul_flops(func, args, kwargs, out: torch.Tensor) -> int:
    return out.numel() * args[0].shape[-1]


def _functional_conv_flops(func, args, kwargs, out: torch.Tensor) -> int:
    named = _named_conv(args, kwargs)
    weight, bias = named["weight"], named.get("bias")
    per_output = math.prod(weight.shape[1:])  # Cin/groups * prod(kernel)
    return out.numel() * per_output + (out.numel() if bias is not None else 0)


def _named_conv(args: tuple, kwargs: dict) -> dict:
    # F.conv2d is a builtin without an inspectable signature: input, weight, bias come first
    names = ("input", "weight", "bias")
    named = dict(zip(names, args, strict=False))
    named.update({k: v for k, v in kwargs.items() if k in names})
    return named


_OP_RULES: dict[Callable, tuple[str, Callable[..., int]]] = {
    ops.carafe: ("carafe", _carafe_flops),
    ops.local_similarity: ("local_similarity", _similarity_flops),
    F.grid_sample: ("grid_sample", _grid_sample_flops),
    F.unfold: ("unfold", _elementwise_flops),
    F.softmax: ("softmax", _elementwise_flops),
    F.log_softmax: ("softmax", _elementwise_flops),
    torch.softmax: ("softmax", _elementwise_flops),
    torch.log_softmax: ("softmax", _elementwise_flops),
    torch.Tensor.softmax: ("softmax", _elementwise_flops),
    torch.Tensor.log_softmax: ("softmax", _elementwise_flops),
    torch.matmul: ("matmul", _matmul_flops),
    torch.bmm: ("matmul", _matmul_flops),
    torch.Tensor.__matmul__: ("matmul", _matmul_flops),
    torch.Tensor.matmul: ("matmul", _matmul_flops),
    torch.Tensor.bmm: ("matmul", _matmul_flops),
    F.conv1d: ("functional_conv", _functional_conv_flops),
    F.conv2d: ("functional_conv", _functional_conv_flops),
    F.conv3d: ("functional_conv", _functional_conv_flops),
}

MODULE_KINDS = ("conv", "deconv", "linear", "norm", "activation", "pool", "upsample")
OP_KINDS = (
    "carafe", "local_similarity", "grid_sample", "unfold", "softmax", "matmul", "functional_conv"
)
FLOP_KINDS = MODULE_KINDS + OP_KINDS
"""Keys of the per-kind breakdown in :func:`count_flops`'s result."""


class _Tally:
    """Accumulates FLOPs by kind, and separately those spent inside upsamplers."""

    def __init__(self) -> None:
        self.by_kind: dict[str, int] = defaultdict(int)
        self.upsamplers = 0
        self.upsampler_depth = 0
        self.conv_module_depth = 0  # > 0 while an nn.Conv*/Linear forward runs (hook-counted)

    def add(self, kind: str, flops: int, in_upsampler: bool) -> None:
        self.by_kind[kind] += int(flops)
        if in_upsampler:
            self.upsamplers += int(flops)

    def result(self) -> dict[str, int]:
        modules = sum(self.by_kind[k] for k in MODULE_KINDS)
        functional = sum(self.by_kind[k] for k in OP_KINDS)
        out = {"total": modules + functional, "upsamplers": self.upsamplers}
        out["modules"] = modules
        out["ops"] = functional
        out.update({k: self.by_kind[k] for k in FLOP_KINDS})
        return out


class _OpCounter(TorchFunctionMode):
    def __init__(self, tally: _Tally, count_softmax: bool) -> None:
        super().__init__()
        self.tally = tally
        self.count_softmax = count_softmax

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        rule = _OP_RULES.get(func)
        if rule is not None and rule[0] == "functional_conv" and self.tally.conv_module_depth:
            rule = None  # the convolution of an nn.Conv module: its hook counts it
        if rule is not None and (self.count_softmax or rule[0] != "softmax"):
            kind, formula = rule
            self.tally.add(kind, formula(func, args, kwargs, out), self.tally.upsampler_depth > 0)
        return out


@contextlib.contextmanager
def counting(
    model: nn.Module, count_layer_norm: bool = True, count_softmax: bool = True
) -> Iterator[_Tally]:
    """Count FLOPs of every forward of ``model`` run inside the block.

    Yields a tally whose ``result()`` is the dictionary :func:`count_flops` returns. Hooks and the
    function mode are removed on exit, also when the forward raises.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"count_flops needs an nn.Module, got {type(model).__name__}")
    tally = _Tally()
    inside_upsampler: set[int] = set()
    for up in model.modules():
        if isinstance(up, Upsampler):
            inside_upsampler.update(id(m) for m in up.modules())
    handles = []

    def enter(module, inputs):
        tally.upsampler_depth += 1

    def leave(module, inputs, output):
        tally.upsampler_depth -= 1

    def enter_conv(module, inputs):
        tally.conv_module_depth += 1

    def leave_conv(module, inputs, output):
        tally.conv_module_depth -= 1

    for module in model.modules():
        rule = _module_rule(module)
        if rule is _norm_flops and isinstance(module, nn.LayerNorm) and not count_layer_norm:
            rule = None
        if rule is not None:
            in_up = id(module) in inside_upsampler

            def hook(m, inputs, output, rule=rule, in_up=in_up):
                kind, flops = rule(m, inputs, output)
                tally.add(kind, flops, in_up)

            handles.append(module.register_forward_hook(hook))
        if rule in (_conv_flops, _deconv_flops, _linear_flops):
            handles.append(module.register_forward_pre_hook(enter_conv))
            handles.append(module.register_forward_hook(leave_conv, always_call=True))
        if isinstance(module, Upsampler):
            handles.append(module.register_forward_pre_hook(enter))
            handles.append(module.register_forward_hook(leave, always_call=True))
    try:
        with _OpCounter(tally, count_softmax):
            yield tally
    finally:
        for handle in handles:
            handle.remove()


def count_flops(
    model: nn.Module,
    *example_inputs,
    count_layer_norm: bool = True,
    count_softmax: bool = True,
    **example_kwargs,
) -> dict[str, int]:
    """FLOPs (multiply–accumulates, mmcv convention) of one forward ``model(*example_inputs)``.

    The model runs once in ``torch.no_grad()``; its training mode is left as it was (the papers'
    counts do not depend on it). Counts are for the batch given: pass batch size 1 for the
    per-image numbers the papers print.

    Args:
        model: the model.
        *example_inputs: positional inputs of its forward.
        count_layer_norm: count ``nn.LayerNorm`` (current mmcv) or not (mmcv 1.2, the papers'
            segmentation code base).
        count_softmax: count softmax (one per element) or not (SegFormer's FLOPs tool).
        **example_kwargs: keyword inputs of its forward.

    Returns:
        ``{"total", "upsamplers", "modules", "ops", <kind>...}``: ``total = modules + ops``;
        ``modules`` is what the mmcv counter reports; ``ops`` the functional ops it cannot see;
        ``upsamplers`` the part of ``total`` spent inside :class:`uplab.upsamplers.Upsampler`
        modules; one key per kind in :data:`FLOP_KINDS`.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        >>> count_flops(net, torch.zeros(1, 3, 4, 4))["total"]  # 16*(8*3*9 + 8) + 8*16
        3712
    """
    with counting(model, count_layer_norm, count_softmax) as tally, torch.no_grad():
        model(*example_inputs, **example_kwargs)
    return tally.result()
