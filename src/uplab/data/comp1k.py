"""Composition-1k (Adobe Deep Image Matting dataset; Xu et al., CVPR 2017) for image matting.

Training samples are composited on the fly, ``I = alpha F + (1 - alpha) B``, from
``Training_set/{fg,alpha}/<fg name>`` and ``Training_set/bg/<bg name>``, with the names in
``training_fg_names.txt`` and ``training_bg_names.txt``: sample ``i`` uses fg ``i // k`` and bg
``i`` where ``k = n_bg // n_fg`` (DIM's pairing; 100 backgrounds per foreground in the real set),
or a background drawn anew for every sample (``random_background``, the A2U release).
Its trimap is drawn from the alpha with a random band width. Test samples are read from
``Test_set/{merged,alpha,trimaps}/<name>`` (trimaps 0 / 128 / 255). The name lists are checked line
by line when the dataset is built (:func:`read_names`), each test trimap when it is read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from uplab.data import transforms as T
from uplab.data.io import DatasetError, read_gray, read_lines, read_rgb, require_dir
from uplab.data.toy.matting import trimap_from_alpha

SPLITS = ("train", "test")


def resolve_root(root: str | Path) -> Path:
    """``root`` itself, or ``root/Combined_Dataset`` when that is where the data sits."""
    root = Path(root)
    nested = root / "Combined_Dataset"
    return nested if nested.is_dir() else root


def trimap_to_unit(trimap: np.ndarray) -> np.ndarray:
    """0 / 128 / 255 trimap -> float32 {0, 0.5, 1}; other values are a ValueError."""
    bad = ~np.isin(trimap, (0, 128, 255))
    if bad.any():
        raise ValueError(
            f"trimap values must be 0, 128 or 255; got {np.unique(trimap[bad])[:5].tolist()}"
        )
    return np.select([trimap == 0, trimap == 128], [0.0, 0.5], 1.0).astype(np.float32)


LAYER_KEYS = ("fg", "bg")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def read_names(path: Path, what: str, unique: bool) -> list[str]:
    """The image names of a list file, one per line, or DatasetError naming the file, the line and
    the rule: a bare file name (no folder) with an image suffix, and listed once when ``unique``
    (a foreground listed twice would get twice the backgrounds)."""
    names = read_lines(path, what)
    seen: dict[str, int] = {}
    for number, name in enumerate(names, 1):
        if "/" in name or "\\" in name or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
            raise DatasetError(
                f"{path}:{number}: expected a file name ending in {', '.join(IMAGE_SUFFIXES)} "
                f"(no folder); got {name!r}"
            )
        if unique and name in seen:
            raise DatasetError(
                f"{path}:{number}: {name!r} is listed twice (first on line {seen[name]})"
            )
        seen[name] = number
    return names


def read_trimap(path: Path) -> np.ndarray:
    """A test trimap (uint8 0 / 128 / 255), or DatasetError naming the file and the values."""
    trimap = read_gray(path)
    bad = ~np.isin(trimap, (0, 128, 255))
    if bad.any():
        raise DatasetError(
            f"{path}: trimap values must be 0, 128 or 255; got "
            f"{np.unique(trimap[bad])[:5].tolist()} in {int(bad.sum())} pixels"
        )
    return trimap


class Composition1k(Dataset):
    """Matting samples: ``dict(image=float32 [3,H,W] normalised, trimap=float32 [1,H,W] in {0,0.5,1},
    alpha=float32 [1,H,W] in [0,1])``, plus ``fg`` and ``bg`` (float32 [3,H,W] in [0,1], for the
    composition loss) when the transform returns them (the A2U pipeline with ``composite=False``).

    Args:
        root: ``Combined_Dataset`` or the folder containing it.
        split: ``train`` (composited on the fly) or ``test`` (pre-composited).
        transform: a ``uplab.data.transforms`` pipeline (applied to image, alpha and trimap).
        seed: seed of the random transforms and of the training trimaps.
        trimap_radius: range ``(low, high)`` of the training trimaps' band width in pixels.
        composite: True composites training samples here (and draws their trimaps); False hands
            the layers ``dict(fg, alpha, bg)`` (uint8, each at its own size) and
            ``draw_foreground`` (see :meth:`draw_foreground`) to ``transform``,
            which must return ``image``, ``alpha`` and ``trimap`` (the A2U release's order:
            ``uplab.data.pipelines.a2u_matting_train``).
        random_background: draw sample ``i``'s background uniformly from all backgrounds each
            time it is read, instead of DIM's fixed pairing (the A2U release's ``TRAIN.random_bgidx:
            True``: ``bg_idx = np.random.randint(0, self.bg_num - 1)`` in ``DataGenerator.
            __getitem__``, dongdong93/a2u_matting ``scripts/data_generator.py``; its upper bound
            leaves out the last of the 43,100 backgrounds, which is not copied here).
    """

    def __init__(
        self,
        root,
        split: str = "train",
        transform=None,
        seed: int = 0,
        trimap_radius=(1, 5),
        composite: bool = True,
        random_background: bool = False,
    ):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
        if not composite and (split != "train" or transform is None):
            raise ValueError(
                "composite=False hands the layers to the transform: it needs split='train' and a "
                f"compositing transform; got split={split!r}, transform={transform!r}"
            )
        self.root = resolve_root(root)
        self.split = split
        if split == "train":
            base = require_dir(self.root / "Training_set", "Composition-1k training set")
            for folder in ("fg", "alpha", "bg"):
                require_dir(base / folder, f"Composition-1k training {folder}")
            fg_names = read_names(
                base / "training_fg_names.txt", "Composition-1k foreground list", unique=True
            )
            bg_names = read_names(
                base / "training_bg_names.txt", "Composition-1k background list", unique=False
            )
            if not fg_names or len(bg_names) < len(fg_names):
                raise DatasetError(
                    f"{base}: need at least one background per foreground; got {len(fg_names)} "
                    f"foregrounds and {len(bg_names)} backgrounds"
                )
            self.foregrounds = [(base / "fg" / n, base / "alpha" / n) for n in fg_names]
            self.backgrounds = [base / "bg" / n for n in bg_names]
            per_fg = len(bg_names) // len(fg_names)
            self.samples = [
                (
                    base / "fg" / fg_names[i // per_fg],
                    base / "alpha" / fg_names[i // per_fg],
                    base / "bg" / bg,
                )
                for i, bg in enumerate(bg_names[: per_fg * len(fg_names)])
            ]
        else:
            base = require_dir(self.root / "Test_set", "Composition-1k test set")
            merged = require_dir(base / "merged", "Composition-1k test merged images")
            names = sorted(p.name for p in merged.iterdir() if p.suffix.lower() in (".png", ".jpg"))
            if not names:
                raise DatasetError(f"Composition-1k test merged images: no images in {merged}")
            self.samples = [(merged / n, base / "alpha" / n, base / "trimaps" / n) for n in names]
        missing = [p for sample in self.samples for p in sample if not p.is_file()]
        if missing:
            raise DatasetError(
                f"Composition-1k {split}: {len(missing)} files missing, e.g. {missing[0]}"
            )
        self.transform = transform
        self.seed = seed
        self.trimap_radius = tuple(trimap_radius)
        self.composite = composite
        self.random_background = random_background
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        if self.split == "test":
            merged, alpha, trimap = self.samples[index]
            return {
                "image": read_rgb(merged),
                "alpha": read_gray(alpha),
                "trimap": read_trimap(trimap),
            }
        fg_path, alpha_path, bg_path = self.samples[index]
        if self.random_background:
            bg_path = self.backgrounds[int(rng.integers(len(self.backgrounds)))]
        fg, alpha, bg = read_rgb(fg_path), read_gray(alpha_path), read_rgb(bg_path)
        if not self.composite:
            return {"fg": fg, "alpha": alpha, "bg": bg, "draw_foreground": self.draw_foreground}
        if fg.shape != bg.shape:
            bg = T.resize(bg, (fg.shape[1], fg.shape[0]), T.DENSE_KEYS["image"][0])
        a = alpha.astype(np.float32)[..., None] / 255.0
        image = a * (fg.astype(np.float32) / 255.0) + (1 - a) * (bg.astype(np.float32) / 255.0)
        radius = int(rng.integers(self.trimap_radius[0], self.trimap_radius[1] + 1))
        return {"image": image, "alpha": alpha, "trimap": trimap_from_alpha(alpha, radius)}

    def draw_foreground(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A uniformly drawn training foreground and its alpha (uint8), for the A2U pipeline's
        second-foreground overlay."""
        fg_path, alpha_path = self.foregrounds[int(rng.integers(len(self.foregrounds)))]
        fg, alpha = read_rgb(fg_path), read_gray(alpha_path)
        if alpha.shape != fg.shape[:2]:
            raise DatasetError(
                f"{alpha_path}: alpha {alpha.shape} does not match fg {fg.shape[:2]}"
            )
        return fg, alpha

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = T.sample_rng(self.seed, self.epoch, index)
        sample = self._load(index, rng)
        first = sample["fg"] if not self.composite else sample["image"]
        for key in ("alpha",) if not self.composite else ("alpha", "trimap"):
            if sample[key].shape != first.shape[:2]:
                raise DatasetError(
                    f"{self.samples[index][0]}: {key} {sample[key].shape} does not match image {first.shape[:2]}"
                )
        if self.transform is not None:
            sample = self.transform(sample, rng)
        if not {"image", "alpha", "trimap"} <= sample.keys():
            raise ValueError(
                f"the transform must return image, alpha and trimap; got {sorted(sample)}"
            )
        out = {
            "image": T.normalize_image(sample["image"]),
            "trimap": torch.from_numpy(trimap_to_unit(sample["trimap"]))[None],
            "alpha": torch.from_numpy(sample["alpha"].astype(np.float32) / 255.0)[None],
        }
        for key in LAYER_KEYS:
            if key in sample:
                out[key] = _layer_to_tensor(sample[key], key, sample["image"].shape)
        return out


def _layer_to_tensor(layer: np.ndarray, key: str, image_shape: tuple[int, ...]) -> torch.Tensor:
    """A float [H, W, 3] layer in [0, 1] from the pipeline -> float32 [3, H, W]."""
    if layer.shape != image_shape or not np.issubdtype(layer.dtype, np.floating):
        raise ValueError(
            f"the transform's {key} must be a float [H, W, 3] array in [0, 1] at the image's size "
            f"{image_shape}; got {layer.dtype} {layer.shape}"
        )
    return torch.from_numpy(np.ascontiguousarray(layer, dtype=np.float32).transpose(2, 0, 1))
