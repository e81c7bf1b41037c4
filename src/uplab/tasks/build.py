"""Build a task module from a composed ``uplab-train`` config: the one place a run's model is
made, for training (``uplab.train``) and for counting its cost (``uplab.analysis.cost``)."""

from __future__ import annotations

import inspect
from typing import Any

import pytorch_lightning as pl
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig

# what a task module may take from its data (a LightningDataModule, or any object with these)
DATA_ATTRIBUTES = ("num_classes", "ignore_index")


def build_task(cfg: DictConfig, datamodule: Any) -> pl.LightningModule:
    """The task module of ``cfg.task`` with the backbone, decoder and upsampler factories and the
    arguments the data supplies (``num_classes``, ``ignore_index``).

    Args:
        cfg: a composed ``conf/train.yaml`` (``task``, ``backbone``, ``decoder``, ``upsampler``).
        datamodule: the run's data module, or any object with the :data:`DATA_ATTRIBUTES` the task
            takes (``uplab-cost`` passes a namespace, so no dataset is needed on disk).
    """
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
