"""scripts/reproduce_table.py: grid planning, resume (complete runs skipped, the rest redone),
failed runs shown in the table, the paper tables' configs, and one tiny end-to-end grid."""

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from uplab.analysis import records as rec

ROOT = Path(__file__).parents[2]
spec = importlib.util.spec_from_file_location("reproduce_table", ROOT / "scripts" / "reproduce_table.py")
rt = importlib.util.module_from_spec(spec)
sys.modules["reproduce_table"] = rt
spec.loader.exec_module(rt)

FIXTURE = ROOT / "tests" / "fixtures" / "results" / "toy"
TINY = {
    "name": "tiny",
    "description": "Smallest schedule.",
    "seeds": [0],
    "overrides": [
        "logger=none", "callbacks.model_checkpoint=null", "callbacks.rich_progress_bar=null",
        "+trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false",
        "+trainer.enable_checkpointing=false", "trainer.max_epochs=1", "+trainer.limit_train_batches=1",
        "+trainer.limit_val_batches=1", "data.batch_size=2", "decoder.embed_dim=16",
        "+callbacks.predictions={_target_:uplab.analysis.predictions.SavePredictions}",
    ],
    "tasks": {
        "segmentation": {
            "overrides": ["task=segmentation"], "metrics": ["mIoU", "bIoU"], "scale": {"mIoU": 100},
            "baseline": "bilinear", "rows": ["bilinear", "carafe"],
        }
    },
}


def write_table(tmp_path, table=TINY):
    path = tmp_path / f"{table['name']}.yaml"
    OmegaConf.save(OmegaConf.create(table), path)
    return str(path)


def test_plan_runs_keys_directories_by_table_task_row_seed(tmp_path):
    table = rt.load_table("toy")
    runs = rt.plan_runs(table, tmp_path)
    n_rows = sum(len(t.rows) for t in table.tasks.values())
    assert len(runs) == n_rows * len(table.seeds)
    assert len({r.run_dir for r in runs}) == len(runs)
    seed = max(table.seeds)
    run = next(r for r in runs if r.task == "detection" and r.row == "fade" and r.seed == seed)
    assert run.run_dir == tmp_path / "toy" / "detection" / "fade" / f"seed{seed}"
    assert run.overrides[-3:] == ("task=detection", "upsampler=fade", f"seed={seed}")
    assert runs[0].seed == 0 and runs[-1].seed == max(table.seeds)  # seed-major
    assert rt.plan_runs(table, tmp_path) == runs  # deterministic


def test_every_table_config_plans_and_paper_tables_name_existing_or_listed_experiments(tmp_path):
    for name in rt.available_tables():
        table = rt.load_table(name)
        runs = rt.plan_runs(table, tmp_path)
        assert runs, name
        missing = rt.missing_experiments(runs)
        named = {o.split("=", 1)[1] for r in runs for o in r.overrides if o.startswith("experiment=")}
        assert set(missing) <= named
        if "model" in table:
            assert named, f"paper table {name} names no experiment configs"


def test_unknown_table_and_task_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="available: .*toy"):
        rt.load_table("nope")
    with pytest.raises(ValueError, match="not in table"):
        rt.plan_runs(rt.load_table("toy"), tmp_path, ["classification"])


def test_missing_experiment_configs_fail_listing_them(tmp_path, capsys):
    table = dict(TINY, name="needs", tasks={"segmentation": dict(TINY["tasks"]["segmentation"], rows={"x": ["experiment=paper/not_there_a"], "y": ["experiment=paper/not_there_b"]})})
    with pytest.raises(SystemExit):
        rt.main(["--table", write_table(tmp_path, table), "--runs-dir", str(tmp_path / "runs"), "--no-cost"])
    err = capsys.readouterr().err
    assert "conf/experiment/paper/not_there_a.yaml" in err and "conf/experiment/paper/not_there_b.yaml" in err


def _copy_fixture_run(fixture_row, run):
    shutil.copytree(FIXTURE / "segmentation" / fixture_row / "seed0", run.run_dir)
    rec.write_run_key(run.run_dir, {"table": run.table, "task": run.task, "row": run.row, "seed": run.seed, "overrides": list(run.overrides)})


def test_resume_skips_complete_runs_and_redoes_the_rest(tmp_path, monkeypatch):
    runs = rt.plan_runs(rt.load_table(write_table(tmp_path)), tmp_path / "runs")
    done, todo = runs
    _copy_fixture_run("bilinear", done)
    _copy_fixture_run("carafe", todo)
    record = json.loads((todo.run_dir / "results.json").read_text())
    record["status"] = "interrupted"
    (todo.run_dir / "results.json").write_text(json.dumps(record))
    trained = []
    monkeypatch.setattr(rt, "train_run", lambda run: trained.append(run) or "finished")
    counts = rt.run_local(runs, progress=False)
    assert trained == [todo]
    assert counts == {"skipped": 1, "finished": 1, "failed": 0}


def test_complete_run_of_other_overrides_is_redone(tmp_path, monkeypatch):
    runs = rt.plan_runs(rt.load_table(write_table(tmp_path)), tmp_path / "runs")
    for run, row in zip(runs, ("bilinear", "carafe"), strict=True):
        _copy_fixture_run(row, run)
    changed = dict(TINY, overrides=[*TINY["overrides"], "trainer.max_epochs=2"])
    replanned = rt.plan_runs(rt.load_table(write_table(tmp_path, changed)), tmp_path / "runs")
    trained = []
    monkeypatch.setattr(rt, "train_run", lambda run: trained.append(run) or "finished")
    assert rt.run_local(runs, progress=False)["skipped"] == 2
    rt.run_local(replanned, progress=False)
    assert trained == replanned


def test_failed_run_is_recorded_and_shown_in_the_table(tmp_path, monkeypatch):
    import uplab.train

    def broken(cfg):
        raise RuntimeError(f"upsampler {cfg.upsampler.name} exploded\nmore detail")

    monkeypatch.setattr(uplab.train, "train", broken)
    table = write_table(tmp_path)
    rt.main(["--table", table, "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "out"), "--no-cost", "--no-progress", "--no-figures"])
    failure = json.loads((tmp_path / "runs/tiny/segmentation/carafe/seed0" / rec.FAILURE_FILE).read_text())
    assert failure["error"] == "RuntimeError: upsampler carafe exploded"
    md = (tmp_path / "out/tables/tiny.md").read_text()
    assert "| carafe | failed | failed |" in md and "1/1 runs failed: RuntimeError: upsampler carafe exploded" in md


@pytest.mark.slow
def test_tiny_grid_end_to_end_then_resume_trains_nothing(tmp_path, monkeypatch):
    table = write_table(tmp_path)
    args = ["--table", table, "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "out"), "--no-cost", "--no-progress"]
    assert rt.main(args) == 0
    runs_dir = tmp_path / "runs" / "tiny" / "segmentation"
    for row in ("bilinear", "carafe"):
        assert rec.is_complete(runs_dir / row / "seed0")
        assert (runs_dir / row / "seed0" / "predictions.npz").is_file()
    md = (tmp_path / "out/tables/tiny.md").read_text()
    summary = rt.task_tables(rt.load_table(table), rec.load_records(tmp_path / "runs" / "tiny"))["segmentation"]
    assert f"{summary.loc['carafe', 'mIoU']:.2f}" in md
    assert summary.loc["carafe", "d_params"] > 0 and summary.loc["bilinear", "d_params"] == 0
    assert {p.name for p in (tmp_path / "out/figures").iterdir()} == {"tiny_segmentation_accuracy_cost.png", "tiny_qualitative.png"}
    for suffix in ("csv", "tex"):
        assert (tmp_path / f"out/tables/tiny.{suffix}").stat().st_size > 0
    monkeypatch.setattr(rt, "train_run", lambda run: pytest.fail(f"{run.label} was complete but ran again"))
    assert rt.main(args) == 0


def test_readme_markers_replaced_or_appended():
    text = "intro\n<!-- toy-table:begin -->\nold\n<!-- toy-table:end -->\nrest\n"
    replaced = rt.replace_between(text, "toy-table", "new")
    assert replaced == "intro\n<!-- toy-table:begin -->\nnew\n<!-- toy-table:end -->\nrest\n"
    appended = rt.replace_between("intro\n", "cost-table", "costs")
    assert appended.endswith("<!-- cost-table:begin -->\ncosts\n<!-- cost-table:end -->\n")


def test_slurm_commands_cover_incomplete_seeds_in_deterministic_directories(tmp_path):
    table = dict(TINY, seeds=[0, 1])
    runs = rt.plan_runs(rt.load_table(write_table(tmp_path, table)), tmp_path / "runs")
    _copy_fixture_run("bilinear", runs[0])
    commands = rt.slurm_commands(runs, "submitit_slurm")
    assert len(commands) == 2
    bilinear = next(c for c in commands if "upsampler=bilinear" in c)
    carafe = next(c for c in commands if "upsampler=carafe" in c)
    assert "seed=1" in bilinear and "seed=0,1" in carafe
    assert f"hydra.sweep.dir={tmp_path / 'runs/tiny/segmentation/carafe'}" in carafe
    assert "hydra/launcher=submitit_slurm" in carafe and "hydra.sweep.subdir=seed${seed}" in carafe
