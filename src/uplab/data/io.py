"""Reading dataset files with errors that name the path and what was expected."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError


class DatasetError(FileNotFoundError):
    """A dataset is missing, incomplete or holds an unreadable file (the message says which)."""


def require_dir(path: Path, what: str) -> Path:
    """``path`` if it is a directory, else DatasetError naming it and what it should hold."""
    if not path.is_dir():
        raise DatasetError(f"{what}: expected the folder {path}, which does not exist")
    return path


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DatasetError(f"{what}: expected the file {path}, which does not exist")
    return path


def _open(path: Path) -> Image.Image:
    if not path.is_file():
        raise DatasetError(f"missing file {path}")
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise DatasetError(f"cannot read image {path}: {error}") from error
    return image


def read_rgb(path: Path) -> np.ndarray:
    """An image as uint8 RGB ``[H, W, 3]``."""
    return np.asarray(_open(path).convert("RGB"))


def read_gray(path: Path, dtype=np.uint8) -> np.ndarray:
    """A single-channel image (8-bit label map or alpha; 16-bit depth) as ``[H, W]`` of ``dtype``.

    An RGB file where a single channel was expected is read through its first channel (Adobe's
    alpha mattes are sometimes stored as 3 equal channels); a bit depth other than ``dtype``'s is a
    DatasetError.
    """
    image = _open(path)
    array = np.asarray(image)
    if array.ndim == 3:
        array = array[..., 0]
    if dtype == np.uint16 and array.dtype in (np.int32, np.uint16):
        if array.min() < 0 or array.max() > 65535:
            raise DatasetError(f"{path}: values outside 16-bit range")
        return array.astype(np.uint16)
    if array.dtype != dtype:
        raise DatasetError(
            f"{path}: expected a {np.dtype(dtype).name} image, got mode {image.mode} ({array.dtype})"
        )
    return array


def read_lines(path: Path, what: str) -> list[str]:
    require_file(path, what)
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]
