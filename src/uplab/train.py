"""The Hydra entry point: ``uplab-train`` (or ``python -m uplab.train``).

``uplab-train task=segmentation upsampler=fade`` composes ``conf/train.yaml`` with the chosen
task, data, backbone, decoder, upsampler, trainer and logger, builds everything with
``hydra.utils.instantiate``, trains, and writes ``results.json`` into the run directory.
``resume=true`` continues the same command's run from its ``last.ckpt``.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger, WandbLogger

from uplab.analysis.run_record import git_commit, write_run_record
from uplab.tasks.callbacks import EpochSeed, MetricHistory

log = logging.getLogger(__name__)

CHECKPOINT = "last.ckpt"
# arguments of a task module that the data supplies
DATA_ATTRIBUTES = ("num_classes", "ignore_index")


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


def build_task(cfg: DictConfig, datamodule: pl.LightningDataModule) -> pl.LightningModule:
    """The task module of ``cfg.task`` with the backbone, decoder and upsampler factories and the
    arguments the data supplies (``num_classes``, ``ignore_index``)."""
    task_cls = get_class(cfg.task._target_)
    if getattr(datamodule, "task", task_cls.data_task) != task_cls.data_task:
        raise ValueError(
            f"{task_cls.__name__} trains on {task_cls.data_task} data, but the data config gives "
            f"{datamodule.task} data; drop the data= override (each task selects its toy data) "
            "or pick a data config of that task"
        )
    params = inspect.signature(task_cls).parameters
    from_data = {
        name: getattr(datamodule, name)
        for name in DATA_ATTRIBUTES
        if name in params and getattr(datamodule, name, None) is not None
    }
    return instantiate(
        cfg.task,
        backbone=instantiate(cfg.backbone),
        decoder=instantiate(cfg.decoder),
        upsampler=instantiate(cfg.upsampler),
        **from_data,
    )


def build_loggers(cfg: DictConfig) -> list[Logger]:
    return [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]


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


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train one run as ``cfg`` says and write its ``results.json``; returns the record's metrics."""
    start = time.perf_counter()
    run_dir = Path(cfg.paths.output_dir)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    task = build_task(cfg, datamodule)
    loggers = build_loggers(cfg)
    history = MetricHistory(task.monitor, task.monitor_mode)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    trainer: pl.Trainer = instantiate(
        cfg.trainer, callbacks=[*callbacks, history, EpochSeed(cfg.seed)], logger=loggers or False
    )
    resolved = OmegaConf.to_container(cfg, resolve=True)
    try:
        cost = model_cost(task, datamodule)
        for logger in trainer.loggers:
            logger.log_hyperparams({**resolved, "cost": cost})
        trainer.fit(task, datamodule=datamodule, ckpt_path=resolve_checkpoint(cfg.resume, run_dir))
        metrics = _metrics_record(history)
        if trainer.is_global_zero:
            wandb_ids = [lg.experiment.id for lg in trainer.loggers if isinstance(lg, WandbLogger)]
            path = write_run_record(
                run_dir,
                config=resolved,
                metrics=metrics,
                cost=cost,
                wall_time_s=time.perf_counter() - start,
                wandb_run_id=wandb_ids[0] if wandb_ids else None,
                commit=git_commit(Path(__file__).parent),
                status="interrupted" if trainer.interrupted else "finished",
            )
            log.info("run record: %s", path)
        return metrics
    finally:
        if any(isinstance(lg, WandbLogger) for lg in loggers):
            import wandb

            wandb.finish()


@hydra.main(config_path=config_dir(), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Console script ``uplab-train``; returns the best monitored value (what a sweep optimises)."""
    torch.set_float32_matmul_precision("high")
    metrics = train(cfg)
    best = metrics["best"].get(metrics["monitor"])
    return None if best is None else float(best)


if __name__ == "__main__":
    main()
