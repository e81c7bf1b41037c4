"""uplab-train end to end: every experiment file through the CLI, the run directory and resume
(runs stopped by SIGINT, SIGKILL and the requeue signal SIGUSR1 and resumed equal the
uninterrupted run), errors a command can cause in one line, DDP with two processes over gloo,
and an offline W&B run continued by resume."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from uplab.preflight import UsageError, exit_with, preflight
from uplab.run_directory import RunDirectoryError, RunLock
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
    """``uplab-train`` run in ``cwd``, which is also its project root (outputs/ goes there)."""
    result = subprocess.run(
        [sys.executable, "-m", "uplab.train", *overrides],
        cwd=cwd, env={**ENV, "UPLAB_ROOT": str(cwd)}, capture_output=True, text=True, timeout=300,
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


# three epochs of two batches on 32 x 32 images: the runs the signal tests interrupt and resume
# (with the rich progress bar, whose last line per epoch shows the monitored metric)
LIFECYCLE = [
    *(o for o in TINY if not o.startswith(("data.toy.image_size", "~callbacks"))), "data.toy.image_size=32", "decoder.embed_dim=32", "trainer.max_epochs=3",
    "+trainer.limit_train_batches=2", "logger=csv", "seed=3",
]


class SendSignalAt(pl.Callback):
    """Test helper run inside uplab-train: sends ``signal`` to its own process after training
    batch ``batch`` of epoch ``epoch``, once (``marker`` records that it fired, so the resumed
    command, which must be the same command, runs through); ``<marker>.epochs`` lists the
    epochs each process started, which tells a resumed run from one that started over."""

    def __init__(self, name: str, marker: str, epoch: int = 1, batch: int = 0):
        self.signum, self.marker, self.epoch, self.batch = getattr(signal, name), Path(marker), epoch, batch

    def on_train_epoch_start(self, trainer, pl_module):
        with open(f"{self.marker}.epochs", "a") as f:
            f.write(f"{trainer.current_epoch} ")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch) and not self.marker.exists():
            self.marker.touch()
            os.kill(os.getpid(), self.signum)


def spawn(cwd: Path, *overrides: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "uplab.train", *overrides], cwd=cwd, text=True,
        env={
            **ENV,
            "UPLAB_ROOT": str(cwd),  # the run's outputs/ under cwd, not in the checkout
            "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), ENV.get("PYTHONPATH", "")]),
            **(env or {}),
        },
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=300)
    return process.returncode, out, err


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, data_dir) -> tuple[Path, dict, str]:
    """The uninterrupted run (its directory, its record, its stderr) that the resumed runs
    must equal, run once for the module."""
    cwd = tmp_path_factory.mktemp("reference")
    result = uplab_train(cwd, *LIFECYCLE, f"paths.data_dir={data_dir}")
    (run_dir,) = (cwd / "outputs" / "runs" / "segmentation").iterdir()
    return run_dir, json.loads((run_dir / "results.json").read_text()), result.stdout + result.stderr


def test_finished_run_drops_last_ckpt_and_resuming_it_changes_nothing(reference_run, data_dir, caplog):
    run_dir, record, output = reference_run
    assert run_dir.name.startswith("+trainer.limit_train_batches=2,backbone.name=test_resnet")
    assert record["status"] == "finished"
    assert not (run_dir / "last.ckpt").exists()  # resume needs it only while a run is unfinished
    assert "val/mIoU:" in output  # the progress bar shows the monitored metric
    before = (run_dir / "results.json").read_bytes()
    caplog.set_level(logging.INFO, logger="uplab.train")
    metrics = train(_compose("segmentation", run_dir, data_dir, "logger=none", "resume=true"))
    assert metrics == record["metrics"]
    assert [r.getMessage() for r in caplog.records if "already ended" in r.getMessage()] == [
        f"the run in {run_dir} has already ended (status finished, results.json): nothing to resume"
    ]
    assert (run_dir / "results.json").read_bytes() == before


def test_runs_stopped_by_sigint_and_sigkill_resume_to_the_uninterrupted_result(tmp_path, data_dir, reference_run):
    """SIGINT and SIGKILL in epoch 2 of 3, then the same command with resume=true."""
    _, reference, _ = reference_run
    common = [*LIFECYCLE, f"paths.data_dir={data_dir}", "+callbacks.signal._target_=test_train.SendSignalAt"]

    def command(name: str) -> list[str]:
        return [*common, f"+callbacks.signal.name={name}", f"+callbacks.signal.marker={tmp_path / name}.fired",
                f"hydra.run.dir={tmp_path / name}"]

    cases = ("SIGINT", "SIGKILL")
    stopped = {name: spawn(tmp_path, *command(name)) for name in cases}
    for name, process in stopped.items():
        code, out, err = finish(process)
        assert code != 0, (name, out[-2000:], err[-2000:])
        assert (tmp_path / name / "last.ckpt").is_file(), name  # written at the end of epoch 1
    interrupted = json.loads((tmp_path / "SIGINT" / "results.json").read_text())
    assert interrupted["status"] == "interrupted" and len(interrupted["metrics"]["history"]) == 1
    assert not (tmp_path / "SIGKILL" / "results.json").exists()
    assert (tmp_path / "SIGKILL" / "run.lock").is_file()  # a dead process's lock, taken over below
    killed = json.loads((tmp_path / "SIGKILL" / "run_state.json").read_text())
    assert killed["wall_time_s"] > 0  # saved with last.ckpt, so the resumed record counts it

    resumes = {name: spawn(tmp_path, *command(name), "resume=true") for name in cases}
    for name, process in resumes.items():
        code, out, err = finish(process)
        assert code == 0, (name, out[-2000:], err[-2000:])
        record = json.loads((tmp_path / name / "results.json").read_text())
        assert record["status"] == "finished", name
        assert (tmp_path / f"{name}.fired.epochs").read_text().split() == ["0", "1", "1", "2"], name
        assert [h["step"] for h in record["metrics"]["history"]] == [h["step"] for h in reference["metrics"]["history"]]
        assert record["metrics"]["final"] == pytest.approx(reference["metrics"]["final"], rel=1e-5, abs=1e-6), name
        assert not (tmp_path / name / "run.lock").exists()
    total = json.loads((tmp_path / "SIGINT" / "results.json").read_text())["wall_time_s"]
    assert total > interrupted["wall_time_s"]  # the record counts both processes


def test_requeue_signal_stops_the_run_and_the_requeued_job_resumes(tmp_path, data_dir, monkeypatch):
    """SIGUSR1 (SLURM's and submitit's notice of preemption) in epoch 2 of 2, in this process:
    the run stops as interrupted with last.ckpt of epoch 1; the requeued job (same command,
    SLURM_RESTART_COUNT=1) resumes from it."""
    previous = signal.getsignal(signal.SIGUSR1)
    hook = [f"+callbacks.signal._target_={__name__}.SendSignalAt", "+callbacks.signal.name=SIGUSR1",
            f"+callbacks.signal.marker={tmp_path / 'fired'}"]
    cfg = _compose("segmentation", tmp_path / "run", data_dir, *hook, "logger=none", "trainer.max_epochs=2")
    try:
        with pytest.raises(SystemExit):
            train(cfg)
        record = json.loads((tmp_path / "run" / "results.json").read_text())
        assert record["status"] == "interrupted" and (tmp_path / "run" / "last.ckpt").is_file()
        monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
        metrics = train(cfg)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert [h["epoch"] for h in metrics["history"]] == [0, 1]
    assert (tmp_path / "fired.epochs").read_text().split() == ["0", "1", "1"]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["status"] == "finished"


def test_errors_a_command_can_cause_end_in_one_line_before_any_run_directory(tmp_path, data_dir):
    """Through the real CLI (side by side): a paper row without its dataset, and an output
    directory that cannot be created; exit status 2, one line on stderr naming the problem and
    the fix, no run directory. The other checks: test_preflight_names_each_problem."""
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    cases = {
        "dataset": (["experiment=paper/fade_segformer_b1_ade20k", f"paths.data_dir={tmp_path / 'nodata'}"],
                    ["images/training", "does not exist", "scripts/prepare_ade20k.py --root"]),
        "unwritable": ([*TINY, f"paths.data_dir={data_dir}", f"paths.log_dir={not_a_dir / 'outputs'}"],
                       [str(not_a_dir), "paths.log_dir="]),
    }
    runs = {name: spawn(tmp_path, *overrides) for name, (overrides, _) in cases.items()}
    for name, process in runs.items():
        code, out, err = finish(process)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("uplab-train: error: "), (name, err[-3000:])
        for words in cases[name][1]:
            assert words in lines[0], (name, lines[0])
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (["+backbone.checkpoint=/no/such/weights.pth"], ["/no/such/weights.pth", "docs/datasets.md"]),
        (["trainer=gpu"], ["no CUDA device", "trainer=cpu"]),
        (["trainer.max_epochs=abc"], ["trainer.max_epochs='abc'", "int or None"]),
        (["+trainer.max_epoch=3"], ["no argument 'max_epoch'", "max_epochs"]),
    ],
    ids=["weights", "gpu", "type", "unknown-argument"],
)
def test_preflight_names_each_problem(tmp_path, data_dir, overrides, words):
    cfg = _compose("segmentation", tmp_path / "run", data_dir, *overrides)
    with pytest.raises(UsageError) as error:
        preflight(cfg, tmp_path / "run")
    assert all(w in str(error.value) for w in words) and "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()


def test_usage_error_is_one_line_unless_hydra_full_error(monkeypatch, capsys):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as stop:
        exit_with(UsageError("what is wrong\nwhat to do"))
    assert stop.value.code == 2
    assert capsys.readouterr().err == "uplab-train: error: what is wrong; what to do\n"
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(UsageError):
        exit_with(UsageError("what is wrong"))


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


def test_run_directory_held_by_another_process_is_refused(tmp_path, data_dir):
    cfg = _compose("segmentation", tmp_path, data_dir, "logger=none")
    with RunLock(tmp_path), pytest.raises(RunDirectoryError, match=f"in use by pid {os.getpid()}"):
        train(cfg)
    assert not (tmp_path / "results.json").exists()


def test_corrupt_last_checkpoint_is_named_before_training(tmp_path, data_dir):
    (tmp_path / "last.ckpt").write_bytes(b"PK\x03\x04 truncated")
    cfg = _compose("segmentation", tmp_path, data_dir, "logger=none", "resume=true")
    with pytest.raises(RunDirectoryError, match=f"checkpoint {tmp_path / 'last.ckpt'} is unreadable"):
        train(cfg)
    assert not (tmp_path / "results.json").exists() and not (tmp_path / "run.lock").exists()


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


def test_resumed_run_continues_its_wandb_run(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    common = ["logger=wandb", "trainer.max_epochs=2", "+trainer.limit_train_batches=1", "+trainer.limit_val_batches=1"]
    stop = ["+callbacks.stop._target_=uplab.tasks.callbacks.StopAtEpoch", "+callbacks.stop.epochs=1"]
    train(_compose("segmentation", tmp_path, data_dir, *common, *stop))
    first = json.loads((tmp_path / "results.json").read_text())
    train(_compose("segmentation", tmp_path, data_dir, *common, "resume=true"))
    record = json.loads((tmp_path / "results.json").read_text())

    assert record["wandb_run_id"] == first["wandb_run_id"]
    assert record["wall_time_s"] > first["wall_time_s"]
    assert [h["epoch"] for h in record["metrics"]["history"]] == [0, 1]
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(record["wandb_run_id"]) for r in runs)
    # the summary of the resumed W&B run (its .wandb log holds each key then its JSON value;
    # W&B's service process may still be writing it)
    for _ in range(50):
        log = next(runs[-1].glob("*.wandb")).read_bytes()
        if b"cost/params_total" in log:
            break
        time.sleep(0.1)
    for key, value in [("final/val/mIoU", record["metrics"]["final"]["val/mIoU"]),
                       ("best/val/mIoU", record["metrics"]["best"]["val/mIoU"]),
                       ("cost/params_total", record["cost"]["params"]["total"])]:
        at = log.rfind(key.encode())
        assert at >= 0 and json.dumps(value).encode() in log[at : at + 64], key
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
