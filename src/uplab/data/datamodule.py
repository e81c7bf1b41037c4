"""One LightningDataModule for the four tasks, toy or real data alike.

``task`` picks the dataset class (segmentation: ADE20K, depth: NYUv2, matting: Composition-1k,
detection: COCO); ``toy`` (sizes, or None for real data) makes ``prepare_data`` generate the
procedural toy suite into ``root`` first. Built from ``conf/data/<name>.yaml`` by
``hydra.utils.instantiate``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from uplab.data import transforms as T
from uplab.data.ade20k import ADE20K, IGNORE_INDEX, count_classes
from uplab.data.ade20k import resolve_root as resolve_ade_root
from uplab.data.coco import COCODetection, collate_detection
from uplab.data.comp1k import Composition1k
from uplab.data.io import DatasetError
from uplab.data.nyuv2 import NYUv2
from uplab.data.toy import TASKS, build_toy

# task -> the script that checks a real dataset's layout and builds its derived files
PREPARE_SCRIPTS = {
    "segmentation": "prepare_ade20k.py",
    "depth": "prepare_nyuv2.py",
    "matting": "prepare_comp1k.py",
    "detection": "prepare_coco.py",
}


def prepare_command(task: str, root: str | Path) -> str:
    """The command that checks (and completes) the real dataset of ``task`` at ``root``."""
    return f"python scripts/{PREPARE_SCRIPTS[task]} --root {root}"


# task -> (dataset class, training split, evaluation split)
_DATASETS = {
    "segmentation": (ADE20K, "training", "validation"),
    "depth": (NYUv2, "train", "test"),
    "matting": (Composition1k, "train", "test"),
    "detection": (COCODetection, "train", "val"),
}


class EpochSeededSampler(Sampler[int]):
    """Random order drawn from ``(seed, epoch)``; ``set_epoch`` also tells the dataset the epoch.

    Lightning calls ``set_epoch`` at the start of every training epoch (and on resume), so both the
    order and each sample's augmentation are functions of seed, epoch and index only: a resumed
    run sees the same data as an uninterrupted one.
    """

    def __init__(self, dataset: Dataset, seed: int = 0) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.dataset.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        return iter(torch.randperm(len(self.dataset), generator=generator).tolist())

    def __len__(self) -> int:
        return len(self.dataset)


class DataModule(pl.LightningDataModule):
    """Data of one task.

    Args:
        task: ``segmentation``, ``depth``, ``matting`` or ``detection``.
        root: the dataset root its loader reads (e.g. ``data/toy/segmentation``).
        toy: toy sizes (``num_train``, ``num_val``, ``image_size``) to generate into ``root`` on
            first use, or None for a real dataset already in place.
        seed: seed of the toy data, the shuffling and the random transforms.
        batch_size: training batch size; ``eval_batch_size`` defaults to it.
        num_workers: DataLoader workers (0 for the toy suite).
        crop_size: random training crop (None: full images).
        flip: random horizontal flips in training.
        scale: ``(low, high)`` random resize range in training, or None.
        train_pipeline: a paper's training transform (``uplab.data.pipelines``), replacing the
            toy pipeline of ``crop_size``, ``flip`` and ``scale``; None keeps that one.
        eval_pipeline: the transform of evaluation samples (e.g. SegFormer's test resize), or None.
        train_dataset_options: keyword arguments of the training dataset (e.g.
            ``{"composite": false}`` for Composition-1k when the pipeline composites).

    Attributes:
        num_classes: segmentation: classes without the ignore label; detection: foreground
            classes + 1 background; None for depth and matting.
        ignore_index: the ignored label of segmentation (255).

    Example:
        >>> dm = DataModule("segmentation", "/tmp/toy/segmentation", toy={"num_train": 8, "num_val": 4})
        >>> dm.prepare_data(); dm.setup("fit"); image_batch = next(iter(dm.train_dataloader()))
    """

    def __init__(
        self,
        task: str,
        root: str | Path,
        toy: Mapping | None = None,
        seed: int = 0,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        crop_size: int | None = None,
        flip: bool = True,
        scale: tuple[float, float] | None = None,
        train_pipeline=None,
        eval_pipeline=None,
        train_dataset_options: Mapping | None = None,
    ) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}; got {task!r}")
        if batch_size < 1 or num_workers < 0:
            raise ValueError(
                f"need batch_size >= 1 and num_workers >= 0; got {batch_size}, {num_workers}"
            )
        self.task = task
        self.root = Path(root)
        self.toy = dict(toy) if toy is not None else None
        self.seed = seed
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.train_transform = train_pipeline or T.build_train_transform(
            crop_size, flip, tuple(scale) if scale is not None else None
        )
        self.eval_transform = eval_pipeline
        self.train_dataset_options = dict(train_dataset_options or {})
        self.ignore_index = IGNORE_INDEX if task == "segmentation" else None
        self.train_set: Dataset | None = None
        self.eval_set: Dataset | None = None

    def prepare_data(self) -> None:
        if self.toy is not None:
            build_toy(self.task, self.root, self.seed, **self.toy)

    @property
    def num_classes(self) -> int | None:
        if self.task == "segmentation":
            self.prepare_data()
            return count_classes(resolve_ade_root(self.root))
        if self.task == "detection":
            self.prepare_data()
            return self._dataset("val").num_classes
        return None

    def _dataset(self, which: str, transform=None) -> Dataset:
        cls, train_split, eval_split = _DATASETS[self.task]
        split, options = (train_split, self.train_dataset_options) if which == "train" else (eval_split, {})
        try:
            return cls(self.root, split, transform=transform, seed=self.seed, **options)
        except DatasetError as error:
            if self.toy is not None:
                raise
            raise DatasetError(
                f"{error}\nCheck the layout and build the derived files with: "
                f"{prepare_command(self.task, self.root)} (expected layouts: docs/datasets.md)"
            ) from error

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self._dataset("train", self.train_transform)
        if self.eval_set is None:
            self.eval_set = self._dataset("val", self.eval_transform)

    def _loader(self, dataset: Dataset, batch_size: int, sampler=None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=collate_detection if self.task == "detection" else None,
            drop_last=sampler is not None and len(dataset) > batch_size,
            persistent_workers=False,
        )

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        return self._loader(
            self.train_set, self.batch_size, EpochSeededSampler(self.train_set, self.seed)
        )

    def val_dataloader(self) -> DataLoader:
        if self.eval_set is None:
            self.setup("validate")
        return self._loader(self.eval_set, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
