"""The procedural toy suite: small datasets in the real datasets' on-disk formats.

``ensure_toy(task)`` generates a task's dataset on first use, deterministically from a seed, and
returns the directory that the real loader reads (``uplab.data.ade20k``, ``nyuv2``, ``comp1k``,
``coco``). Each image draws from its own generator seeded by ``(seed, task, split, index)``, so
a dataset's bytes depend on the seed and the sizes only. Writing is atomic: the dataset is built
in a temporary sibling directory and renamed into place, and a marker file (``.toy.json``) records
the parameters; a call with other parameters rebuilds it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from uplab.data.toy import depth, detection, matting, segmentation

MARKER = ".toy.json"
FORMAT_VERSION = 1
TASKS = ("segmentation", "depth", "matting", "detection")
_WRITERS = {
    "segmentation": segmentation.write,
    "depth": depth.write,
    "matting": matting.write,
    "detection": detection.write,
}
DEFAULT_SIZES = {
    "segmentation": {"num_train": 400, "num_val": 100, "image_size": 64},
    "depth": {"num_train": 400, "num_val": 100, "image_size": 64},
    "matting": {"num_train": 400, "num_val": 100, "image_size": 64},
    "detection": {"num_train": 400, "num_val": 100, "image_size": 96},
}


def toy_parameters(task: str, seed: int = 0, **size_kw: int) -> dict:
    """The full parameter record of a toy dataset (what the marker file stores)."""
    if task not in TASKS:
        raise ValueError(f"unknown toy task {task!r}; expected one of {TASKS}")
    sizes = dict(DEFAULT_SIZES[task])
    unknown = set(size_kw) - set(sizes)
    if unknown:
        raise ValueError(
            f"unknown toy size options {sorted(unknown)}; expected some of {sorted(sizes)}"
        )
    sizes.update({k: int(v) for k, v in size_kw.items()})
    if min(sizes.values()) < 1 or sizes["image_size"] < 16:
        raise ValueError(f"toy sizes must be positive and image_size >= 16; got {sizes}")
    return {"task": task, "seed": int(seed), "version": FORMAT_VERSION, **sizes}


def _rng_factory(task: str, seed: int) -> Callable[[str, int], np.random.Generator]:
    task_id = TASKS.index(task)

    def rng_for(split: str, index: int) -> np.random.Generator:
        split_id = {"train": 0, "training": 0, "val": 1, "validation": 1, "test": 1}[split]
        return np.random.default_rng([seed, task_id, split_id, index])

    return rng_for


def read_marker(dataset_dir: Path) -> dict | None:
    try:
        return json.loads((Path(dataset_dir) / MARKER).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def build_toy(task: str, dataset_dir: str | Path, seed: int = 0, **size_kw: int) -> Path:
    """Make sure ``dataset_dir`` holds the toy dataset of ``task`` with these parameters.

    Returns ``dataset_dir``. Nothing is written when its marker already matches.
    """
    params = toy_parameters(task, seed, **size_kw)
    target = Path(dataset_dir)
    if read_marker(target) == params:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        sizes = {k: params[k] for k in DEFAULT_SIZES[task]}
        _WRITERS[task](staging, _rng_factory(task, params["seed"]), **sizes)
        (staging / MARKER).write_text(json.dumps(params, indent=1, sort_keys=True))
        if target.exists():
            if read_marker(target) == params:  # another process finished first
                return target
            if read_marker(target) is None and any(target.iterdir()):
                raise FileExistsError(
                    f"{target} exists and is not a toy dataset (no {MARKER}); refusing to replace it"
                )
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            target.rename(retired / target.name)
            shutil.rmtree(retired, ignore_errors=True)
        try:
            staging.rename(target)
        except OSError:
            if read_marker(target) != params:
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def ensure_toy(task: str, root: str | Path = "data/toy", seed: int = 0, **size_kw: int) -> Path:
    """Generate the toy dataset of ``task`` under ``root/<task>`` on first use; return that path.

    Args:
        task: one of ``segmentation``, ``depth``, ``matting``, ``detection``.
        root: folder of the toy suite (the repository's ``data/toy`` by default).
        seed: the dataset's seed; the same seed and sizes give byte-identical files.
        **size_kw: ``num_train``, ``num_val``, ``image_size`` (defaults in ``DEFAULT_SIZES``).

    Returns:
        The dataset root the real loader of the task reads.

    Example:
        >>> from uplab.data.ade20k import ADE20K
        >>> ds = ADE20K(ensure_toy("segmentation", "/tmp/toy", num_train=4, num_val=2), "validation")
        >>> len(ds)
        2
    """
    return build_toy(task, Path(root) / task, seed, **size_kw)


__all__ = ["DEFAULT_SIZES", "TASKS", "build_toy", "ensure_toy", "toy_parameters"]
