"""The Hydra entry point: ``uplab-train`` (or ``python -m uplab.train``).

``uplab-train task=segmentation upsampler=fade`` composes ``conf/train.yaml`` with the chosen
task, data, backbone, decoder, upsampler, trainer and logger, checks what the command can get
wrong (:mod:`uplab.preflight`: one line and exit status 2), claims the run directory
(:mod:`uplab.run_directory`), builds everything with ``hydra.utils.instantiate``, trains, and
writes ``results.json`` with the run's status: ``finished``, ``interrupted`` (SIGINT, SIGTERM,
SIGUSR1), ``diverged`` (non-finite training loss) or ``not_evaluated`` (no validation result).
``resume=true`` continues the same command's run from its ``last.ckpt`` (the end of its last
complete epoch), in the same W&B run, adding up the wall time; a run that has ended is left as
it is.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger, WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from uplab.analysis.run_record import RESULTS_FILE, git_commit, read_run_record, write_run_record
from uplab.data.io import DatasetError
from uplab.preflight import UsageError, exit_with, preflight
from uplab.run_directory import (
    AtomicCheckpointIO,
    RecordWallTime,
    RunDirectoryError,
    RunLock,
    RunState,
    check_checkpoint,
    remove_stale_temp_files,
)
from uplab.tasks.build import build_task
from uplab.tasks.callbacks import (
    EpochSeed,
    MetricHistory,
    StopAtEpoch,
    StopOnNonFiniteLoss,
    TrainingDiverged,
)

log = logging.getLogger(__name__)

CHECKPOINT = "last.ckpt"
# arguments of a task module that the data supplies


def config_dir() -> str:
    """The ``conf/`` directory at the repository root (the package is installed editable)."""
    conf = Path(__file__).resolve().parents[2] / "conf"
    if not (conf / "train.yaml").is_file():
        raise FileNotFoundError(
            f"uplab's config tree is not at {conf}; uplab-train runs from a source checkout "
            "installed with `make setup` (pip install -e .)"
        )
    return str(conf)


MAX_RUN_NAME = 200  # file names end at 255 bytes


def run_name(override_dirname: str) -> str:
    """The name of a run's directory from its command-line overrides (``default`` for none);
    a long one keeps its first characters and ends with a hash of the whole, so it stays unique,
    the same for the same command, and within file-name limits."""
    name = override_dirname.replace("/", "_") or "default"
    if len(name) <= MAX_RUN_NAME:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:12]
    return f"{name[: MAX_RUN_NAME - 13]}-{digest}"


OmegaConf.register_new_resolver("uplab.run_name", run_name, replace=True)


def resolve_checkpoint(resume: Any, run_dir: Path) -> str | None:
    """The checkpoint to continue from: ``resume`` is false, true (this run's ``last.ckpt``, if
    there is one yet), a run directory or a checkpoint file."""
    if resume is None or resume is False:
        return None
    if resume is True:
        path = run_dir / CHECKPOINT
        if not path.is_file():
            log.warning("resume=true but %s does not exist yet: starting from scratch", path)
            return None
        return str(path)
    path = Path(str(resume))
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise ValueError(
            f"resume={resume!r}: expected true, a run directory holding {CHECKPOINT} or a "
            f"checkpoint file; {path} does not exist"
        )
    return str(path)


def build_loggers(cfg: DictConfig, wandb_run_id: str | None) -> list[Logger]:
    """The configured loggers; a W&B logger joins the run ``wandb_run_id`` (created if new)."""
    loggers = []
    for c in (cfg.get("logger") or {}).values():
        if c is None:
            continue
        if wandb_run_id is not None and str(c.get("_target_", "")).endswith("WandbLogger"):
            loggers.append(instantiate(c, id=wandb_run_id, resume="allow"))
        else:
            loggers.append(instantiate(c))
    return loggers


def uses_wandb(cfg: DictConfig) -> bool:
    return any(
        c is not None and str(c.get("_target_", "")).endswith("WandbLogger")
        for c in (cfg.get("logger") or {}).values()
    )


def model_cost(task: pl.LightningModule, datamodule: pl.LightningDataModule) -> dict[str, Any]:
    """Parameters and FLOPs (batch 1, one validation sample) of the model and its upsamplers."""
    from uplab.analysis.flops import count_flops, count_params, count_upsampler_params

    model = task.model
    cost: dict[str, Any] = {
        "params": {"total": count_params(model), "upsamplers": count_upsampler_params(model)},
        "flops": None,
    }
    batch = next(iter(datamodule.val_dataloader()))
    batch = pl.utilities.move_data_to_device(batch, task.device)
    was_training = model.training
    model.eval()
    try:
        flops = count_flops(model, *task.example_input(batch))
        cost["flops"] = {"total": int(flops["total"]), "upsamplers": int(flops["upsamplers"])}
    except (RuntimeError, ValueError, TypeError) as err:  # the record must survive a counter gap
        log.warning("FLOPs not counted: %s", err)
        cost["flops_error"] = f"{type(err).__name__}: {err}"
    finally:
        model.train(was_training)
    return cost


def _metrics_record(history: MetricHistory) -> dict[str, Any]:
    final, best = history.final(), history.best()
    return {
        "monitor": history.monitor,
        "mode": history.mode,
        "final": final["metrics"] if final else {},
        "final_step": final["step"] if final else None,
        "best": best["metrics"] if best else {},
        "best_step": best["step"] if best else None,
        "history": history.history,
    }


ENDED = ("finished", "diverged", "not_evaluated")
"""Statuses of a run that resume=true leaves as it is."""


def resume_requested(cfg: DictConfig) -> Any:
    """``cfg.resume``, or true for a requeued SLURM job (its command is the first job's)."""
    if cfg.resume is False and int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0:
        return True
    return cfg.resume


def ended_record(run_dir: Path) -> dict[str, Any] | None:
    """The record in ``run_dir`` if the run there has ended (see :data:`ENDED`)."""
    try:
        record = read_run_record(run_dir)
    except (ValueError, OSError):
        return None
    return record if record.get("status") in ENDED else None


def forward_requeue_signal() -> None:
    """Make SIGUSR1 (SLURM's and submitit's advance notice of preemption) stop the run the way
    SIGTERM does: Lightning's handler ends training after the current batch and the run is
    recorded as interrupted, to be resumed by the requeued job. Registered before ``fit``,
    it also keeps Lightning's SLURM handler (a mid-epoch HPC checkpoint) from being installed."""
    if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGUSR1, lambda *_: os.kill(os.getpid(), signal.SIGTERM))


def run_status(history: MetricHistory, not_evaluated: str | None) -> tuple[str, str | None]:
    """``finished`` when some validation scored the monitored metric, else ``not_evaluated``."""
    if history.best() is not None:
        return "finished", None
    reason = not_evaluated or "no validation ran (max_epochs=0 or limit_val_batches=0?)"
    return "not_evaluated", f"no validation result for {history.monitor}: {reason}"


def report(metrics: dict[str, Any], status: str, message: str | None, path: Path) -> None:
    """Print the final and best metrics as a table, with the status and the record's path."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"run {status}", title_justify="left")
    table.add_column("metric")
    table.add_column(f"final (step {metrics['final_step']})", justify="right")
    table.add_column(f"best (step {metrics['best_step']})", justify="right")
    for key in sorted(set(metrics["final"]) | set(metrics["best"])):
        name = f"{key} *" if key == metrics["monitor"] else key
        final, best = metrics["final"].get(key), metrics["best"].get(key)
        table.add_row(name, "" if final is None else f"{final:.4g}", "" if best is None else f"{best:.4g}")
    console = Console(stderr=False)
    console.print(table)
    console.print(f"record: {path}", soft_wrap=True)
    if message:
        console.print(message, soft_wrap=True)


def wandb_summary(metrics: dict[str, Any], cost: dict[str, Any], status: str) -> dict[str, Any]:
    """The W&B summary of a run: status, final and best metrics, the best step, and the cost."""
    summary: dict[str, Any] = {"status": status, "best_step": metrics["best_step"]}
    summary.update({f"final/{k}": v for k, v in metrics["final"].items()})
    summary.update({f"best/{k}": v for k, v in metrics["best"].items()})
    for kind in ("params", "flops"):
        for part, value in (cost.get(kind) or {}).items():
            summary[f"cost/{kind}_{part}"] = value
    return summary


def new_wandb_id() -> str:
    from wandb.sdk.lib.runid import generate_id

    return generate_id()


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train one run as ``cfg`` says and write its ``results.json``; returns the record's metrics.

    Raises:
        UsageError: a check of :func:`uplab.preflight.preflight` failed (nothing was written).
        RunDirectoryError: another process holds the run directory, or its checkpoint is corrupt.
    """
    start = time.perf_counter()
    run_dir = Path(cfg.paths.output_dir)
    datamodule = preflight(cfg, run_dir)
    rank_zero = rank_zero_only.rank == 0
    with RunLock(run_dir) if rank_zero else contextlib.nullcontext():
        if rank_zero:
            remove_stale_temp_files(run_dir)
        resume = resume_requested(cfg)
        ended = ended_record(run_dir) if resume is True else None
        if ended is not None:
            log.info(
                "the run in %s has already ended (status %s, %s): nothing to resume",
                run_dir, ended["status"], RESULTS_FILE,
            )
            return ended["metrics"]
        checkpoint = resolve_checkpoint(resume, run_dir)
        if checkpoint is not None:
            check_checkpoint(checkpoint)
        state = RunState(run_dir)
        earlier = state.read() if checkpoint is not None else {}
        wall_before = float(earlier.get("wall_time_s", 0.0))
        wandb_id = earlier.get("wandb_run_id") or (new_wandb_id() if uses_wandb(cfg) else None)
        if rank_zero:
            state.write(wandb_run_id=wandb_id, wall_time_s=wall_before)
        return _fit(cfg, datamodule, run_dir, checkpoint, state, wandb_id, start - wall_before)


def _fit(
    cfg: DictConfig,
    datamodule: pl.LightningDataModule,
    run_dir: Path,
    checkpoint: str | None,
    state: RunState,
    wandb_id: str | None,
    start: float,
) -> dict[str, Any]:
    """Build, fit and record one run (``start``: perf_counter time the run began, earlier
    processes' wall time included)."""
    pl.seed_everything(cfg.seed, workers=True)
    task = build_task(cfg, datamodule)
    loggers = build_loggers(cfg, wandb_id)
    history = MetricHistory(task.monitor, task.monitor_mode)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    trainer: pl.Trainer = instantiate(
        cfg.trainer,
        callbacks=[*callbacks, history, StopOnNonFiniteLoss(), EpochSeed(cfg.seed), RecordWallTime(state, start)],
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
    )
    resolved = OmegaConf.to_container(cfg, resolve=True)
    divergence: dict[str, Any] | None = None
    cost: dict[str, Any] = {}
    status, message = "interrupted", "stopped by a signal: run the same command with resume=true"
    try:
        cost = model_cost(task, datamodule)
        for logger in trainer.loggers:
            logger.log_hyperparams({**resolved, "cost": cost})
        forward_requeue_signal()
        try:
            trainer.fit(task, datamodule=datamodule, ckpt_path=checkpoint)
            status, message = run_status(history, task.not_evaluated)
            if any(isinstance(c, StopAtEpoch) and c.stopped for c in trainer.callbacks):
                status, message = "interrupted", "stopped by StopAtEpoch: resume=true continues"
        except TrainingDiverged as err:
            status, message, divergence = "diverged", str(err), err.record()
        return _record(cfg, trainer, history, cost, resolved, status, message, divergence, start, run_dir)
    except (KeyboardInterrupt, SystemExit) as stop:
        _record(cfg, trainer, history, cost, resolved, status, message, divergence, start, run_dir)
        if isinstance(stop, SystemExit) and not stop.code:  # Lightning's SIGTERMException exits 0
            raise SystemExit(1) from stop
        raise
    finally:
        if trainer.is_global_zero:
            state.write(wall_time_s=round(time.perf_counter() - start, 3))
        if any(isinstance(lg, WandbLogger) for lg in loggers):
            import wandb

            wandb.finish()


def _record(
    cfg: DictConfig,
    trainer: pl.Trainer,
    history: MetricHistory,
    cost: dict[str, Any],
    resolved: Any,
    status: str,
    message: str | None,
    divergence: dict[str, Any] | None,
    start: float,
    run_dir: Path,
) -> dict[str, Any]:
    """Write ``results.json`` (rank zero), report the metrics, and drop ``last.ckpt`` of a run
    that has ended unless ``keep_checkpoint``; returns the metrics."""
    metrics = _metrics_record(history)
    if not trainer.is_global_zero:
        return metrics
    wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
    for logger in wandb_loggers:
        logger.experiment.summary.update(wandb_summary(metrics, cost, status))
    path = write_run_record(
        run_dir,
        config=resolved,
        metrics=metrics,
        cost=cost,
        wall_time_s=time.perf_counter() - start,
        wandb_run_id=wandb_loggers[0].experiment.id if wandb_loggers else None,
        commit=git_commit(Path(__file__).parent),
        status=status,
        message=message,
        divergence=divergence,
    )
    if status in ENDED and not cfg.get("keep_checkpoint", False):
        (run_dir / CHECKPOINT).unlink(missing_ok=True)
    report(metrics, status, message, path)
    return metrics


@hydra.main(config_path=config_dir(), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Console script ``uplab-train``; returns the best monitored value (what a sweep optimises).
    A failure the command can cause ends in one line on stderr and exit status 2."""
    torch.set_float32_matmul_precision("high")
    try:
        metrics = train(cfg)
    except (UsageError, RunDirectoryError, DatasetError) as err:
        exit_with(err)
    best = metrics["best"].get(metrics["monitor"])
    return None if best is None else float(best)


if __name__ == "__main__":
    main()
