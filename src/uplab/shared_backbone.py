"""Stage 0 of a probe table: one backbone per task, trained once, then frozen in every row.

A table whose config has a ``shared_backbone`` section compares its rows on a fixed feature
extractor, as the task-agnostic upsampler papers evaluate (FeatUp, Fu et al., ICLR 2024; LoftUp;
JAFAR: linear probes on a frozen backbone's features): before the grid, each task trains one
ordinary run with its baseline row and the section's schedule, whose :class:`SaveBackbone`
callback writes the trained backbone's ``state_dict`` next to the run's ``results.json``; every
row and seed of that task then loads it with ``backbone.frozen=true``
(:class:`uplab.models.backbones.TimmBackbone`) and trains only what comes after it (decoder,
upsamplers, head or detector heads). The rows then differ only where their upsamplers act, and no
row pays for training the backbone.

``scripts/reproduce_table.py`` trains the stage-0 runs (:func:`plan`) before the grid and plans the
rows with :func:`freeze_rows`.

Example (conf/table/<name>.yaml)::

    shared_backbone:
      seed: 0
      overrides: [trainer.max_epochs=8, +trainer.limit_train_batches=25]
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, ListConfig
from pytorch_lightning.callbacks import Callback
from torch import nn

from uplab.analysis.run_record import write_atomic
from uplab.models.backbones import TimmBackbone


def backbone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a task model's timm feature extractor, in timm's key names (what
    :meth:`TimmBackbone.load_checkpoint` loads): the ``backbone.model`` of a
    :class:`uplab.models.DenseModel`, or the timm ``body`` a Faster R-CNN
    (:func:`uplab.models.detection.build_faster_rcnn`) took out of its TimmBackbone.

    Raises:
        ValueError: the model has neither.
    """
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, TimmBackbone):
        return backbone.model.state_dict()
    body = getattr(backbone, "body", None)
    if isinstance(body, nn.Module):
        return body.state_dict()
    raise ValueError(
        f"{type(model).__name__} has no TimmBackbone (model.backbone) nor a detector body "
        "(model.backbone.body) to save; a shared backbone needs one of the two"
    )


class SaveBackbone(Callback):
    """Writes the trained backbone's ``state_dict`` (:func:`backbone_state`) to ``path``
    (atomically) when training ends.

    Args:
        path: the file to write.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        state = {k: v.detach().cpu() for k, v in backbone_state(pl_module.model).items()}
        write_atomic(self.path, lambda f: torch.save(state, f))


@dataclass(frozen=True)
class BackboneRun:
    """The stage-0 run of one task: its Hydra overrides, its directory, the file it writes."""

    task: str
    seed: int
    overrides: tuple[str, ...]
    run_dir: Path
    checkpoint: Path


def backbones_dir(spec: DictConfig, runs_dir: Path) -> Path:
    """Where a table's stage-0 runs live: ``<runs_dir>/<table>-backbones/<task>``, beside the
    table's own folder so that its records stay the rows' alone."""
    return Path(runs_dir).resolve() / f"{spec.name}-backbones"


def _baseline_overrides(task_spec: DictConfig) -> list[str]:
    """The overrides of the task's baseline row (a name means ``upsampler=<name>``)."""
    baseline = str(task_spec.baseline)
    for item in task_spec.rows:
        if isinstance(item, DictConfig) and baseline in item:
            return [str(o) for o in item[baseline]]
    return [f"upsampler={baseline}"]


# the saved file's layout (2: timm's key names); in the digest, so a file of another layout is
# trained again rather than loaded
FILE_FORMAT = 2


def plan(spec: DictConfig, runs_dir: Path, tasks: Sequence[str] | None = None) -> list[BackboneRun]:
    """The stage-0 runs of a table (none without a ``shared_backbone`` section): per task, the
    table's overrides, the task's, its baseline row's, the section's ``overrides``, the callback
    that saves the backbone, and the section's ``seed``.

    The checkpoint's file name holds a digest of the other overrides (and of
    :data:`FILE_FORMAT`), so a changed stage 0 also
    changes the overrides of every row that loads it (:func:`freeze_rows`), and a table run
    again redoes those rows instead of keeping ones trained on another backbone.
    """
    stage = spec.get("shared_backbone")
    if stage is None:
        return []
    seed = int(stage.get("seed", 0))
    runs = []
    for task, task_spec in spec.tasks.items():
        if tasks and task not in tasks:
            continue
        run_dir = backbones_dir(spec, runs_dir) / str(task)
        schedule = [
            str(o) for o in (
                *spec.get("overrides", []), *task_spec.get("overrides", []), *_baseline_overrides(task_spec),
                *stage.get("overrides", []),
            )
        ]
        key = [*schedule, f"seed={seed}", f"format={FILE_FORMAT}"]
        digest = hashlib.sha256("\n".join(key).encode()).hexdigest()[:12]
        checkpoint = run_dir / f"backbone-{digest}.pt"
        save = (
            f"+callbacks.save_backbone={{_target_:{SaveBackbone.__module__}.{SaveBackbone.__name__},"
            f"path:'{checkpoint}'}}"
        )
        runs.append(BackboneRun(str(task), seed, (*schedule, save, f"seed={seed}"), run_dir, checkpoint))
    return runs


def frozen_overrides(checkpoint: Path) -> list[str]:
    """The overrides that make a run load ``checkpoint`` into its backbone and freeze it."""
    return [f"+backbone.checkpoint='{checkpoint}'", "+backbone.frozen=true"]


def freeze_rows(spec: DictConfig, runs_dir: Path) -> DictConfig:
    """The table with every task's overrides extended by :func:`frozen_overrides` of its stage-0
    checkpoint (the table as it is without a ``shared_backbone`` section)."""
    if spec.get("shared_backbone") is None:
        return spec
    spec = copy.deepcopy(spec)
    for run in plan(spec, runs_dir):
        task_spec: Any = spec.tasks[run.task]
        task_spec.overrides = ListConfig([*task_spec.get("overrides", []), *frozen_overrides(run.checkpoint)])
    return spec
