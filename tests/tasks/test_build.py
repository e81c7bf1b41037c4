"""Rows of a table built at one seed start from the same weights outside their upsamplers."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch

from uplab.tasks.build import build_task
from uplab.upsamplers.base import Upsampler

DATA = SimpleNamespace(num_classes=5, ignore_index=255)


def split_state(cfg) -> tuple[dict[str, torch.Tensor], int]:
    """The model's state dict without the entries of its upsamplers, and how many those are; the
    model built the way uplab.train builds it (seed everything, then build)."""
    pl.seed_everything(cfg.seed, verbose=False)
    model = build_task(cfg, DATA).model
    prefixes = tuple(f"{name}." for name, m in model.named_modules() if isinstance(m, Upsampler))
    state = model.state_dict()
    rest = {k: v for k, v in state.items() if not k.startswith(prefixes)}
    return rest, len(state) - len(rest)


@pytest.mark.parametrize(
    ("task", "baseline", "last_part"),
    [
        ("segmentation", "bilinear", "head"),  # SegFormer: fusion after the ×2 steps
        ("depth", "bilinear", "head"),  # U-Net: fusion convs after each ×2 step, then the head
        ("detection", "nearest", "roi_heads.box_predictor"),  # built after the FPN
    ],
)
def test_rows_share_every_non_upsampler_weight_at_one_seed(compose_tiny, task, baseline, last_part):
    base, _ = split_state(compose_tiny(task, f"upsampler={baseline}", "seed=3"))
    row, upsampler_entries = split_state(compose_tiny(task, "upsampler=carafe", "seed=3"))
    assert upsampler_entries > 0
    assert base.keys() == row.keys()
    assert any(k.startswith(last_part) for k in base)
    differ = [k for k in base if not torch.equal(base[k], row[k])]
    assert not differ, f"{len(differ)} of {len(base)} entries differ between rows, e.g. {differ[:3]}"
