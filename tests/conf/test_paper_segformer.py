"""The SegFormer-B1 / ADE20K paper rows as built from their config: what the recipe
(reference/recipes/segformer_b1_ade20k.yaml) holds in code rather than in a config key."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from uplab.tasks.build import build_task
from uplab.train import config_dir


def test_segformer_table_reports_the_best_evaluation_of_each_run():
    spec = OmegaConf.load(Path(config_dir()) / "table" / "paper-segformer.yaml")
    assert spec.which == "best"


def test_paper_row_trains_every_parameter_in_the_released_groups():
    """Nothing is frozen; mmcv's custom_keys give the decode head (uplab's decoder and head) lr
    x10 with decay, the backbone's LayerNorms no decay, the rest lr 6e-5 and decay 0.01."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["experiment=paper/bilinear_segformer_b1_ade20k", "backbone.checkpoint=null"],
        )
    module = build_task(cfg, SimpleNamespace(num_classes=150, ignore_index=255))
    named = list(module.named_parameters())
    assert all(p.requires_grad for _, p in named)
    optimizer = module.optimizer_factory(params=named)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    setting = {
        n: pytest.approx((group_of[id(p)]["lr"], group_of[id(p)]["weight_decay"]), rel=1e-12)
        for n, p in named
    }
    assert setting["model.head.weight"] == (6e-4, 0.01)
    assert setting["model.decoder.linear_fuse.1.weight"] == (6e-4, 0.01)  # BatchNorm in the head
    assert setting["model.backbone.stages.0.blocks.0.norm1.weight"] == (6e-5, 0.0)
    assert setting["model.backbone.stages.0.blocks.0.attn.reduce_norm.weight"] == (6e-5, 0.0)
    assert setting["model.backbone.stages.0.embed.proj.weight"] == (6e-5, 0.01)
    assert module.model.backbone.stages[-1].blocks[-1].drop_path == pytest.approx(
        0.1
    )  # the last block
