"""scripts/prepare_nyuv2.py on a tiny BTS-layout NYUv2 written here: it builds the file lists
that the loader then reads (16-bit millimetres -> metres)."""

from pathlib import Path

import numpy as np
from PIL import Image

from uplab.data.nyuv2 import NYUv2
from uplab.data.prepare import NYU_FOCAL, prepare_nyuv2


def write_frame(folder: Path, index: int, millimetres: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((12, 16, 3), 50, np.uint8)).save(folder / f"rgb_{index:05d}.jpg")
    Image.fromarray(np.full((12, 16), millimetres, np.uint16)).save(
        folder / f"sync_depth_{index:05d}.png"
    )


def write_nyu(root: Path) -> Path:
    write_frame(root / "sync" / "kitchen_0028b", 45, 1500)
    write_frame(root / "sync" / "bedroom_0001", 3, 2500)
    write_frame(root / "official_splits" / "test" / "bathroom", 1, 3250)
    return root


def test_builds_lists_that_the_loader_reads(tmp_path):
    root = write_nyu(tmp_path)
    report = prepare_nyuv2(root)
    assert report.ok, report.text()
    assert len(report.built) == 2
    lines = (root / "nyudepthv2_train_files_with_gt.txt").read_text().splitlines()
    assert f"/kitchen_0028b/rgb_00045.jpg /kitchen_0028b/sync_depth_00045.png {NYU_FOCAL}" in lines
    test = NYUv2(root, "test")
    assert len(test) == 1 and float(test[0]["depth"].mean()) == 3.25


def test_listed_but_absent_frames_are_missing(tmp_path):
    root = write_nyu(tmp_path)
    prepare_nyuv2(root)
    (root / "sync" / "bedroom_0001" / "sync_depth_00003.png").unlink()
    report = prepare_nyuv2(root, build_lists=False)
    assert not report.ok and "sync_depth_00003.png" in report.text()


def test_missing_test_split_is_reported_with_the_layout(tmp_path):
    write_frame(tmp_path / "sync" / "a", 1, 1000)
    report = prepare_nyuv2(tmp_path)
    assert not report.ok
    assert (
        str(tmp_path / "official_splits" / "test") in report.text()
        and "Expected layout" in report.text()
    )
