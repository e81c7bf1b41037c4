"""ADE20K SceneParsing (ADEChallengeData2016) for semantic segmentation (Zhou et al., CVPR 2017).

Layout: ``images/{training,validation}/*.jpg`` and ``annotations/{training,validation}/*.png``
(8-bit label maps; 0 is "other"). As mmsegmentation's ``reduce_zero_label``, label 0 becomes the
ignore index 255 and every other label ``l`` becomes ``l - 1``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from uplab.data import transforms as T
from uplab.data.io import DatasetError, read_gray, read_lines, read_rgb, require_dir

IGNORE_INDEX = 255
SPLITS = ("training", "validation")


def reduce_zero_label(label: np.ndarray) -> np.ndarray:
    """0 -> 255 (ignore), l -> l - 1 otherwise (uint8)."""
    out = label.astype(np.int16) - 1
    out[label == 0] = IGNORE_INDEX
    return out.astype(np.uint8)


def resolve_root(root: str | Path) -> Path:
    """``root`` itself, or ``root/ADEChallengeData2016`` when that is where the data sits."""
    root = Path(root)
    nested = root / "ADEChallengeData2016"
    return nested if nested.is_dir() else root


def count_classes(root: Path) -> int:
    """Classes listed in ``objectInfo150.txt`` (150 for ADE20K), without "other".

    The file must be there: the class count sizes the model's head and bounds every label, so it
    is read, never assumed.
    """
    info = root / "objectInfo150.txt"
    if not info.is_file():
        raise DatasetError(
            f"ADE20K class list: expected the file {info}, which does not exist (a header line, "
            "then one line per class; it ships in ADEChallengeData2016.zip)"
        )
    classes = len(read_lines(info, "ADE20K class list")) - 1
    if classes < 1:
        raise DatasetError(
            f"{info}: expected a header line and one line per class; found no class line"
        )
    return classes


def check_labels(label: np.ndarray, num_classes: int, path: Path) -> None:
    """Raise DatasetError naming ``path`` when a raw label exceeds ``num_classes`` (ADE's labels
    are 0 for "other" and ``1..num_classes``)."""
    highest = int(label.max()) if label.size else 0
    if highest > num_classes:
        raise DatasetError(
            f"{path}: label {highest} is out of range: labels must be 0 (other) to {num_classes} "
            f"(the classes of objectInfo150.txt); {int((label > num_classes).sum())} pixels exceed it"
        )


class ADE20K(Dataset):
    """ADE20K samples: ``dict(image=float32 [3,H,W] normalised, mask=int64 [H,W], 255 = ignore)``.

    Args:
        root: ``ADEChallengeData2016`` or the folder containing it.
        split: ``training`` or ``validation``.
        transform: a ``uplab.data.transforms`` pipeline applied to the uint8 arrays.
        seed: seed of the random transforms (with the epoch and the index).
    """

    def __init__(self, root: str | Path, split: str = "training", transform=None, seed: int = 0):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
        self.root = resolve_root(root)
        images = require_dir(self.root / "images" / split, f"ADE20K {split} images")
        labels = require_dir(self.root / "annotations" / split, f"ADE20K {split} annotations")
        self.images = sorted(images.glob("*.jpg"))
        if not self.images:
            raise DatasetError(f"ADE20K {split} images: no *.jpg in {images}")
        self.labels = [labels / f"{p.stem}.png" for p in self.images]
        missing = [p for p in self.labels if not p.is_file()]
        if missing:
            raise DatasetError(
                f"ADE20K {split} annotations: {len(missing)} label maps missing, e.g. {missing[0]}"
            )
        self.num_classes = count_classes(self.root)
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        label = read_gray(self.labels[index])
        check_labels(label, self.num_classes, self.labels[index])
        sample = {"image": read_rgb(self.images[index]), "mask": reduce_zero_label(label)}
        if sample["image"].shape[:2] != sample["mask"].shape:
            raise DatasetError(
                f"{self.labels[index]}: label map {sample['mask'].shape} does not match image "
                f"{sample['image'].shape[:2]}"
            )
        if self.transform is not None:
            sample = self.transform(sample, T.sample_rng(self.seed, self.epoch, index))
        return {
            "image": T.normalize_image(sample["image"]),
            "mask": torch.from_numpy(sample["mask"].astype(np.int64)),
        }
