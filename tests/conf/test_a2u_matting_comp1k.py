"""The A2U matting rows' recipe fields that live in code or outside the row's config: the optimizer
groups follow the release's name filter (dongdong93/a2u_matting ``scripts/trainval.py``: parameters
named with dconv, pred, short, bconv or bilinear at lr 0.01, the rest at lr / TRAIN.mult = 1e-4)
with each row's released module names, and the table reports the evaluation of least SAD."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from uplab.analysis import cost
from uplab.tasks import MattingTask
from uplab.tasks.build import build_task
from uplab.train import config_dir

MODEL = "a2u_matting_r34"


def learning_rates(upsampler: str) -> dict[str, set[float]]:
    """``{module: {lr of its parameters}}`` for the row's task, modules two levels below the
    backbone and decoder (``decoder.stages.<i>.up`` for the upsamplers)."""
    spec = cost.PAPER_MODELS[MODEL]
    cfg = cost.compose_row(MODEL, upsampler, spec.no_weights)
    with cost.parameters_on_meta():
        task = build_task(cfg, SimpleNamespace(**spec.data))
    optimizer = task.optimizer_factory(params=list(task.named_parameters()))
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    modules: dict[str, set[float]] = {}
    for name, param in task.named_parameters():
        parts = name.removeprefix("model.").split(".")
        module = ".".join(parts[:4] if parts[1] == "stages" else parts[:2])
        modules.setdefault(module, set()).add(lr_of[id(param)])
    return modules


# release name -> lr: the upsampler modules are A2U's `bilinear*` blocks (lr) in the A2U release
# and FADE's `decoder_layer*.up` (lr / 100) in poppinace/fade a2u_matting/decoder.py
@pytest.mark.parametrize(("upsampler", "upsampler_lr"), [("a2u", 1e-2), ("fade", 1e-4)])
def test_encoder_at_lr_over_100_decoder_at_lr_and_the_upsampler_as_released(
    upsampler, upsampler_lr
):
    modules = learning_rates(upsampler)
    encoder = {m: lr for m, lr in modules.items() if m.startswith("backbone.")}
    assert set(encoder) == {
        f"backbone.{m}" for m in ("stem", "layer1", "down2", "layer2", "down3", "layer3")
    }
    assert all(lr == {1e-4} for lr in encoder.values())
    for module in ("aspp", "short0", "short1", "short2", "short3", "pred"):
        assert modules[f"decoder.{module}"] == {1e-2}, module
    for stage in range(4):
        assert modules[f"decoder.stages.{stage}.dconv"] == {1e-2}
        assert modules[f"decoder.stages.{stage}.dconv1"] == {1e-2}
        assert modules[f"decoder.stages.{stage}.up"] == {upsampler_lr}


def test_the_matting_table_reports_the_evaluation_of_least_sad():
    # trainval.py saves model_best.pth when an epoch's SAD is the least so far; test.py reads it
    table = yaml.safe_load((Path(config_dir()) / "table" / "paper-matting.yaml").read_text())
    assert table["which"] == "best"
    assert (MattingTask.monitor, MattingTask.monitor_mode) == ("val/sad", "min")
