"""Run records as a table: reading results.json, failures, completeness (what resume skips)."""

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from uplab.analysis import records as rec

FIXTURE = Path(__file__).parents[1] / "fixtures" / "results" / "toy"


@pytest.fixture
def runs(tmp_path):
    return Path(shutil.copytree(FIXTURE, tmp_path / "toy"))


def test_load_records_one_row_per_run_with_key_metrics_and_cost(runs):
    table = rec.load_records(runs)
    assert len(table) == len(rec.find_run_dirs(runs))
    fade0 = table[(table.task == "segmentation") & (table.row == "fade") & (table.seed == 0)].iloc[0]
    record = json.loads((runs / "segmentation/fade/seed0/results.json").read_text())
    assert fade0["final/mIoU"] == pytest.approx(record["metrics"]["final"]["val/mIoU"])
    assert fade0["params_upsamplers"] == record["cost"]["params"]["upsamplers"]
    assert fade0["flops_total"] == record["cost"]["flops"]["total"]
    assert fade0["monitor"] == "mIoU"
    assert fade0["status"] == "finished"


def test_failed_and_interrupted_runs_are_rows_not_dropped(runs):
    table = rec.load_records(runs).set_index(["task", "row", "seed"])
    failed = table.loc[("segmentation", "sapa_g", 1)]
    assert failed["status"] == "failed"
    assert failed["error"].startswith("RuntimeError: out of memory")
    assert table.loc[("depth", "fade", 0)]["status"] == "interrupted"


def test_diverged_run_is_a_row_with_its_status_and_reason(runs):
    path = runs / "segmentation/carafe/seed0/results.json"
    record = json.loads(path.read_text())
    record.update(status="diverged", divergence={"step": 12, "last_finite_loss": 2.31})
    path.write_text(json.dumps(record))
    row = rec.record_row(path.parent)
    assert row["status"] == "diverged" and not rec.is_complete(path.parent)
    assert row["error"] == "step 12, last finite loss 2.31"


def test_record_that_says_finished_without_a_final_metric_is_not_evaluated(runs):
    path = runs / "segmentation/carafe/seed0/results.json"
    record = json.loads(path.read_text())
    record["metrics"]["final"] = {}
    path.write_text(json.dumps(record))
    assert rec.record_row(path.parent)["status"] == "not_evaluated"


def test_is_complete_only_for_finished_readable_records(runs, tmp_path):
    assert rec.is_complete(runs / "segmentation/bilinear/seed0")
    assert not rec.is_complete(runs / "depth/fade/seed0")  # interrupted
    assert not rec.is_complete(runs / "segmentation/sapa_g/seed1")  # failed, no results.json
    truncated = runs / "segmentation/carafe/seed0/results.json"
    truncated.write_text(truncated.read_text()[:100])
    assert not rec.is_complete(truncated.parent)
    assert not rec.is_complete(tmp_path / "nowhere")


def test_plain_hydra_run_without_run_json_takes_keys_from_config(runs):
    run = runs / "segmentation/carafe/seed1"
    (run / rec.RUN_FILE).unlink()
    row = rec.record_row(run)
    assert (row["task"], row["row"], row["upsampler"], row["seed"]) == ("segmentation", "carafe", "carafe", 1)


def test_write_failure_keeps_first_line_and_clear_failure_forgets_it(tmp_path):
    try:
        raise ValueError("bad shape\nsecond line")
    except ValueError as err:
        rec.write_failure(tmp_path, err, "tb")
    assert rec.record_row(tmp_path)["error"] == "ValueError: bad shape"
    rec.clear_failure(tmp_path)
    assert rec.record_row(tmp_path)["status"] == "unfinished"


def test_training_curves_merge_validation_history_and_csv_training_loss(runs):
    curves = rec.training_curves(runs / "segmentation/fade/seed0")
    history = json.loads((runs / "segmentation/fade/seed0/results.json").read_text())["metrics"]["history"]
    val = curves.dropna(subset=["mIoU"])
    assert list(val["step"]) == [h["step"] for h in history]
    assert curves["train_loss"].notna().sum() == len(pd.read_csv(runs / "segmentation/fade/seed0/csv/metrics.csv")["train/loss"].dropna())
    assert curves["step"].is_monotonic_increasing


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no run directory"):
        rec.load_records(tmp_path / "absent")


def test_cost_columns_nan_when_flops_were_not_counted(runs):
    path = runs / "segmentation/bilinear/seed0/results.json"
    record = json.loads(path.read_text())
    record["cost"]["flops"] = None
    path.write_text(json.dumps(record))
    assert math.isnan(rec.record_row(path.parent)["flops_total"])
