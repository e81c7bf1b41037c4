"""uplab-train end to end: every experiment file through the CLI, the run directory and resume,
an interrupted-then-resumed run equal to an uninterrupted one, DDP with two processes over gloo,
and an offline W&B run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from uplab.train import MAX_RUN_NAME, config_dir, resolve_checkpoint, run_name, train

pytestmark = pytest.mark.slow

# the toy rows; the paper rows need their datasets (tests/conf/test_paper_experiments.py runs them)
EXPERIMENTS = sorted(f"toy/{p.stem}" for p in (Path(config_dir()) / "experiment" / "toy").glob("*.yaml"))
TINY = [
    "backbone.name=test_resnet",
    "data.toy.num_train=8",
    "data.toy.num_val=4",
    "data.toy.image_size=64",
    "data.batch_size=4",
    "~callbacks.rich_progress_bar",
]
ENV = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("data"))


def uplab_train(cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "uplab.train", *overrides],
        cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def run_records(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(root.rglob("results.json"))]


def test_every_experiment_file_through_the_cli(tmp_path, data_dir):
    uplab_train(
        tmp_path, "-m", f"experiment={','.join(EXPERIMENTS)}", *TINY, "trainer=debug",
        "logger=none", f"paths.data_dir={data_dir}", f"hydra.sweep.dir={tmp_path / 'multi'}",
    )
    records = run_records(tmp_path / "multi")
    assert len(records) == len(EXPERIMENTS)
    ran = sorted("_".join(r["config"]["tags"][1:3]) for r in records)
    expected = sorted(e.removeprefix("toy/").replace("seg_", "segmentation_").replace("det_", "detection_") for e in EXPERIMENTS)
    assert ran == expected
    assert all(r["status"] == "finished" and r["metrics"]["final"] for r in records)


def test_same_command_with_resume_continues_in_its_run_directory(tmp_path, data_dir):
    command = [*TINY, "trainer.max_epochs=1", "logger=csv", f"paths.data_dir={data_dir}", "seed=3"]
    uplab_train(tmp_path, *command)
    run_dir = tmp_path / "outputs" / "runs" / "segmentation"
    (first_dir,) = [p for p in run_dir.iterdir() if p.is_dir()]
    assert "seed=3" in first_dir.name and (first_dir / "last.ckpt").is_file()
    first = json.loads((first_dir / "results.json").read_text())

    resumed = uplab_train(tmp_path, *command, "resume=true")
    assert [p for p in run_dir.iterdir() if p.is_dir()] == [first_dir]
    assert "Restoring states from the checkpoint" in resumed.stdout + resumed.stderr
    second = json.loads((first_dir / "results.json").read_text())
    # nothing left to train: the record keeps the first job's history, restored from last.ckpt
    assert second["metrics"]["history"] == first["metrics"]["history"]
    assert first["cost"]["params"]["total"] > 0 and first["cost"]["flops"]["total"] > 0


def _compose(task: str, run_dir: Path, data_dir: str, *overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[f"task={task}", *TINY, "data.toy.image_size=32", "decoder.embed_dim=32",
                       f"paths.data_dir={data_dir}", *overrides],
            return_hydra_config=True,
        )
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
        del cfg.hydra
    GlobalHydra.instance().clear()
    return cfg


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, data_dir):
    common = ["trainer.max_epochs=3", "logger=none", "seed=1"]
    reference = train(_compose("segmentation", tmp_path / "ref", data_dir, *common))

    stop = ["+callbacks.stop._target_=uplab.tasks.callbacks.StopAtEpoch", "+callbacks.stop.epochs=1"]
    interrupted = train(_compose("segmentation", tmp_path / "split", data_dir, *common, *stop))
    assert len(interrupted["history"]) == 1
    resumed = train(_compose("segmentation", tmp_path / "split", data_dir, *common, "resume=true"))

    assert [h["step"] for h in resumed["history"]] == [h["step"] for h in reference["history"]]
    for got, expected in zip(resumed["history"], reference["history"], strict=True):
        assert got["metrics"] == pytest.approx(expected["metrics"], rel=1e-5, abs=1e-6)
    assert resumed["final"] == pytest.approx(reference["final"], rel=1e-5, abs=1e-6)


def test_ddp_two_processes_one_output_directory(tmp_path, data_dir):
    uplab_train(
        tmp_path, *TINY, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
        "trainer.sync_batchnorm=false", "trainer.max_epochs=1", "logger=csv",
        f"paths.data_dir={data_dir}",
    )
    runs = [p for p in (tmp_path / "outputs").rglob("*") if p.is_dir() and p.parent.name == "segmentation"]
    assert len(runs) == 1
    (record,) = run_records(tmp_path / "outputs")
    assert record["config"]["trainer"]["devices"] == 2
    assert record["metrics"]["final"]["val/mIoU"] >= 0


def test_wandb_offline_run_directory(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = _compose(
        "segmentation", tmp_path, data_dir, "logger=wandb", "trainer.max_epochs=1",
        "+trainer.limit_train_batches=1", "+trainer.limit_val_batches=1",
    )
    train(cfg)
    record = json.loads((tmp_path / "results.json").read_text())
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and runs[0].name.endswith(record["wandb_run_id"])
    assert any(runs[0].rglob("*.wandb"))
    # the validation figure (input, prediction, ground truth, upsampled feature) was logged
    assert any(runs[0].rglob("media/images/val/figure_*.png"))


def test_run_name_is_bounded_unique_and_stable():
    assert run_name("") == "default"
    assert run_name("experiment=toy/seg_fade,seed=1") == "experiment=toy_seg_fade,seed=1"
    long_a, long_b = "x=" + "a" * 300, "x=" + "a" * 299 + "b"
    assert len(run_name(long_a)) == MAX_RUN_NAME and run_name(long_a) == run_name(long_a)
    assert run_name(long_a) != run_name(long_b)


def test_resolve_checkpoint(tmp_path):
    assert resolve_checkpoint(False, tmp_path) is None
    assert resolve_checkpoint(True, tmp_path) is None  # nothing yet: start from scratch
    (tmp_path / "last.ckpt").write_bytes(b"")
    assert resolve_checkpoint(True, tmp_path) == str(tmp_path / "last.ckpt")
    assert resolve_checkpoint(str(tmp_path), tmp_path / "elsewhere") == str(tmp_path / "last.ckpt")
    with pytest.raises(ValueError, match="does not exist"):
        resolve_checkpoint(str(tmp_path / "missing.ckpt"), tmp_path)
