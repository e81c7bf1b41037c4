"""mmcv-style parameter groups and the warm-up poly / multistep schedules."""

from functools import partial

import pytest
import torch
from torch import nn

from uplab.tasks.optim import param_groups, warmup_multistep, warmup_poly


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.ModuleDict({"fc": nn.Linear(2, 2), "norm": nn.LayerNorm(2)})
        self.decoder = nn.ModuleDict({"norm": nn.LayerNorm(2), "proj": nn.Linear(2, 2)})


def groups_by_name(optimizer, model):
    names = {id(p): n for n, p in model.named_parameters()}
    return {
        names[id(p)]: (g["lr"], g["weight_decay"])
        for g in optimizer.param_groups
        for p in g["params"]
    }


def test_param_groups_follow_mmcv_key_order():
    model = Tiny()
    optimizer = param_groups(
        list(model.named_parameters()),
        partial(torch.optim.AdamW),
        {"norm": {"decay_mult": 0.0}, "decoder": {"lr_mult": 10.0}},
        lr=1.0,
        weight_decay=0.5,
    )
    groups = groups_by_name(optimizer, model)
    assert groups["backbone.fc.weight"] == (1.0, 0.5)
    assert groups["backbone.norm.weight"] == (1.0, 0.0)  # norm: no decay
    assert groups["decoder.norm.weight"] == (10.0, 0.5)  # "decoder" is longer, so it wins
    assert groups["decoder.proj.bias"] == (10.0, 0.5)


def test_param_groups_need_names_and_known_rules():
    model = Tiny()
    with pytest.raises(ValueError, match="name, parameter"):
        param_groups(list(model.parameters()), torch.optim.SGD, {}, lr=1.0)
    with pytest.raises(ValueError, match="lr_mult and decay_mult"):
        param_groups(list(model.named_parameters()), torch.optim.SGD, {"x": {"lr": 2}}, lr=1.0)


def lrs(scheduler, steps):
    out = []
    for _ in range(steps):
        out.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def test_warmup_poly_matches_mmcv_by_hand():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    values = lrs(
        warmup_poly(optimizer, total_iters=10, power=1.0, warmup_iters=4, warmup_ratio=0.0), 10
    )
    # step k: (1 - k/10) * (1 - (1 - k/4)) during warm-up, (1 - k/10) after it
    expected = [(1 - k / 10) * min(k / 4, 1.0) for k in range(10)]
    assert values == pytest.approx(expected)


def test_warmup_poly_mid_schedule_at_power_09_by_hand():
    # mmcv's poly with linear warm-up, 10 steps, power 0.9, min_lr 0.1 x base, warm-up 4 steps
    # from ratio 1e-6. Step 2 (warming up): regular = 0.9 * 0.8^0.9 + 0.1, warm-up factor
    # 1 - (1 - 2/4) * (1 - 1e-6); step 6: 0.9 * 0.4^0.9 + 0.1, no warm-up.
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    values = lrs(
        warmup_poly(optimizer, total_iters=10, power=0.9, min_lr_ratio=0.1, warmup_iters=4), 7
    )
    assert values[2] == pytest.approx(2.0 * (0.9 * 0.8**0.9 + 0.1) * (1 - 0.5 * (1 - 1e-6)))
    assert values[6] == pytest.approx(2.0 * (0.9 * 0.4**0.9 + 0.1))


def test_warmup_poly_ends_at_the_min_ratio():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    scheduler = warmup_poly(optimizer, total_iters=5, power=0.9, min_lr_ratio=0.1)
    assert lrs(scheduler, 6)[-1] == pytest.approx(0.2)


def test_warmup_multistep_drops_at_fractions_of_the_run():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    values = lrs(warmup_multistep(optimizer, total_iters=12, milestones=[8 / 12, 11 / 12]), 12)
    assert values == pytest.approx([1.0] * 8 + [0.1] * 3 + [0.01])
    with pytest.raises(ValueError, match="fractions"):
        warmup_multistep(optimizer, total_iters=12, milestones=[8])
