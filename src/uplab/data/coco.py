"""COCO 2017 object detection (Lin et al., ECCV 2014), read through pycocotools.

Layout: ``annotations/instances_{train,val}2017.json`` and images in ``{train,val}2017/``.
Samples follow torchvision's detection convention: ``(image float32 [3,H,W] in [0,1],
dict(boxes=float32 [N,4] xyxy pixels, labels=int64 [N] from 1, image_id=int, ...))``; COCO's
category ids (not contiguous in the real set) are mapped to labels ``1..K`` in id order. Crowd
annotations are not trained on (torchvision's reference training; mmdetection keeps them as
ignored boxes its Faster R-CNN does not use), but evaluation needs them: the official protocol
(pycocotools ``COCOeval``) matches a detection on a crowd region as neither true nor false
positive, and buckets objects into small / medium / large by the annotation's ``area`` (the
segment's area, not the box's). The target therefore also carries ``area`` (float32 [N]) and
the crowd regions ``crowd_boxes`` (float32 [M,4]), ``crowd_labels`` and ``crowd_area``, all in the
original image's pixels, which :class:`uplab.metrics.DetectionMetrics` reads.

The annotation file is checked once, when the dataset is built (:func:`boxes_per_image`): every
image has a positive width and height, every annotation an image and a category from the file's
lists and a ``bbox`` of 4 finite numbers ``[x, y, width, height]``; each error names the file, the
annotation id and the rule. Boxes the released recipe leaves out are left out here too, with one
warning that counts them: mmdetection 2.x ``CocoDataset._parse_ann_info`` skips a box narrower or
lower than 1 pixel, one whose ``area`` is not positive, and one with no overlap with its image
(real COCO 2017 files hold a few of each). A box that reaches past the image border is clipped to
the image, as mmdetection's ``Resize(clip_border=True)`` does before training.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from uplab.data import transforms as T
from uplab.data.io import DatasetError, read_rgb, require_dir, require_file

SPLITS = ("train", "val")


def _annotation_error(path: Path, annotation: dict, rule: str) -> DatasetError:
    return DatasetError(
        f"{path}: annotation id {annotation.get('id')!r} (image {annotation.get('image_id')!r}): "
        f"{rule}; fix or remove the annotation"
    )


class ImageBoxes(NamedTuple):
    """One image's boxes (xyxy pixels, clipped to the image), labels and annotation areas."""

    boxes: np.ndarray  # float32 [N, 4]
    labels: np.ndarray  # int64 [N]
    area: np.ndarray  # float32 [N]


def boxes_per_image(
    coco: COCO, path: Path, label_of: dict[int, int]
) -> dict[int, tuple[ImageBoxes, ImageBoxes]]:
    """Validate every annotation of ``coco`` (read from ``path``) and return, per image id, its
    non-crowd and its crowd :class:`ImageBoxes`. Raises DatasetError naming ``path``, the
    annotation and the rule it breaks."""
    sizes = {}
    for image_id, info in coco.imgs.items():
        width, height = info.get("width"), info.get("height")
        if not all(
            isinstance(v, (int, float)) and np.isfinite(v) and v > 0 for v in (width, height)
        ):
            raise DatasetError(
                f"{path}: image id {image_id!r}: width and height must be positive numbers; got "
                f"width={width!r}, height={height!r}"
            )
        sizes[image_id] = (width, height)
    annotations = list(coco.anns.values())
    for annotation in annotations:
        bbox = annotation.get("bbox")
        if not (
            isinstance(bbox, (list, tuple))
            and len(bbox) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)
        ):
            raise _annotation_error(
                path, annotation, f"bbox must be 4 numbers [x, y, width, height]; got {bbox!r}"
            )
        if annotation.get("image_id") not in sizes:
            raise _annotation_error(path, annotation, "image_id is not in the file's images")
        if annotation.get("category_id") not in label_of:
            raise _annotation_error(
                path,
                annotation,
                f"category_id {annotation.get('category_id')!r} is not in the file's categories "
                f"{sorted(label_of)}",
            )
    xywh = np.array([a["bbox"] for a in annotations], np.float64).reshape(-1, 4)
    size = np.array([sizes[a["image_id"]] for a in annotations], np.float64).reshape(-1, 2)
    xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    clipped = np.concatenate([xyxy[:, :2].clip(0, size), xyxy[:, 2:].clip(0, size)], axis=1)
    broken = ~np.isfinite(xywh).all(axis=1)
    if broken.any():
        a = annotations[int(np.argmax(broken))]
        raise _annotation_error(
            path,
            a,
            f"bbox holds a non-finite number: {a['bbox']} ({int(broken.sum())} annotations of "
            "the file break this rule)",
        )
    area = np.array([a.get("area", 1.0) for a in annotations], np.float64)
    skipped = {
        "narrower or lower than 1 pixel": (xywh[:, 2] < 1) | (xywh[:, 3] < 1),
        "area <= 0": ~(area > 0),
        "no overlap with the image": (clipped[:, 2] <= clipped[:, 0])
        | (clipped[:, 3] <= clipped[:, 1]),
    }
    keep = ~np.logical_or.reduce(list(skipped.values()))
    if not keep.all():
        counts = ", ".join(f"{int(m.sum())} {rule}" for rule, m in skipped.items() if m.any())
        warnings.warn(
            f"{path}: left out {int((~keep).sum())} of {len(annotations)} boxes as mmdetection "
            f"2.x does ({counts})",
            stacklevel=2,
        )
    # the annotation's area where the file gives one (pycocotools reads it), else the box's
    area = np.where(np.isfinite(area) & (area > 0), area, xywh[:, 2] * xywh[:, 3])
    per_image = {image_id: ([], []) for image_id in sizes}  # (plain, crowd) annotation indices
    for index, (annotation, kept) in enumerate(zip(annotations, keep, strict=True)):
        if kept:
            per_image[annotation["image_id"]][bool(annotation.get("iscrowd", 0))].append(index)

    def gather(indices: list[int]) -> ImageBoxes:
        return ImageBoxes(
            clipped[indices].astype(np.float32).reshape(-1, 4),
            np.array([label_of[annotations[i]["category_id"]] for i in indices], np.int64),
            area[indices].astype(np.float32),
        )

    return {
        image_id: (gather(plain), gather(crowd)) for image_id, (plain, crowd) in per_image.items()
    }


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
        filter_empty_gt: leave out the images without any annotation in the file (crowd and
            skipped boxes count as annotations), as mmdetection 2.x ``CocoDataset._filter_imgs``
            does for training (``filter_empty_gt=True``).
        min_size: leave out the images whose shorter side is below this many pixels
            (mmdetection 2.x's training set: 32).
    """

    def __init__(
        self,
        root,
        split: str = "train",
        transform=None,
        seed: int = 0,
        filter_empty_gt: bool = False,
        min_size: int = 0,
    ):
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
        self.targets = boxes_per_image(self.coco, annotation_file, self.label_of)
        self.image_ids = [
            image_id
            for image_id in sorted(self.coco.getImgIds())
            if (not filter_empty_gt or self.coco.imgToAnns[image_id])
            and min(self.coco.imgs[image_id]["width"], self.coco.imgs[image_id]["height"]) >= min_size
        ]
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
        plain, crowd = self.targets[image_id]
        if image.shape[:2] != (info["height"], info["width"]):
            raise DatasetError(
                f"{self.image_dir / info['file_name']}: image is {image.shape[1]} x "
                f"{image.shape[0]} (width x height) but its entry in the annotation file says "
                f"{info['width']} x {info['height']}"
            )
        sample = {"image": image, "boxes": plain.boxes.copy(), "labels": plain.labels.copy()}
        if self.transform is not None:
            sample = self.transform(sample, T.sample_rng(self.seed, self.epoch, index))
        target = {
            "boxes": torch.from_numpy(np.ascontiguousarray(sample["boxes"], np.float32)),
            "labels": torch.from_numpy(np.ascontiguousarray(sample["labels"], np.int64)),
            "image_id": int(image_id),
        }
        if len(sample["boxes"]) == len(plain.boxes):
            # evaluation fields, in the original image's pixels (the detector maps its boxes back
            # there); a transform that dropped boxes (a training crop) leaves them out
            target |= {
                "area": torch.from_numpy(plain.area.copy()),
                "crowd_boxes": torch.from_numpy(crowd.boxes.copy()),
                "crowd_labels": torch.from_numpy(crowd.labels.copy()),
                "crowd_area": torch.from_numpy(crowd.area.copy()),
            }
        return T.image_to_unit_tensor(sample["image"]), target
