"""NYU Depth v2 in the layout of BTS (Lee et al., arXiv 2019) for monocular depth.

A file list (``nyudepthv2_{train,test}_files_with_gt.txt``) holds lines ``rgb_path depth_path
focal``, relative to ``sync/`` (training) or ``official_splits/test/`` (test); depth maps are
16-bit PNGs in millimetres with 0 where there is no measurement (BTS divides by 1000). The list
is checked line by line when the dataset is built (:func:`parse_list_line`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from uplab.data import transforms as T
from uplab.data.io import DatasetError, read_gray, read_lines, read_rgb, require_dir

SPLITS = {
    "train": ("sync", "nyudepthv2_train_files_with_gt.txt"),
    "test": (Path("official_splits") / "test", "nyudepthv2_test_files_with_gt.txt"),
}
DEPTH_SCALE = 1000.0


def parse_list_line(line: str, list_path: Path, number: int, data_dir: Path):
    """``(rgb path, depth path, focal)`` from line ``number`` of a file list, or DatasetError
    naming the list, the line and the rule: three fields, both files present under ``data_dir``,
    a finite positive focal length in pixels."""
    fields = line.split()
    where = f"{list_path}:{number}"
    if len(fields) != 3 or fields[1] == "None":
        raise DatasetError(f"{where}: expected 'rgb_path depth_path focal'; got {line!r}")
    try:
        focal = float(fields[2])
    except ValueError:
        focal = float("nan")
    if not (np.isfinite(focal) and focal > 0):
        raise DatasetError(
            f"{where}: the focal length (third field) must be a positive number of pixels; "
            f"got {fields[2]!r}"
        )
    rgb, depth = (data_dir / f.lstrip("/") for f in fields[:2])
    for path in (rgb, depth):
        if not path.is_file():
            raise DatasetError(f"{where}: the file {path} it names does not exist")
    return rgb, depth, focal


class NYUv2(Dataset):
    """NYUv2 samples: ``dict(image=float32 [3,H,W] normalised, depth=float32 [1,H,W] metres, focal=float)``.

    Args:
        root: the ``nyu_depth_v2`` folder holding ``sync/``, ``official_splits/`` and the lists.
        split: ``train`` or ``test``.
        transform: a ``uplab.data.transforms`` pipeline.
        seed: seed of the random transforms.
        filenames_file: another list file (relative to ``root``) instead of the default one.
    """

    def __init__(
        self, root, split: str = "train", transform=None, seed: int = 0, filenames_file=None
    ):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {tuple(SPLITS)}; got {split!r}")
        self.root = Path(root)
        require_dir(self.root, "NYUv2 root")
        folder, default_list = SPLITS[split]
        self.data_dir = require_dir(self.root / folder, f"NYUv2 {split} images")
        list_path = self.root / (filenames_file or default_list)
        self.samples = [
            parse_list_line(line, list_path, number, self.data_dir)
            for number, line in enumerate(read_lines(list_path, f"NYUv2 {split} file list"), 1)
        ]
        if not self.samples:
            raise DatasetError(f"{list_path}: the file list holds no sample")
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rgb_path, depth_path, focal = self.samples[index]
        sample = {
            "image": read_rgb(rgb_path),
            "depth": read_gray(depth_path, np.uint16).astype(np.float32) / DEPTH_SCALE,
        }
        if sample["image"].shape[:2] != sample["depth"].shape:
            raise DatasetError(
                f"{depth_path}: depth {sample['depth'].shape} does not match image {sample['image'].shape[:2]}"
            )
        if self.transform is not None:
            sample = self.transform(sample, T.sample_rng(self.seed, self.epoch, index))
        return {
            "image": T.normalize_image(sample["image"]),
            "depth": torch.from_numpy(np.ascontiguousarray(sample["depth"]))[None],
            "focal": torch.tensor(focal, dtype=torch.float32),
        }
