"""The papers' optimizer parameter groups and learning-rate schedules as Hydra partials.

``param_groups`` reproduces mmcv's ``DefaultOptimizerConstructor`` with ``paramwise_cfg.custom_keys``
(SegFormer: ``head`` lr x10, ``norm`` and ``pos_block`` without weight decay; the A2U release: the
pretrained encoder at lr / 100). ``warmup_poly`` and ``warmup_multistep`` are mmcv's ``poly`` and
``step`` policies with linear warm-up, stepped every iteration; milestones are fractions of the run
so that epoch-based releases (mmdetection's 1x: epochs 8 and 11 of 12) need no epoch length.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch.optim.lr_scheduler import LambdaLR


def param_groups(
    params: Iterable[tuple[str, torch.nn.Parameter]],
    optimizer: Callable[..., torch.optim.Optimizer],
    custom_keys: Mapping[str, Mapping[str, float]],
    lr: float,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    """``optimizer`` over named parameters grouped by the first key of ``custom_keys`` in the name.

    Keys are tried longest first, then alphabetically (mmcv's order); a match sets the group's lr to
    ``lr * lr_mult`` and weight decay to ``weight_decay * decay_mult``.

    Args:
        params: ``(name, parameter)`` pairs (``TaskModule`` passes the module's named parameters).
        optimizer: partial of a torch optimizer taking ``params``, ``lr`` and ``weight_decay``.
        custom_keys: ``{substring: {"lr_mult": m, "decay_mult": d}}``.
        lr: base learning rate.
        weight_decay: base weight decay.
    """
    keys = sorted(sorted(custom_keys), key=len, reverse=True)
    for key, rule in custom_keys.items():
        unknown = set(rule) - {"lr_mult", "decay_mult"}
        if unknown:
            raise ValueError(
                f"custom_keys[{key!r}] takes lr_mult and decay_mult; got {sorted(unknown)}"
            )
    groups: dict[tuple[float, float], list] = {}
    for item in params:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise ValueError(
                "param_groups needs (name, parameter) pairs to match custom_keys; got a bare "
                f"{type(item).__name__}"
            )
        name, param = item
        rule = next((custom_keys[k] for k in keys if k in name), {})
        setting = (lr * rule.get("lr_mult", 1.0), weight_decay * rule.get("decay_mult", 1.0))
        groups.setdefault(setting, []).append(param)
    return optimizer(
        params=[
            {"params": ps, "lr": g_lr, "weight_decay": g_wd} for (g_lr, g_wd), ps in groups.items()
        ],
        lr=lr,
        weight_decay=weight_decay,
    )


def _warmup_factor(step: int, warmup_iters: int, warmup_ratio: float) -> float:
    """mmcv's linear warm-up: ``1 - (1 - step / warmup_iters) * (1 - warmup_ratio)``."""
    if step >= warmup_iters:
        return 1.0
    return 1.0 - (1.0 - step / warmup_iters) * (1.0 - warmup_ratio)


def warmup_poly(
    optimizer: torch.optim.Optimizer,
    total_iters: int,
    power: float = 1.0,
    min_lr_ratio: float = 0.0,
    warmup_iters: int = 0,
    warmup_ratio: float = 1e-6,
) -> LambdaLR:
    """``lr = (base - min) * (1 - step / total)^power + min`` times the warm-up factor
    (mmcv ``poly`` with ``min_lr = min_lr_ratio * base``; BTS: power 0.9, end lr 0.1 x base)."""
    if total_iters < 1 or warmup_iters < 0:
        raise ValueError(
            f"need total_iters >= 1 and warmup_iters >= 0; got {total_iters}, {warmup_iters}"
        )

    def factor(step: int) -> float:
        progress = min(step, total_iters) / total_iters
        regular = (1.0 - min_lr_ratio) * (1.0 - progress) ** power + min_lr_ratio
        return regular * _warmup_factor(step, warmup_iters, warmup_ratio)

    return LambdaLR(optimizer, factor)


def warmup_multistep(
    optimizer: torch.optim.Optimizer,
    total_iters: int,
    milestones: Sequence[float],
    gamma: float = 0.1,
    warmup_iters: int = 0,
    warmup_ratio: float = 1e-3,
) -> LambdaLR:
    """``lr = base * gamma^(milestones passed)`` times the warm-up factor; ``milestones`` are
    fractions of ``total_iters`` in (0, 1] (mmdetection 1x: ``[8/12, 11/12]``)."""
    if any(not 0 < m <= 1 for m in milestones):
        raise ValueError(f"milestones are fractions of the run in (0, 1]; got {list(milestones)}")
    steps = sorted(round(m * total_iters) for m in milestones)

    def factor(step: int) -> float:
        passed = sum(step >= s for s in steps)
        return gamma**passed * _warmup_factor(step, warmup_iters, warmup_ratio)

    return LambdaLR(optimizer, factor)
