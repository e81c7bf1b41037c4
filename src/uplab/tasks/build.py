"""Build a task module from a composed ``uplab-train`` config: the one place a run's model is
made, for training (``uplab.train``) and for counting its cost (``uplab.analysis.cost``)."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig
from torch import nn

from uplab.models.decoders.pyramid import upsampler_is_guided

# what a task module may take from its data (a LightningDataModule, or any object with these)
DATA_ATTRIBUTES = ("num_classes", "ignore_index")


def part_seed(seed: int, part: str) -> int:
    """A seed for the named part of a model (``"upsampler.0"``, ...) derived from the run's seed:
    the same for the same pair, unrelated for different parts."""
    digest = hashlib.sha256(f"{int(seed)}/{part}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class SeparatelySeededUpsamplers:
    """An upsampler factory whose every call draws its initial weights from a generator of its
    own, seeded by :func:`part_seed` (``seed``, ``upsampler.<k>`` for the k-th call), and leaves
    the global generator as it found it.

    The decoders build their upsamplers between their own layers, and torchvision's detector
    builds its RPN and box heads after the FPN; without this, an upsampler with weights would
    advance the global generator and every part built after it would start from other weights
    than in a row with another upsampler. With it, the runs of one seed start from the same
    weights in every part that is not an upsampler, wherever the rows' shapes agree.

    Args:
        factory: the upsampler factory (a Hydra partial of ``uplab.upsamplers.build``).
        seed: the run's seed.
    """

    def __init__(self, factory: Callable[..., nn.Module], seed: int):
        self.factory = factory
        self.seed = int(seed)
        self.calls = 0
        self.keywords = dict(getattr(factory, "keywords", {}) or {})  # the name, for messages
        self.guided = upsampler_is_guided(factory)

    def __call__(self, *args: Any, **kwargs: Any) -> nn.Module:
        seed = part_seed(self.seed, f"upsampler.{self.calls}")
        self.calls += 1
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.factory(*args, **kwargs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.factory!r}, seed={self.seed})"


def build_task(cfg: DictConfig, datamodule: Any) -> pl.LightningModule:
    """The task module of ``cfg.task`` with the backbone, decoder and upsampler factories and the
    arguments the data supplies (``num_classes``, ``ignore_index``). The upsamplers are seeded
    apart from the rest of the model (:class:`SeparatelySeededUpsamplers`, from ``cfg.seed``).

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
    upsampler = instantiate(cfg.upsampler)
    if upsampler is not None:
        upsampler = SeparatelySeededUpsamplers(upsampler, cfg.get("seed", 0))
    return instantiate(
        cfg.task,
        backbone=instantiate(cfg.backbone),
        decoder=instantiate(cfg.decoder),
        upsampler=upsampler,
        **from_data,
    )
