"""Checks of the real datasets' layouts and the derived files the papers' code builds, for
``scripts/prepare_<dataset>.py``.

Each ``prepare_*`` returns a :class:`Report`: what was found (with counts against the published
ones), what is missing (path and what it should hold) and what was built. Nothing is downloaded:
the datasets are the user's to fetch (docs/datasets.md says where).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from uplab.data.ade20k import resolve_root as resolve_ade_root
from uplab.data.comp1k import resolve_root as resolve_comp_root
from uplab.data.io import read_gray, read_rgb

NYU_FOCAL = 518.8579  # the focal length in BTS's NYUv2 file lists


@dataclass
class Report:
    """Outcome of a layout check."""

    dataset: str
    root: Path
    layout: str
    found: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    built: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing

    def count(self, what: str, n: int, expected: int | None) -> None:
        """Record ``n`` items of ``what``; a count other than the published one is a warning."""
        self.found.append(f"{what}: {n}" + (f" (published: {expected})" if expected else ""))
        if expected and n != expected:
            self.warnings.append(f"{what}: found {n}, the published dataset has {expected}")

    def text(self) -> str:
        lines = [f"{self.dataset} at {self.root}: {'complete' if self.ok else 'INCOMPLETE'}"]
        lines += [f"  found    {x}" for x in self.found]
        lines += [f"  built    {x}" for x in self.built]
        lines += [f"  warning  {x}" for x in self.warnings]
        lines += [f"  MISSING  {x}" for x in self.missing]
        if not self.ok:
            lines += ["", "Expected layout:", self.layout.strip("\n")]
        return "\n".join(lines)


def _need_dir(report: Report, path: Path, what: str) -> bool:
    if path.is_dir():
        return True
    report.missing.append(f"{path} ({what})")
    return False


def _need_file(report: Report, path: Path, what: str) -> bool:
    if path.is_file():
        return True
    report.missing.append(f"{path} ({what})")
    return False


def _missing_files(report: Report, paths: list[Path], what: str) -> None:
    absent = [p for p in paths if not p.is_file()]
    if absent:
        report.missing.append(f"{len(absent)} {what}, e.g. {absent[0]}")


ADE20K_LAYOUT = """
ADEChallengeData2016/                 (http://sceneparsing.csail.mit.edu, ADEChallengeData2016.zip)
  objectInfo150.txt                   151 lines: header + 150 classes
  images/training/ADE_train_*.jpg     20,210
  images/validation/ADE_val_*.jpg     2,000
  annotations/training/*.png          8-bit label maps, same stems, 0 = other (ignored)
  annotations/validation/*.png
"""


def prepare_ade20k(root: str | Path) -> Report:
    root = resolve_ade_root(root)
    report = Report("ADE20K", root, ADE20K_LAYOUT)
    for split, expected in (("training", 20210), ("validation", 2000)):
        images, labels = root / "images" / split, root / "annotations" / split
        if not (
            _need_dir(report, images, f"{split} images")
            & _need_dir(report, labels, f"{split} label maps")
        ):
            continue
        stems = sorted(p.stem for p in images.glob("*.jpg"))
        report.count(f"{split} images", len(stems), expected)
        if not stems:
            report.missing.append(f"{images}/*.jpg (no {split} images)")
        _missing_files(report, [labels / f"{s}.png" for s in stems], f"{split} label maps")
    if not (root / "objectInfo150.txt").is_file():
        report.missing.append(f"{root / 'objectInfo150.txt'} (the class list)")
    return report


NYUV2_LAYOUT = """
nyu_depth_v2/                          (BTS's preparation: github.com/cleinc/bts, README "NYU Depth V2")
  sync/<scene>/rgb_XXXXX.jpg           training frames (BTS's sync.zip)
  sync/<scene>/sync_depth_XXXXX.png    16-bit depth in millimetres, 0 = no measurement
  official_splits/test/<scene>/rgb_XXXXX.jpg, sync_depth_XXXXX.png   654 test frames
                                       (BTS's utils/extract_official_train_test_set_from_mat.py)
  nyudepthv2_train_files_with_gt.txt   "rgb depth focal" per line, relative to sync/
  nyudepthv2_test_files_with_gt.txt    relative to official_splits/test/ (built when missing)
"""


def _nyu_pairs(folder: Path) -> list[str]:
    lines = []
    for rgb in sorted(folder.glob("*/rgb_*.jpg")):
        depth = rgb.with_name(rgb.name.replace("rgb_", "sync_depth_").replace(".jpg", ".png"))
        if depth.is_file():
            rel = f"/{rgb.parent.name}"
            lines.append(f"{rel}/{rgb.name} {rel}/{depth.name} {NYU_FOCAL}")
    return lines


def prepare_nyuv2(root: str | Path, build_lists: bool = True) -> Report:
    root = Path(root)
    report = Report("NYUv2", root, NYUV2_LAYOUT)
    splits = (
        ("train", root / "sync", "nyudepthv2_train_files_with_gt.txt", 24231),
        ("test", root / "official_splits" / "test", "nyudepthv2_test_files_with_gt.txt", 654),
    )
    for split, folder, list_name, expected in splits:
        if not _need_dir(report, folder, f"{split} frames"):
            continue
        list_path = root / list_name
        if not list_path.is_file() and build_lists:
            pairs = _nyu_pairs(folder)
            if pairs:
                list_path.write_text("\n".join(pairs) + "\n")
                report.built.append(
                    f"{list_path} ({len(pairs)} rgb/depth pairs found under {folder})"
                )
        if not _need_file(report, list_path, f"{split} file list"):
            continue
        entries = [line.split() for line in list_path.read_text().splitlines() if line.strip()]
        usable = [e for e in entries if len(e) == 3 and e[1] != "None"]
        report.count(f"{split} pairs in {list_name}", len(usable), expected)
        _missing_files(
            report,
            [folder / e[i].lstrip("/") for e in usable for i in (0, 1)],
            f"{split} files listed in {list_name}",
        )
    return report


COMP1K_LAYOUT = """
Combined_Dataset/                      (Adobe Deep Image Matting dataset, from its authors; plus
                                        COCO train2014 and PASCAL VOC 2012 for the backgrounds)
  Training_set/training_fg_names.txt   431 foreground names
  Training_set/training_bg_names.txt   43,100 COCO train2014 names (100 per foreground)
  Training_set/fg/<fg name>, alpha/<fg name>   (linked from "Adobe-licensed images" and "Other")
  Training_set/bg/<bg name>            (linked from --coco)
  Test_set/test_fg_names.txt, test_bg_names.txt    50 foregrounds, 1,000 VOC backgrounds
  Test_set/merged/<fg stem>_<i>.png    1,000 composites (built: 20 backgrounds per foreground)
  Test_set/alpha/<fg stem>_<i>.png     the foreground's alpha for each composite (built)
  Test_set/trimaps/<fg stem>_<i>.png   the released trimaps, 0/128/255 (copied)
"""


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        os.symlink(source.resolve(), target)


def composite_on(fg: np.ndarray, alpha: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """DIM's test composition: the background scaled (bicubic) to cover the foreground, its top-left
    part taken, then ``alpha * fg + (1 - alpha) * bg`` rounded to uint8."""
    h, w = alpha.shape
    ratio = max(h / bg.shape[0], w / bg.shape[1])
    if ratio > 1:
        size = (int(np.ceil(bg.shape[1] * ratio)), int(np.ceil(bg.shape[0] * ratio)))
        bg = np.asarray(Image.fromarray(bg).resize(size, Image.BICUBIC))
    a = alpha.astype(np.float32)[..., None] / 255.0
    image = a * fg.astype(np.float32) + (1 - a) * bg[:h, :w].astype(np.float32)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _build_training_links(report: Report, base: Path, coco: Path | None) -> None:
    """Link ``fg/``, ``alpha/`` from the release's two source folders and ``bg/`` from COCO."""
    sources = [base / "Adobe-licensed images", base / "Other"]
    linked = 0
    names_file = base / "training_fg_names.txt"
    if names_file.is_file():
        for name in names_file.read_text().split():
            for kind in ("fg", "alpha"):
                found = next(
                    (s / kind / name for s in sources if (s / kind / name).is_file()), None
                )
                if found is not None and not (base / kind / name).exists():
                    _link(found, base / kind / name)
                    linked += 1
    bg_names = base / "training_bg_names.txt"
    if coco is not None and bg_names.is_file():
        for name in bg_names.read_text().split():
            if (coco / name).is_file() and not (base / "bg" / name).exists():
                _link(coco / name, base / "bg" / name)
                linked += 1
    if linked:
        report.built.append(f"{linked} links in {base}/{{fg,alpha,bg}}")


def _build_test_composites(report: Report, base: Path, voc: Path | None) -> None:
    adobe = base / "Adobe-licensed images"
    fg_file, bg_file = base / "test_fg_names.txt", base / "test_bg_names.txt"
    if voc is None or not (adobe.is_dir() and fg_file.is_file() and bg_file.is_file()):
        return
    fg_names, bg_names = fg_file.read_text().split(), bg_file.read_text().split()
    per_fg = len(bg_names) // max(len(fg_names), 1)
    for f, fg_name in enumerate(fg_names):
        fg, alpha = read_rgb(adobe / "fg" / fg_name), read_gray(adobe / "alpha" / fg_name)
        stem = Path(fg_name).stem
        for i in range(per_fg):
            name = f"{stem}_{i}.png"
            trimap = adobe / "trimaps" / name
            if not trimap.is_file():
                report.missing.append(f"{trimap} (released test trimap)")
                continue
            bg = read_rgb(voc / bg_names[f * per_fg + i])
            for folder in ("merged", "alpha", "trimaps"):
                (base / folder).mkdir(exist_ok=True)
            Image.fromarray(composite_on(fg, alpha, bg)).save(base / "merged" / name)
            Image.fromarray(alpha).save(base / "alpha" / name)
            Image.fromarray(read_gray(trimap)).save(base / "trimaps" / name)
    report.built.append(
        f"{base / 'merged'}: {len(fg_names) * per_fg} test composites (+ alpha, trimaps)"
    )


def prepare_comp1k(
    root: str | Path, coco: str | Path | None = None, voc: str | Path | None = None
) -> Report:
    root = resolve_comp_root(root)
    report = Report("Composition-1k", root, COMP1K_LAYOUT)
    train, test = root / "Training_set", root / "Test_set"
    if _need_dir(report, train, "training set"):
        _build_training_links(report, train, Path(coco) if coco else None)
        if _need_file(report, train / "training_fg_names.txt", "foreground names") & _need_file(
            report, train / "training_bg_names.txt", "background names"
        ):
            fg_names = (train / "training_fg_names.txt").read_text().split()
            bg_names = (train / "training_bg_names.txt").read_text().split()
            report.count("training foregrounds", len(fg_names), 431)
            report.count("training backgrounds", len(bg_names), 43100)
            for kind in ("fg", "alpha"):
                _missing_files(
                    report, [train / kind / n for n in fg_names], f"training {kind} files"
                )
            _missing_files(
                report,
                [train / "bg" / n for n in bg_names],
                "training backgrounds (pass --coco <train2014>)",
            )
    if _need_dir(report, test, "test set"):
        if not (test / "merged").is_dir():
            _build_test_composites(report, test, Path(voc) if voc else None)
        if _need_dir(report, test / "merged", "test composites (pass --voc <VOC2012/JPEGImages>)"):
            names = sorted(
                p.name for p in (test / "merged").iterdir() if p.suffix in (".png", ".jpg")
            )
            report.count("test composites", len(names), 1000)
            for kind in ("alpha", "trimaps"):
                _missing_files(report, [test / kind / n for n in names], f"test {kind}")
    return report


COCO_LAYOUT = """
coco/                                  (https://cocodataset.org: 2017 train/val images, annotations)
  annotations/instances_train2017.json
  annotations/instances_val2017.json
  train2017/*.jpg                      118,287
  val2017/*.jpg                        5,000
"""


def prepare_coco(root: str | Path) -> Report:
    root = Path(root)
    report = Report("COCO 2017", root, COCO_LAYOUT)
    for split, expected in (("train", 118287), ("val", 5000)):
        annotations = root / "annotations" / f"instances_{split}2017.json"
        images = root / f"{split}2017"
        if not (
            _need_file(report, annotations, f"{split} instances")
            & _need_dir(report, images, f"{split} images")
        ):
            continue
        try:
            listed = [im["file_name"] for im in json.loads(annotations.read_text())["images"]]
        except (ValueError, KeyError, TypeError) as error:
            report.missing.append(f"{annotations} (unreadable COCO JSON: {error})")
            continue
        report.count(f"{split} images listed", len(listed), expected)
        _missing_files(
            report, [images / n for n in listed], f"{split} images listed in {annotations.name}"
        )
    return report
