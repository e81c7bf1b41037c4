"""Every published row has a config (conf/experiment/paper/), and every row runs end to end
(``fast_dev_run``: one training and one evaluation step) on a tiny fixture in the real dataset's
on-disk format, with its paper's pipelines, model, optimizer groups and schedule.

The rows of one model/dataset pair run in one test (one process, Hydra's compose API), at 64 px
and batch 1, so the whole file stays within CI's budget.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from uplab import weights
from uplab.data.toy import ensure_toy
from uplab.train import config_dir, train

CONF = Path(config_dir())
PAPER = CONF / "experiment" / "paper"
REFERENCE = CONF.parent / "reference" / "paper_results.yaml"

# (model, dataset) of reference/paper_results.yaml -> toy task, overrides that shrink the run
PAIRS = {
    ("segformer_b1", "ade20k"): (
        "segmentation",
        [
            "backbone.checkpoint=null",
            "data.train_pipeline.scale=[128,64]",
            "data.train_pipeline.crop_size=64",
            "data.eval_pipeline.scale=[128,64]",
        ],
    ),
    # batch 2: the ASPP pooling branch batch-normalises a 1x1 map
    ("a2u_matting_r34", "comp1k"): (
        "matting",
        ["paper.backbone.checkpoint=null", "data.train_pipeline.crop_size=64", "data.batch_size=2"],
    ),
    ("bts_r50", "nyuv2"): (
        "depth",
        ["backbone.checkpoint=null", "data.train_pipeline.crop_size=[32,64]"],
    ),
    ("faster_rcnn_r50_fpn", "coco"): (
        "detection",
        ["backbone.checkpoint=null", "task.detector.min_size=64", "task.detector.max_size=64"],
    ),
}
FAST = [
    "scratch_encoder=true",  # the fixture runs leave the released weights out
    "trainer=debug",
    "logger=none",
    "data.batch_size=1",
    "data.eval_batch_size=1",
    "data.num_workers=0",
]


def published_rows() -> set[str]:
    """``<upsampler>_<model>_<dataset>`` for every row of the four pairs' published tables."""
    tables = yaml.safe_load(REFERENCE.read_text())["tables"]
    return {
        f"{upsampler}_{t['model']}_{t['dataset']}"
        for t in tables
        if (t["model"], t["dataset"]) in PAIRS
        for upsampler in t["rows"]
    }


def rows_of(model: str, dataset: str) -> list[str]:
    return sorted(
        p.stem for p in PAPER.glob(f"*_{model}_{dataset}.yaml") if not p.stem.startswith("_")
    )


def compose_row(row: str, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[f"experiment=paper/{row}", *overrides])


def test_every_published_row_has_a_config():
    files = {p.stem for p in PAPER.glob("*.yaml") if not p.stem.startswith("_")}
    assert published_rows() <= files
    assert len(files) == 30


def test_rows_carry_the_published_recipes():
    seg = compose_row("sapa_g_segformer_b1_ade20k", [])
    assert (seg.trainer.max_steps, seg.trainer.val_check_interval) == (160000, 16000)
    assert seg.data.batch_size == 16 and seg.task.optimizer.lr == 6e-5
    assert (
        seg.task.optimizer.custom_keys.head.lr_mult == 10
        and seg.task.scheduler.warmup_iters == 1500
    )
    assert seg.upsampler.embedding_dim == 32 and seg.decoder.embed_dim == 256
    matting = compose_row("sapa_g_a2u_matting_r34_comp1k", [])
    assert matting.upsampler.embedding_dim == 32 and matting.data.train_pipeline.crop_size == 512
    assert (matting.task.composition_weight, matting.task.per_image_loss) == (0.5, True)
    assert matting.backbone.checkpoint.endswith("a2u_resnet34.pth.tar")  # never from scratch
    det = compose_row("carafe_faster_rcnn_r50_fpn_coco", [])
    assert (det.task.optimizer.lr, det.trainer.max_epochs, det.task.detector.min_size) == (
        0.02,
        12,
        800,
    )
    # mmdetection 2.x's faster_rcnn_r50_fpn: the model fields (their parameter counts are held
    # by tests/analysis/test_cost.py)
    detector = det.task.detector
    assert (detector.frozen_stages, detector.norm_eval, detector.box_loss) == (1, True, "l1")
    assert dict(detector.box_roi_align) == {"sampling_ratio": 0, "aligned": True}


@pytest.mark.parametrize(
    ("name", "setting"),
    [(n, s) for n, e in weights.manifest().items() for s in e.settings],
)
def test_each_setting_starts_from_its_released_weights(name, setting):
    # reference/weights.yaml's settings: the base row's encoder loads that entry from the cache,
    # never timm's own download, never random weights
    backbone = compose_row(f"_{setting}", []).backbone
    assert backbone.checkpoint == str(weights.path(name))
    assert not backbone.get("pretrained")


def test_every_paper_setting_has_released_weights():
    settings = {s for e in weights.manifest().values() for s in e.settings}
    assert settings == {f"{model}_{dataset}" for model, dataset in PAIRS}


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper_fixtures")
    sizes = {"num_train": 2, "num_val": 1, "image_size": 64}
    return {task: ensure_toy(task, root, seed=0, **sizes) for task, _ in PAIRS.values()}


@pytest.mark.slow
@pytest.mark.parametrize("pair", list(PAIRS), ids=lambda p: "_".join(p))
def test_every_row_of_a_pair_runs_fast_dev_run(pair, fixtures, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    task, shrink = PAIRS[pair]
    rows = rows_of(*pair)
    assert rows, f"no rows for {pair}"
    for row in rows:
        out = tmp_path / row
        cfg = compose_row(
            row, [*FAST, *shrink, f"data.root={fixtures[task]}", f"paths.output_dir={out}"]
        )
        metrics = train(cfg)
        record = json.loads((out / "results.json").read_text())
        assert record["metrics"]["final"] == metrics["final"] and metrics["final"], row
        assert metrics["best"], row
        # A row's checkpoints are full-size models (a Faster R-CNN R50 is ~500 MB); keeping every
        # row's would fill CI's disk, and nothing later in this test reads them.
        for checkpoint in out.rglob("*.ckpt"):
            checkpoint.unlink()
