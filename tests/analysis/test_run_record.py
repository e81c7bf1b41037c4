import json
import os
import stat

import pytest

from uplab.analysis.run_record import (
    RESULTS_FILE,
    git_commit,
    read_run_record,
    write_json_atomic,
    write_run_record,
)


def test_run_record_round_trips_and_leaves_no_temporary_file(tmp_path):
    path = write_run_record(
        tmp_path,
        config={"seed": 1},
        metrics={"monitor": "val/mIoU", "final": {"val/mIoU": 0.5}, "best": {"val/mIoU": 0.6}, "best_step": 7},
        cost={"params": {"total": 10, "upsamplers": 2}, "flops": None},
        wall_time_s=1.23456,
        wandb_run_id="abc",
        commit="deadbeef",
    )
    assert path == tmp_path / RESULTS_FILE
    assert [p.name for p in tmp_path.iterdir()] == [RESULTS_FILE]
    record = read_run_record(tmp_path)
    assert record["metrics"]["best_step"] == 7 and record["wandb_run_id"] == "abc"
    assert record["wall_time_s"] == 1.235 and record["peak_memory_mb"]["cpu_rss"] > 0
    assert record["config"] == {"seed": 1} and record["status"] == "finished"


def test_atomic_write_keeps_the_old_file_when_serialising_fails(tmp_path):
    target = write_json_atomic(tmp_path / "r.json", {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(target, {"a": object()})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_missing_record_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no run record"):
        read_run_record(tmp_path)


def test_git_commit_outside_a_work_tree_is_none(tmp_path):
    assert git_commit(tmp_path) is None


def _record(tmp_path, **kw):
    return write_run_record(
        tmp_path, config={"seed": 1}, cost={"params": {"total": 10, "upsamplers": 2}, "flops": None},
        wall_time_s=1.0, wandb_run_id=None, commit=None, **kw,
    )


def test_non_finite_values_are_written_as_null_and_named(tmp_path):
    metrics = {"monitor": "val/mIoU", "final": {"val/mIoU": float("nan"), "val/loss": float("inf")},
               "history": [{"step": 1, "metrics": {"val/mIoU": 0.5}}]}
    path = _record(tmp_path, metrics=metrics)

    def reject(constant):
        raise AssertionError(f"{constant} is not JSON")

    record = json.loads(path.read_text(), parse_constant=reject)
    assert record["metrics"]["final"] == {"val/mIoU": None, "val/loss": None}
    assert record["non_finite"] == ["metrics.final.val/mIoU", "metrics.final.val/loss"]
    assert record["metrics"]["history"][0]["metrics"]["val/mIoU"] == 0.5


def test_records_are_created_with_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        path = _record(tmp_path, metrics={})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_unknown_status_is_refused(tmp_path):
    with pytest.raises(ValueError, match="status must be one of"):
        _record(tmp_path, metrics={}, status="done")
