"""One fast_dev_run step of every task with each of the operators the papers compare."""

from __future__ import annotations

import json

import pytest
import torch

from uplab.train import train
from uplab.upsamplers import available

TASKS = ["segmentation", "depth", "matting", "detection"]
UPSAMPLERS = ["bilinear", "carafe", "sapa_g", "fade", "dysample"]


@pytest.mark.parametrize("upsampler", UPSAMPLERS)
@pytest.mark.parametrize("task", TASKS)
def test_fast_dev_run(compose_tiny, tmp_path, task, upsampler):
    if upsampler not in available():
        pytest.skip(f"upsampler {upsampler!r} is not registered in this checkout")
    cfg = compose_tiny(task, f"upsampler={upsampler}")
    metrics = train(cfg)
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["status"] == "finished"
    assert record["config"]["upsampler"]["name"] == upsampler
    assert metrics["monitor"] in metrics["final"]
    assert record["cost"]["params"]["total"] > 0
    learned = upsampler != "bilinear"
    assert (record["cost"]["params"]["upsamplers"] > 0) == learned


def test_task_and_data_must_match(compose_tiny):
    cfg = compose_tiny("depth", "data=toy_seg")
    with pytest.raises(ValueError, match="DepthTask trains on depth data"):
        train(cfg)


def test_scheduler_gets_the_run_length(compose_tiny):
    """PolynomialLR decays to zero over exactly the run's optimizer steps."""
    from uplab.tasks.base import _call_scheduler

    cfg = compose_tiny("segmentation")
    from hydra.utils import instantiate

    scheduler_factory = instantiate(cfg.task.scheduler)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = _call_scheduler(scheduler_factory, optimizer, total_steps=4)
    lrs = []
    for _ in range(4):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([1.0, 0.75, 0.5, 0.25])
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0)


def test_non_finite_training_loss_ends_the_run_as_diverged(compose_tiny, tmp_path):
    cfg = compose_tiny(
        "segmentation", "trainer=cpu", "trainer.max_epochs=2", "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=1", "task.optimizer.lr=1e12", "task.scheduler=null",
    )
    metrics = train(cfg)
    record = json.loads((tmp_path / "results.json").read_text(), parse_constant=_reject)
    assert record["status"] == "diverged"
    divergence = record["divergence"]
    assert divergence["step"] >= 1 and divergence["loss"] is None and "loss" in record["non_finite"][0]
    assert divergence["last_finite_loss"] > 0
    # no validation of the diverged weights: nothing is ranked from them
    assert all(h["step"] < divergence["step"] for h in metrics["history"])
    assert not (tmp_path / "last.ckpt").exists()


def _reject(constant: str):
    raise AssertionError(f"{constant} is not JSON")


@pytest.mark.parametrize(
    "overrides",
    [["trainer.max_epochs=0"], ["+trainer.limit_val_batches=0"]],
    ids=["max_epochs=0", "limit_val_batches=0"],
)
def test_run_without_a_validation_result_is_not_finished(compose_tiny, tmp_path, overrides):
    train(compose_tiny("segmentation", "trainer=cpu", "trainer.max_epochs=1", "+trainer.limit_train_batches=1", *overrides))
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["status"] == "not_evaluated" and "val/mIoU" in record["message"]
    assert record["metrics"]["final"] == {} and record["metrics"]["best"] == {}


def test_metric_with_nothing_to_evaluate_is_left_unlogged(compose_tiny, tmp_path, monkeypatch):
    from uplab.metrics import NothingToEvaluate, SegmentationMetrics

    def nothing(self):
        raise NothingToEvaluate("no labelled pixel in the validation set")

    monkeypatch.setattr(SegmentationMetrics, "compute", nothing)
    train(compose_tiny("segmentation"))
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["status"] == "not_evaluated"
    assert "no labelled pixel in the validation set" in record["message"]
    assert "val/mIoU" not in record["metrics"]["final"]


def test_best_validation_is_never_a_non_finite_one():
    from uplab.tasks.callbacks import MetricHistory

    history = MetricHistory("val/mIoU", "max")
    history.history = [{"step": s, "epoch": s, "metrics": {"val/mIoU": v}}
                       for s, v in enumerate([0.2, float("inf"), float("nan"), 0.3, 0.1])]
    assert history.best()["step"] == 3
