"""The BTS rows' recipe fields that live in code, on the task a row builds (reference/recipes/
bts_r50_nyuv2.yaml): cleinc/bts ``bts_main.py``'s two AdamW groups and its NYU loss mask.

The rows are composed as they are and shrunk only in size (ResNet-18, a 128-wide decoder, no
pretrained weights), which keeps parameter names and every optimizer and loss field."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from uplab.tasks.build import build_task
from uplab.tasks.depth import silog_loss
from uplab.train import config_dir

SHRINK = ["backbone.name=resnet18", "backbone.checkpoint=null", "decoder.num_features=128"]


@pytest.fixture(scope="module")
def sapa_g_row():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=paper/sapa_g_bts_r50_nyuv2", *SHRINK])
    GlobalHydra.instance().clear()
    torch.manual_seed(0)
    return build_task(cfg, SimpleNamespace(task="depth"))


def test_bts_rows_decay_the_encoder_only_with_adamw_eps_1e_3(sapa_g_row):
    task = sapa_g_row
    named = [(n, p) for n, p in task.named_parameters() if p.requires_grad]
    optimizer = task.optimizer_factory(params=named)
    assert isinstance(optimizer, torch.optim.AdamW)
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert all(g["eps"] == 1e-3 and g["lr"] == 1e-4 for g in optimizer.param_groups)
    encoder = [p for n, p in named if n.startswith("model.backbone.")]
    decoder = [p for n, p in named if n.startswith("model.decoder.")]
    upsampler = [p for n, p in named if ".up." in n]
    assert encoder and upsampler and len(encoder) + len(decoder) == len(named)
    assert {decay[id(p)] for p in encoder} == {1e-2}
    assert {decay[id(p)] for p in decoder} == {0.0}  # the upsamplers' parameters among them


def test_bts_rows_train_on_depth_above_0_1_m_with_variance_focus_085(sapa_g_row):
    # bts_main.py for NYU: mask = depth_gt > 0.1; a 0.05 m reading is left out of the loss
    pred = torch.tensor([2.0, 3.0, 5.0]).view(1, 1, 1, 3)
    gt = torch.tensor([1.0, 3.0, 0.05]).view(1, 1, 1, 3)
    expected = 10 * math.log(2) * math.sqrt(0.5 - 0.85 / 4)  # d = [log 2, 0]
    assert sapa_g_row._loss(pred, gt).item() == pytest.approx(expected, rel=1e-6)
    assert silog_loss(pred, gt, gt > 1e-3).item() != pytest.approx(expected, rel=1e-3)
