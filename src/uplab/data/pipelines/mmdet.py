"""mmdetection's Faster R-CNN 1x COCO pipelines (``configs/_base_/datasets/coco_detection.py``),
the detection setting of CARAFE's and SAPA's tables.

Training: ``Resize(img_scale=(1333, 800), keep_ratio=True)`` -> ``RandomFlip(0.5)`` -> ``Pad(32)``.
Here the flip runs on the CPU workers and the keep-ratio resize, normalisation and padding to a
multiple of 32 are those of torchvision's ``GeneralizedRCNNTransform`` inside the detector
(``min_size=800, max_size=1333``: the same factor ``min(800 / short, 1333 / long)``), which also
maps the predicted boxes back to the original image, so COCO's area ranges are those of the
original annotations as in mmdetection's evaluation. Test: no augmentation.
"""

from __future__ import annotations

from uplab.data import transforms as T


def mmdet_train(flip: float = 0.5) -> T.Compose:
    """Horizontal flip with probability ``flip`` (the resize is the detector's)."""
    return T.Compose([T.RandomHorizontalFlip(flip)])


def mmdet_test() -> T.Compose:
    """No transform: the detector resizes to 800/1333 and maps boxes back."""
    return T.Compose([])
