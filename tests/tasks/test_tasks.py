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
