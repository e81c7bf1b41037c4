"""uplab.analysis.runs (``uplab-runs``) on the fixture sweep (tests/fixtures/runs/sweep: seven
trials of a FADE sweep; two seeds of one setting, that setting again on a longer schedule, one
diverged, one without results.json, one failed)."""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from uplab.analysis import runs as ru

FIXTURE = Path(__file__).parents[1] / "fixtures" / "runs"
SWEPT = ["task.optimizer.lr", "upsampler.embedding_dim", "upsampler.kernel_size"]


@pytest.fixture(scope="module")
def sweep():
    return ru.load_runs(FIXTURE / "sweep")


def test_swept_overrides_become_columns_and_seeds_of_one_setting_are_averaged(sweep):
    table = ru.compare(sweep)
    assert list(table.columns[:4]) == ["task", *SWEPT]
    line = table[(table["upsampler.kernel_size"] == "5") & (table["trainer.max_epochs"] == "4")]
    assert len(line) == 1 and line["seeds"].iloc[0] == 2
    assert line["mIoU"].iloc[0] == pytest.approx((0.47 + 0.45) / 2)
    assert line["mIoU_std"].iloc[0] == pytest.approx(0.0141421, rel=1e-4)


def test_runs_whose_other_settings_differ_are_never_averaged(sweep):
    # trial 3 has trial 1's overrides but ran on 8 epochs (the schedule changed in the config)
    table = ru.compare(sweep)
    same_overrides = table[(table["upsampler.kernel_size"] == "5") & (table["upsampler.embedding_dim"] == "32")]
    assert sorted(same_overrides["trainer.max_epochs"]) == ["4", "8"]
    assert same_overrides.set_index("trainer.max_epochs").loc["8", "mIoU"] == 0.55
    assert table["seeds"].sum() == (sweep["status"] == "finished").sum()
    assert table["mIoU"].iloc[0] == table["mIoU"].max()  # best first


def test_unfinished_failed_and_diverged_runs_are_listed_not_compared(sweep):
    left = ru.unfinished(sweep).set_index("status")
    assert sorted(left.index) == ["diverged", "failed", "unfinished"]
    assert left.loc["diverged", "error"] == "step 6, last finite loss 2.9"
    assert left.loc["failed", "error"].startswith("RuntimeError: CUDA out of memory")
    assert left.loc["unfinished", "upsampler.embedding_dim"] == "16"  # from .hydra/config.yaml
    assert 0.13 not in set(ru.compare(sweep)["mIoU"])  # the diverged run's metric


def test_settings_ignore_seed_paths_and_logger(tmp_path):
    runs = Path(shutil.copytree(FIXTURE / "sweep", tmp_path / "sweep"))
    record = json.loads((runs / "1/results.json").read_text())
    record["config"]["paths"]["root_dir"] = "/elsewhere"
    record["config"]["logger"] = None
    (runs / "1/results.json").write_text(json.dumps(record))
    table = ru.compare(ru.load_runs(runs))
    assert not [c for c in table.columns if c == "seed" or c.startswith(("paths", "logger"))]
    assert table["seeds"].max() == 2


def test_uplab_runs_prints_the_comparison_and_says_when_there_is_nothing(capsys, tmp_path):
    assert ru.main([str(FIXTURE / "sweep")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("7 runs, 4 finished")
    assert "| segmentation | 0.002 | 32 | 5 | 4 | 2 | 0.46 ± 0.01414 |" in out
    assert "| diverged | step 6, last finite loss 2.9 |" in out
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as empty:
        ru.main([str(tmp_path / "empty")])
    assert empty.value.code == 1 and "no runs under" in capsys.readouterr().err
    with pytest.raises(SystemExit) as absent:
        ru.main([str(tmp_path / "absent")])
    assert absent.value.code == 2 and "no run directory at" in capsys.readouterr().err


def test_offline_wandb_runs_are_read_from_their_run_directories():
    offline = ru.wandb_offline_runs(FIXTURE)
    assert list(offline["wandb_offline"]) == ["swp0abcd"]
    assert offline["final/mIoU"].iloc[0] == 0.41


def test_online_wandb_runs_map_to_the_same_columns():
    summary = SimpleNamespace(_json_dict={"val/mIoU": 0.5, "best/val/mIoU": 0.6, "_step": 9})
    fake = SimpleNamespace(
        runs=lambda project: [SimpleNamespace(id="a1", state="finished", config={"upsampler": {"kernel_size": k}}, summary=summary) for k in (3, 5)]
    )
    table = ru.compare(ru.wandb_runs("me/uplab", api=fake))
    assert list(table["upsampler.kernel_size"]) == ["3", "5"] and list(table["mIoU"]) == [0.5, 0.5]
    assert ru.compare(ru.wandb_runs("me/uplab", api=fake), which="best")["mIoU"].iloc[0] == 0.6


def test_multirun_ends_with_the_comparison_table(capsys):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    GlobalHydra.instance().clear()  # another test's compose may have left it initialized
    with initialize_config_dir(config_dir=str(Path(__file__).parents[2] / "conf"), version_base="1.3"):
        cfg = compose("train", return_hydra_config=True)
    callback = instantiate(cfg.hydra.callbacks.compare_runs)
    callback.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(FIXTURE / "sweep")}}}))
    assert "| segmentation | 0.002 | 32 | 5 | 8 | 1 | 0.55 | 0.31 |" in capsys.readouterr().out


def test_default_folder_is_outputs_with_runs_else_the_fixture_runs_with_a_message(tmp_path, monkeypatch):
    monkeypatch.delenv("UPLAB_RUNS", raising=False)
    folder, why = ru.default_folder(tmp_path)
    assert folder == tmp_path / "tests/fixtures/runs" and "no runs under" in why
    shutil.copytree(FIXTURE / "sweep", tmp_path / "outputs/multiruns/sweep")
    assert ru.default_folder(tmp_path)[0] == tmp_path / "outputs"
    monkeypatch.setenv("UPLAB_RUNS", str(FIXTURE))
    assert ru.default_folder(tmp_path)[0] == FIXTURE


def test_a_folder_of_several_tasks_gives_one_table_per_task_with_seeds_averaged(tmp_path):
    # A table's folder (outputs/tables/toy): every run overrides task=<its task> and
    # trainer.default_root_dir=<its own directory>; neither may split the seeds of one setting,
    # and each task's table lists its own metrics only.
    source = json.loads((FIXTURE / "sweep" / "1" / "results.json").read_text())
    for task, metric, value in (("segmentation", "mIoU", 0.5), ("depth", "d1", 0.7)):
        for seed in (0, 1):
            run = tmp_path / task / f"seed{seed}"
            (run / ".hydra").mkdir(parents=True)
            record = json.loads(json.dumps(source))
            record["config"]["task"]["_target_"] = f"uplab.tasks.{task.capitalize()}Task"
            record["config"]["seed"] = seed
            record["metrics"].update(monitor=f"val/{metric}", final={f"val/{metric}": value + seed / 10})
            (run / "results.json").write_text(json.dumps(record))
            (run / ".hydra" / "overrides.yaml").write_text(
                f"- task={task}\n- seed={seed}\n- trainer.default_root_dir={run}\n"
            )
    runs = ru.load_runs(tmp_path)
    text = ru.report(runs)
    assert "### depth" in text and "### segmentation" in text
    depth, segmentation = text.split("### depth")[1].split("### segmentation")
    assert "d1" in depth and "mIoU" not in depth and "mIoU" in segmentation and "d1" not in segmentation
    table = ru.compare(runs[runs["task"] == "depth"])
    assert list(table["seeds"]) == [2] and table["d1"].iloc[0] == pytest.approx(0.75)
    both = ru.compare(runs)  # `uplab-runs --format csv` and the notebook compare the whole folder
    assert list(both.columns).count("task") == 1 and sorted(both["seeds"]) == [2, 2]
