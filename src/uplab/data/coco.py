"""COCO 2017 object detection (Lin et al., ECCV 2014), read through pycocotools.

Layout: ``annotations/instances_{train,val}2017.json`` and images in ``{train,val}2017/``.
Samples follow torchvision's detection convention: ``(image float32 [3,H,W] in [0,1],
dict(boxes=float32 [N,4] xyxy pixels, labels=int64 [N] from 1, image_id=int))``; COCO's
category ids (not contiguous in the real set) are mapped to labels ``1..K`` in id order, and
crowd annotations are left out, as in torchvision's reference training.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import torch
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from uplab.data import transforms as T
from uplab.data.io import DatasetError, read_rgb, require_dir, require_file

SPLITS = ("train", "val")


def collate_detection(batch):
    """Collate ``(image, target)`` pairs into ``(list of images, list of targets)``."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


class COCODetection(Dataset):
    """COCO box annotations.

    Args:
        root: folder holding ``annotations/`` and ``{train,val}2017/``.
        split: ``train`` or ``val``.
        transform: a ``uplab.data.transforms`` pipeline (boxes follow flips and crops).
        seed: seed of the random transforms.
    """

    def __init__(self, root, split: str = "train", transform=None, seed: int = 0):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
        self.root = Path(root)
        annotation_file = require_file(
            self.root / "annotations" / f"instances_{split}2017.json", f"COCO {split} annotations"
        )
        self.image_dir = require_dir(self.root / f"{split}2017", f"COCO {split} images")
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
                self.coco = COCO(str(annotation_file))
        except (ValueError, KeyError, TypeError) as error:
            raise DatasetError(
                f"cannot read COCO annotations {annotation_file}: {error}"
            ) from error
        self.category_ids = sorted(self.coco.getCatIds())
        self.label_of = {cat: label for label, cat in enumerate(self.category_ids, start=1)}
        self.image_ids = sorted(self.coco.getImgIds())
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    @property
    def num_classes(self) -> int:
        """Foreground categories plus one background class, as torchvision's detectors count."""
        return len(self.category_ids) + 1

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int):
        image_id = self.image_ids[index]
        info = self.coco.loadImgs(image_id)[0]
        image = read_rgb(self.image_dir / info["file_name"])
        annotations = [
            a
            for a in self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id))
            if not a.get("iscrowd", 0) and a["bbox"][2] > 0 and a["bbox"][3] > 0
        ]
        boxes = np.array([a["bbox"] for a in annotations], np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        labels = np.array([self.label_of[a["category_id"]] for a in annotations], np.int64)
        sample = {"image": image, "boxes": boxes, "labels": labels}
        if self.transform is not None:
            sample = self.transform(sample, T.sample_rng(self.seed, self.epoch, index))
        target = {
            "boxes": torch.from_numpy(np.ascontiguousarray(sample["boxes"], np.float32)),
            "labels": torch.from_numpy(np.ascontiguousarray(sample["labels"], np.int64)),
            "image_id": int(image_id),
        }
        return T.image_to_unit_tensor(sample["image"]), target
