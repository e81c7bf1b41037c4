"""scripts/reproduce_table.py: grid planning, resume (complete runs skipped, the rest redone),
failed runs shown in the table, the paper tables' configs, and one tiny end-to-end grid."""

import json
import shutil
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from uplab.analysis import records as rec

ROOT = Path(__file__).parents[2]
# imported by name, one module object per process: --jobs pickles its worker functions by name
sys.path.insert(0, str(ROOT / "scripts"))
import reproduce_table as rt  # noqa: E402

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


@pytest.mark.parametrize("name", [t for t in rt.available_tables() if t.startswith("paper-")])
def test_paper_tables_are_rendered_with_the_deviations_of_their_recipe(name):
    from uplab import recipes

    table = rt.load_table(name)
    experiments = {o.split("=", 1)[1] for r in rt.plan_runs(table, Path("/nonexistent")) for o in r.overrides if o.startswith("experiment=")}
    assert all(e.endswith(f"_{table.recipe}") for e in experiments), (table.recipe, experiments)
    recipe = recipes.load_recipe(recipes.recipes_dir() / f"{table.recipe}.yaml")
    assert recipes.deviations_markdown([recipe]).strip() in rt.render_paper_table(table, [], "markdown")


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


def test_failed_run_prints_its_root_cause_shows_in_the_table_and_exits_non_zero(tmp_path, monkeypatch, capsys):
    import uplab.train

    def broken(cfg):
        if cfg.upsampler.name == "carafe":
            try:
                raise FileNotFoundError(f"data/toy/{cfg.upsampler.name}.npz\nmore detail")
            except FileNotFoundError as err:  # as Hydra's instantiate wraps what a target raised
                raise RuntimeError("Error in call to target 'uplab.data.ToySegmentation'") from err
        return real(cfg)

    real = lambda cfg: rt.rec.write_run_key(cfg.paths.output_dir, {}) and None  # noqa: E731
    monkeypatch.setattr(uplab.train, "train", broken)
    runs = rt.plan_runs(rt.load_table(write_table(tmp_path)), tmp_path / "runs")
    _copy_fixture_run("bilinear", runs[0])
    code = rt.main(["--table", write_table(tmp_path), "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "out"), "--no-cost", "--no-progress", "--no-figures", "--jobs", "1"])
    assert code == 1
    failure = json.loads((runs[1].run_dir / rec.FAILURE_FILE).read_text())
    assert failure["error"] == "FileNotFoundError: data/toy/carafe.npz"
    assert failure["raised"].startswith("RuntimeError: Error in call to target")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("failed: ")]
    assert lines == [f"failed: segmentation · carafe · seed 0: FileNotFoundError: data/toy/carafe.npz ({runs[1].run_dir})"]
    md = (tmp_path / "out/tables/tiny.md").read_text()
    assert "| carafe | failed |  | failed |" in md and "1 failed of 1 runs: FileNotFoundError: data/toy/carafe.npz" in md


def test_grid_where_no_run_finished_writes_no_table_and_exits_non_zero(tmp_path, monkeypatch, capsys):
    import uplab.train

    def broken(cfg):
        raise RuntimeError(f"no data for {cfg.upsampler.name}")

    monkeypatch.setattr(uplab.train, "train", broken)
    code = rt.main(["--table", write_table(tmp_path), "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "out"), "--no-cost", "--no-progress", "--jobs", "1"])
    assert code == 1
    assert not (tmp_path / "out").exists()
    err = capsys.readouterr().err
    assert "failed: segmentation · bilinear · seed 0: RuntimeError: no data for bilinear" in err
    assert "no table written" in err


def test_diverged_run_is_reported_as_diverged_and_fails_the_command(tmp_path, monkeypatch, capsys):
    import uplab.train

    def diverging(cfg):
        run_dir = Path(cfg.paths.output_dir)
        record = json.loads((FIXTURE / "segmentation" / "bilinear" / "seed0" / "results.json").read_text())
        if cfg.upsampler.name == "carafe":
            record.update(status="diverged", divergence={"step": 2, "last_finite_loss": 1.7})
        (run_dir / "results.json").write_text(json.dumps(record))

    monkeypatch.setattr(uplab.train, "train", diverging)
    code = rt.main(["--table", write_table(tmp_path), "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "out"), "--no-cost", "--no-progress", "--no-figures", "--jobs", "1"])
    assert code == 1
    assert "diverged: segmentation · carafe · seed 0: step 2, last finite loss 1.7" in capsys.readouterr().err
    assert "| carafe | diverged |  | diverged |" in (tmp_path / "out/tables/tiny.md").read_text()


def test_default_outputs_are_git_ignored_and_publish_is_the_only_way_into_results():
    import subprocess

    assert rt.build_parser().get_default("results_dir") == rt.OUTPUT_RESULTS
    for path in (rt.OUTPUT_RESULTS / "tables" / "toy.md", rt.OUTPUT_RESULTS / "figures" / "toy_qualitative.png"):
        assert subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=ROOT).returncode == 0, path
    assert rt.PUBLISHED_RESULTS == ROOT / "results"


def _outputs(tmp_path):
    out = tmp_path / "outputs"
    (out / "tables").mkdir(parents=True)
    (out / "figures").mkdir()
    for name in ("tiny.md", "tiny.csv", "tiny.tex", "tiny.timing.md"):
        (out / "tables" / name).write_text(f"new {name}\n")
    (out / "figures" / "tiny_segmentation_accuracy_cost.png").write_bytes(b"png")
    (out / "figures" / "other_qualitative.png").write_bytes(b"png")
    return out


def test_publish_copies_the_table_and_refreshes_readme_blocks_only_where_marked(tmp_path):
    out, published = _outputs(tmp_path), tmp_path / "results"
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- tiny-table:begin -->\nold\n<!-- tiny-table:end -->\nrest\n")
    written = rt.publish("tiny", out, published, readme)
    assert (published / "tables/tiny.md").read_text() == "new tiny.md\n"
    assert (published / "figures/tiny_segmentation_accuracy_cost.png").is_file()
    assert not (published / "figures/other_qualitative.png").exists()  # another table's figure
    assert not (published / "tables/cost.md").exists()  # no current cost table in outputs
    text = readme.read_text()
    assert text.startswith("intro\n<!-- tiny-table:begin -->\nnew tiny.md\n\nnew tiny.timing.md\n")
    assert text.endswith("<!-- tiny-table:end -->\nrest\n") and "old" not in text and readme in written
    plain = tmp_path / "PLAIN.md"
    plain.write_text("a README whose tables moved to results/tables\n")
    assert plain not in rt.publish("tiny", out, published, plain)
    assert plain.read_text() == "a README whose tables moved to results/tables\n"


def test_publish_without_outputs_says_what_to_run(tmp_path):
    with pytest.raises(ValueError, match="run `make reproduce-table TABLE=tiny` first"):
        rt.publish("tiny", tmp_path / "outputs", tmp_path / "results", None)


def _git_repo(tmp_path):
    import subprocess

    repo = tmp_path / "repo"
    for name in ("src/uplab/upsamplers/fade.py", "src/uplab/train.py", "conf/upsampler/fade.yaml", "src/uplab/ops/cuda/autograd.py"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(f"# {name}\nx = 1\n")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", "add", "."], cwd=repo, check=True)
    return repo


def test_cost_digest_depends_only_on_tracked_cost_inputs(tmp_path):
    repo = _git_repo(tmp_path)
    digest = rt.cost_inputs_digest(repo)
    (repo / "src/uplab/upsamplers/scratch.py").write_text("untracked = True\n")
    (repo / "src/uplab/train.py").write_text("# training loop changed\n")
    (repo / "src/uplab/ops/cuda/autograd.py").write_text("# the CUDA path changed\n")
    fade = repo / "src/uplab/upsamplers/fade.py"
    fade.write_bytes(fade.read_bytes().replace(b"\n", b"\r\n"))  # a core.autocrlf checkout
    assert rt.cost_inputs_digest(repo) == digest
    moved = Path(__import__("shutil").copytree(repo, tmp_path / "elsewhere"))
    assert rt.cost_inputs_digest(moved) == digest
    (repo / "conf/upsampler/fade.yaml").write_text("kernel_size: 5\n")
    assert rt.cost_inputs_digest(repo) != digest


def test_committed_cost_table_matches_the_committed_sources():
    stamp = (ROOT / "results/tables/cost.inputs").read_text().strip()
    assert rt.cost_inputs_digest() == stamp, (
        "the cost table's inputs changed since results/tables/cost.md was counted: run "
        "`make reproduce-table TABLE=quick && make publish-tables TABLE=quick` (or `make cost`) and commit results/tables/cost.*"
    )


def test_current_committed_cost_table_is_used_not_recounted(tmp_path, monkeypatch):
    import uplab.analysis.cost

    published = tmp_path / "results/tables"
    published.mkdir(parents=True)
    (published / "cost.md").write_text("| cost |\n")
    (published / "cost.inputs").write_text(rt.cost_inputs_digest() + "\n")
    monkeypatch.setattr(uplab.analysis.cost, "cost_table", lambda **kw: pytest.fail("recounted an unchanged cost table"))
    assert rt.write_cost_table(tmp_path / "out", published) == published / "cost.md"
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_tiny_grid_end_to_end_then_resume_trains_nothing(tmp_path, monkeypatch):
    table = write_table(tmp_path)
    # one run at a time in this process; worker processes: test_two_worker_processes_... (cheaper)
    args = ["--table", table, "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "out"), "--no-cost", "--no-progress", "--jobs", "1"]
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


@pytest.mark.slow
def test_grid_runs_as_submitit_jobs_and_a_preempted_job_is_requeued_with_resume(tmp_path, monkeypatch):
    """The cluster path on submitit's local executor: the same pickling, job folders, signal
    (submitit's preemption signal, as SLURM sends before a timeout) and requeue as SLURM."""
    import pickle
    import threading
    import time

    import psutil
    import submitit

    jobs = []
    submit = submitit.AutoExecutor.submit
    monkeypatch.setattr(submitit.AutoExecutor, "submit", lambda self, *a, **k: jobs.append(submit(self, *a, **k)) or jobs[-1])
    one_run = dict(TINY, tasks={"segmentation": dict(TINY["tasks"]["segmentation"], rows=["bilinear"])})
    table = write_table(tmp_path, one_run)
    run_dir = tmp_path / "runs/tiny/segmentation/bilinear/seed0"

    def preempt_once_training_started():
        deadline = time.monotonic() + 300
        while not (jobs and (run_dir / rec.RUN_FILE).is_file()) and time.monotonic() < deadline:
            time.sleep(0.05)
        # the job's task process (a child of submitit's local controller) gets the signal, as
        # SLURM signals the job's tasks; LocalJob._interrupt would signal the controller itself
        (task,) = psutil.Process(jobs[0]._process.pid).children()
        task.send_signal(submitit.JobEnvironment._usr_sig())

    preempt = threading.Thread(target=preempt_once_training_started, daemon=True)
    preempt.start()
    args = ["--table", table, "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "out"),
            "--launcher", "submitit-local", "--no-cost", "--no-progress", "--no-figures"]
    assert rt.main(args) == 0
    preempt.join()
    assert len(jobs) == 1 and rec.is_complete(run_dir)
    requeued = pickle.loads(jobs[0].paths.submitted_pickle.read_bytes())
    assert isinstance(requeued.function, rt.TableJob) and requeued.function.resume
    assert OmegaConf.load(run_dir / ".hydra" / "config.yaml").resume is True  # what the requeued job ran
    assert (tmp_path / "out/tables/tiny.md").is_file()


def test_a_preemption_signal_while_the_config_is_composed_arrives_after_it(tmp_path, monkeypatch):
    """submitit's requeue handler exits the process; landing inside Hydra's compose it left
    OmegaConf half built and the run was recorded as failed instead of requeued."""
    import os
    import signal

    delivered, seen_inside = [], []

    class Requeued(BaseException):  # as submitit's sys.exit: not an Exception
        pass

    def handler(signum, frame):
        delivered.append(signum)
        raise Requeued

    def compose(run, resume):
        os.kill(os.getpid(), signal.SIGUSR2)
        seen_inside.append(list(delivered))
        return OmegaConf.create({"x": 1})

    previous = signal.signal(signal.SIGUSR2, handler)
    try:
        monkeypatch.setattr(rt, "compose_run", compose)
        run = rt.plan_runs(rt.load_table(write_table(tmp_path)), tmp_path / "runs")[0]
        with pytest.raises(Requeued):
            rt.train_run(run)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert seen_inside == [[]] and delivered == [signal.SIGUSR2]
    assert not (run.run_dir / rec.FAILURE_FILE).exists()


def test_toy_table_pairs_three_seeds_and_its_claims_name_its_rows_and_metrics():
    table = rt.load_table("toy")
    assert len(table.seeds) >= 3 and "convergence" in table
    rows = {t: rt.row_overrides(s.rows) for t, s in table.tasks.items()}
    for task, task_spec in table.tasks.items():
        assert str(task_spec.baseline) in rows[task]
    for claim in table.claims:
        for check in claim.checks:
            assert check.row in rows[check.task] and check.metric in table.tasks[check.task].metrics, claim.claim
    every = rt.with_extra_rows(table)
    assert list(rt.row_overrides(every.tasks.matting.rows))[-1] == "dysample"
    assert len(rt.plan_runs(every, Path("runs"))) > len(rt.plan_runs(table, Path("runs")))


def test_control_rows_build_decoders_without_upsamplers(tmp_path):
    from functools import partial

    from hydra.utils import instantiate

    from uplab.upsamplers import build

    runs = {(r.task, r.row): r for r in rt.plan_runs(rt.load_table("toy"), tmp_path) if r.seed == 0}
    levels = [3, 64, 64, 128, 256, 512]
    seg = instantiate(rt.compose_run(runs["segmentation", "coarse"]).decoder)(levels[2:], partial(build, "bilinear"))
    unet = instantiate(rt.compose_run(runs["depth", "coarse"]).decoder)(levels, partial(build, "carafe"))
    assert seg.coarse_output and len(seg.upsamplers) == 0 and len(unet.upsamplers) == 0
    fpn = {row: instantiate(rt.compose_run(runs["detection", row]).decoder)(levels[2:], partial(build, "nearest"))
           for row in ("coarse", "no_top_down")}
    assert fpn["coarse"].coarse_output and not fpn["no_top_down"].top_down
    assert len(fpn["coarse"].upsamplers) == len(fpn["no_top_down"].upsamplers) == 0


def test_render_marks_convergence_and_checks_claims_from_the_runs(tmp_path):
    table = OmegaConf.create(
        {
            **TINY, "seeds": [0, 1], "convergence": {"tail": 0.25, "tolerance": 0.1},
            "tasks": {"segmentation": {**TINY["tasks"]["segmentation"], "rows": ["bilinear", "carafe", "fade"]}},
            "claims": [{"claim": "FADE helps", "source": "s", "checks": [
                {"task": "segmentation", "row": "fade", "metric": "mIoU", "expect": "better"}]}],
        }
    )
    records = rec.load_records(FIXTURE)
    written = {p.name: p for p in rt.write_outputs(table, records, tmp_path)}
    md = written["tiny.md"].read_text()
    # the fixture runs' mIoU still rises by half its gain in the last evaluation: none converged
    assert "| converged |" in md and "| fade |" in md and md.count(" | 0/2 |") == 3
    assert "### The papers' claims" in md and "| FADE helps | s |" in md
    claims = written["tiny.claims.csv"].read_text()
    assert "segmentation fade mIoU (better)" in claims and claims.strip().endswith(("inconclusive", "supported"))
    csv = written["tiny.csv"].read_text().splitlines()[0].split(",")
    assert {"mIoU_delta", "mIoU_ci_low", "mIoU_ci_high", "mIoU_n_pairs", "mIoU_significant", "converged"} <= set(csv)


def test_progress_line_shows_the_outcome_and_time_left_from_the_mean_run_time_over_the_jobs():
    run = rt.Run("tiny", "segmentation", "fade", 1, (), Path("runs"))
    # 7 runs left at a mean of 25 s, 2 at a time: 87.5 s
    line = rt.progress_line(3, 10, run, "mIoU 0.512", 12.34, 25.0, 2)
    assert line == "[3/10] segmentation · fade · seed 1  mIoU 0.512  12.3 s  ~ 1 min 28 s left"
    assert rt.progress_line(10, 10, run, "finished", 61.0, 30.0, 2).endswith("  1 min 1 s")
    assert rt.format_duration(7500) == "2 h 05 min"


FAKE_TRAINING = '''
import json, os, shutil
from pathlib import Path


def train(run):
    """A run's training as the grid sees it: a record (copied from a fixture run), or an error."""
    if run.row == "carafe":
        raise RuntimeError("no carafe today")
    import torch

    run.run_dir.mkdir(parents=True)
    worker = {"pid": os.getpid(), "threads": torch.get_num_threads(), "omp": os.environ.get("OMP_NUM_THREADS")}
    (run.run_dir / "worker.json").write_text(json.dumps(worker))
    shutil.copy(Path(FIXTURE) / "results.json", run.run_dir / "results.json")
    return "finished"
'''


@pytest.mark.slow
def test_two_worker_processes_train_the_runs_to_do_record_a_failure_and_skip_complete_runs(tmp_path, monkeypatch, capsys, request):
    """--jobs 2 for real (spawned workers, each run's training faked): a complete run is skipped,
    a run that raises is recorded in its failed.json and the others finish, each worker runs
    torch on cores // 2 threads, and one progress line per finished run."""
    import importlib

    (tmp_path / "fake_training.py").write_text(f"FIXTURE = {str(FIXTURE / 'segmentation/fade/seed0')!r}\n{FAKE_TRAINING}")
    monkeypatch.syspath_prepend(str(tmp_path))  # the workers import the fake by name
    fake = importlib.import_module("fake_training")
    request.addfinalizer(lambda: sys.modules.pop("fake_training", None))
    table = dict(TINY, tasks={"segmentation": dict(TINY["tasks"]["segmentation"], rows=["bilinear", "carafe", "fade", "sapa_g"])})
    runs = rt.plan_runs(rt.load_table(write_table(tmp_path, table)), tmp_path / "runs")
    _copy_fixture_run("bilinear", runs[0])
    counts = rt.run_local(runs, progress=True, jobs=2, metrics={"segmentation": "mIoU"}, train=fake.train)
    assert counts == {"skipped": 1, "finished": 2, "failed": 1}
    assert not (runs[0].run_dir / "worker.json").exists()  # complete: not trained again
    failure = json.loads((runs[1].run_dir / rec.FAILURE_FILE).read_text())
    assert failure["error"] == "RuntimeError: no carafe today"
    threads = max(1, rt.usable_cores() // 2)
    for run in runs[2:]:
        assert rec.is_complete(run.run_dir)
        worker = json.loads((run.run_dir / "worker.json").read_text())
        assert worker["pid"] != __import__("os").getpid()
        assert (worker["threads"], worker["omp"]) == (threads, str(threads))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[")]
    assert [line.split("]")[0] for line in lines] == ["[1/3", "[2/3", "[3/3"]
    assert sum("failed: RuntimeError: no carafe today" in line for line in lines) == 1
    assert sum(" mIoU " in line for line in lines) == 2
    assert all(" left" in line for line in lines[:2]) and not lines[2].endswith(" left")


def test_jobs_auto_is_one_per_core_for_cpu_runs_and_one_for_gpu_runs(tmp_path):
    toy = rt.plan_runs(rt.load_table(write_table(tmp_path)), tmp_path)
    expected = min(rt.usable_cores(), len(toy)) if rt.PARALLEL_RUNS_ARE_FASTER else 1
    assert rt.resolve_jobs("auto", toy) == expected
    paper = rt.plan_runs(rt.load_table("paper-segformer"), tmp_path)
    assert rt.resolve_jobs("auto", paper) == 1
    assert rt.resolve_jobs("3", paper) == 3
    assert rt.resolve_jobs("3", paper[:2]) == 2  # no idle workers
    with pytest.raises(SystemExit):
        rt.build_parser().parse_args(["--jobs", "0"])


def test_dry_run_of_a_paper_table_plans_every_row_writes_nothing_and_says_gpu_hours_are_not_measured(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(rt, "STEP_TIMES", tmp_path / "step_times.yaml")  # no measurement
    runs_dir = tmp_path / "runs"
    assert rt.main(["--table", "paper-segformer", "--dry-run", "--runs-dir", str(runs_dir)]) == 0
    out = capsys.readouterr().out
    rows = rt.row_overrides(rt.load_table("paper-segformer").tasks.segmentation.rows)
    assert f"table paper-segformer: {len(rows)} runs, 0 done, {len(rows)} to do" in out
    planned = [line for line in out.splitlines() if line.startswith("  to do  segmentation · ")]
    assert [line.split(" · ")[1] for line in planned] == list(rows)
    assert all("160000 steps × batch 16, checkpoint " in line for line in planned)
    assert "GPU-hours: not measured (no step time for paper-segformer)" in out
    assert "/ade/ADEChallengeData2016: " in out  # its size on disk, or absent
    assert not runs_dir.exists()


def _fixed_cost(steps, gpu=True, checkpoint=12_000_000):
    return lambda spec, run: rt.RunCost(f"{steps} steps", steps, gpu, Path("/nowhere"), False, checkpoint, "12 M")


def test_gpu_hours_are_steps_times_the_measured_step_time_of_the_runs_to_do(tmp_path, monkeypatch):
    runs = rt.plan_runs(rt.load_table("paper-segformer"), tmp_path)
    _copy_fixture_run("bilinear", runs[0])  # done: not counted
    monkeypatch.setattr(rt, "run_cost", _fixed_cost(160000))
    entry = {"device": "a test GPU", "source": "by hand", "step_s": 0.5}
    out = rt.dry_run(rt.load_table("paper-segformer"), runs, tmp_path, {"paper-segformer": entry})
    # 7 runs to do × 160000 steps × 0.5 s / 3600 = 155.6 h
    assert f"GPU-hours: 155.6 for 7 of the {len(runs) - 1} runs to do" in out and "a test GPU" in out
    assert "checkpoint disk: up to 12.0 MB per run" in out and "84.0 MB for the runs to do if all kept" in out
    per_row = dict(entry, step_s={"bilinear": 1.0, "carafe": 0.9})
    out = rt.dry_run(rt.load_table("paper-segformer"), runs, tmp_path, {"paper-segformer": per_row})
    assert "GPU-hours: 40.0 for 1 of the 7 runs to do" in out  # carafe: 160000 × 0.9 s
    assert "GPU-hours: not measured (no step time for paper-segformer of rows a2u, fade, indexnet, sapa_b, sapa_g, sapa_i)" in out


def test_dry_run_of_a_cpu_table_estimates_its_time_from_the_last_measured_grid(tmp_path, monkeypatch):
    runs = rt.plan_runs(rt.load_table(write_table(tmp_path)), tmp_path / "runs")
    (tmp_path / "out/tables").mkdir(parents=True)
    (tmp_path / "out/tables/tiny.timing.md").write_text("`make reproduce-table TABLE=tiny`: 10 runs trained, 0 skipped as complete, 0 not finished, in 15.0 min on a test machine.\n")
    out = rt.dry_run(rt.load_table(write_table(tmp_path)), runs, tmp_path / "out", {})
    assert "GPU-hours: none (CPU runs)" in out
    assert "time: about 3 min 0 s for the 2 runs to do" in out  # 15 min / 10 runs × 2
    assert "1 epochs × 1 batches × batch 2, no checkpoint (checkpointing off)" in out


def test_checkpoint_state_per_parameter_by_optimizer():
    cfg = OmegaConf.create
    assert rt.optimizer_state_per_param(cfg({"_target_": "torch.optim.AdamW"})) == ("AdamW", 2)
    assert rt.optimizer_state_per_param(cfg({"_target_": "torch.optim.SGD", "momentum": 0.9})) == ("SGD", 1)
    assert rt.optimizer_state_per_param(cfg({"_target_": "torch.optim.SGD"})) == ("SGD", 0)
    wrapped = cfg({"_target_": "uplab.tasks.optim.param_groups", "optimizer": {"_target_": "torch.optim.Adam"}})
    assert rt.optimizer_state_per_param(wrapped) == ("Adam", 2)
    assert rt.optimizer_state_per_param(cfg({"_target_": "torch.optim.LBFGS"})) == ("LBFGS", None)
