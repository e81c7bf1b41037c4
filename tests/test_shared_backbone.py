"""uplab.shared_backbone: a table's stage 0 trains one backbone per task, every row loads it frozen."""

import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from uplab import shared_backbone as sb
from uplab.analysis import records as rec

ROOT = Path(__file__).parents[1]
# imported by name, one module object per process: --jobs pickles its worker functions by name
sys.path.insert(0, str(ROOT / "scripts"))
import reproduce_table as rt  # noqa: E402

TABLE = {
    "name": "probe",
    "seeds": [0],
    "overrides": ["logger=none", "trainer.max_epochs=1"],
    "shared_backbone": {"seed": 5, "overrides": ["trainer.max_epochs=2"]},
    "tasks": {
        "segmentation": {"overrides": ["task=segmentation"], "metrics": ["mIoU"], "baseline": "bilinear",
                         "rows": ["bilinear", "carafe"]},
        "depth": {"overrides": ["task=depth"], "metrics": ["d1"], "baseline": "plain",
                  "rows": [{"plain": ["upsampler=bilinear", "decoder.channels=16"]}, "fade"]},
    },
}


def test_stage_zero_trains_each_task_baseline_then_every_row_loads_its_backbone_frozen(tmp_path):
    table = OmegaConf.create(TABLE)
    stages = {s.task: s for s in sb.plan(table, tmp_path)}
    depth = stages["depth"]
    assert depth.run_dir == tmp_path.resolve() / "probe-backbones" / "depth" and depth.seed == 5
    assert depth.overrides[:5] == ("logger=none", "trainer.max_epochs=1", "task=depth", "upsampler=bilinear",
                                   "decoder.channels=16")
    assert depth.overrides[5] == "trainer.max_epochs=2"  # the stage's schedule after the rows'
    assert str(depth.checkpoint) in depth.overrides[-2] and depth.overrides[-1] == "seed=5"
    assert stages["segmentation"].overrides[3] == "upsampler=bilinear"

    runs = rt.plan_runs(sb.freeze_rows(table, tmp_path), tmp_path)
    for run in runs:
        assert f"+backbone.checkpoint='{stages[run.task].checkpoint}'" in run.overrides
        assert "+backbone.frozen=true" in run.overrides
    assert "+backbone.frozen=true" not in rt.plan_runs(table, tmp_path)[0].overrides  # a copy was changed
    without = OmegaConf.create({k: v for k, v in TABLE.items() if k != "shared_backbone"})
    assert sb.plan(without, tmp_path) == [] and sb.freeze_rows(without, tmp_path) is without
    longer = OmegaConf.merge(table, {"shared_backbone": {"overrides": ["trainer.max_epochs=3"]}})
    assert sb.plan(longer, tmp_path)[0].checkpoint != stages["segmentation"].checkpoint  # rows redo


@pytest.mark.slow
def test_row_backbone_is_the_stage_zero_backbone_after_training(tmp_path):
    """Two steps of stage 0, then one step of a row that saves its own backbone after training:
    the row's backbone must be stage 0's, loaded and left unchanged."""
    row_backbone = tmp_path / "row_backbone.pt"
    table = {
        "name": "probe",
        "seeds": [0],
        "overrides": [
            "logger=none", "callbacks.model_checkpoint=null", "callbacks.rich_progress_bar=null",
            "+trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false",
            "+trainer.enable_checkpointing=false", "trainer.max_epochs=1", "+trainer.limit_train_batches=1",
            "+trainer.limit_val_batches=1", "data.batch_size=4", "data.toy.image_size=32",
            "data.toy.num_train=8", "data.toy.num_val=4", "backbone.name=test_resnet",
            f"paths.data_dir={tmp_path / 'data'}",
        ],
        "shared_backbone": {"seed": 0, "overrides": ["trainer.limit_train_batches=2"]},
        "tasks": {"depth": {
            "overrides": ["task=depth", "decoder.channels=16"], "metrics": ["d1"], "baseline": "bilinear",
            "rows": [{"bilinear": ["upsampler=bilinear", f"+callbacks.save_row={{_target_:uplab.shared_backbone."
                                   f"SaveBackbone,path:'{row_backbone}'}}"]}],
        }},
    }
    path = tmp_path / "probe.yaml"
    OmegaConf.save(OmegaConf.create(table), path)
    args = ["--table", str(path), "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "out"),
            "--no-cost", "--no-progress", "--no-figures"]
    assert rt.main(args) == 0
    assert rec.is_complete(tmp_path / "runs" / "probe" / "depth" / "bilinear" / "seed0")
    assert [d.name for d in (tmp_path / "runs" / "probe" / "depth").iterdir()] == ["bilinear"]  # stage 0 is no row
    (stage_file,) = (tmp_path / "runs" / "probe-backbones" / "depth").glob("backbone-*.pt")
    stage = torch.load(stage_file, weights_only=True)
    row = torch.load(row_backbone, weights_only=True)
    assert row.keys() <= stage.keys() and any("bn1.running_mean" in k for k in row)
    for key, value in row.items():
        torch.testing.assert_close(value, stage[key], rtol=0, atol=0, msg=key)
