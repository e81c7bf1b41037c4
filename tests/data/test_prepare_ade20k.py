"""scripts/prepare_ade20k.py's check on a tiny ADEChallengeData2016 written here, and the loader's
error naming the prepare command."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from uplab.data import DataModule
from uplab.data.io import DatasetError
from uplab.data.prepare import prepare_ade20k

SCRIPT = Path(__file__).parents[2] / "scripts" / "prepare_ade20k.py"


def write_ade(root: Path, counts=(("training", "train", 2), ("validation", "val", 1))) -> Path:
    base = root / "ADEChallengeData2016"
    for split, short, n in counts:
        for i in range(1, n + 1):
            stem = f"ADE_{short}_{i:08d}"
            for folder, array, ext in (
                ("images", np.full((12, 16, 3), 90, np.uint8), "jpg"),
                ("annotations", np.arange(12 * 16, dtype=np.uint8).reshape(12, 16) % 151, "png"),
            ):
                path = base / folder / split / f"{stem}.{ext}"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(path)
    lines = ["Idx\tRatio\tTrain\tVal\tName"] + [f"{i}\t0\t0\t0\tclass{i}" for i in range(1, 151)]
    (base / "objectInfo150.txt").write_text("\n".join(lines) + "\n")
    return base


def test_complete_fixture_passes_with_count_warnings(tmp_path):
    write_ade(tmp_path)
    report = prepare_ade20k(tmp_path)
    assert report.ok, report.text()
    assert any("training images: 2 (published: 20210)" in f for f in report.found)
    assert any("the published dataset has 2000" in w for w in report.warnings)


def test_missing_label_map_is_named_and_the_script_fails(tmp_path):
    base = write_ade(tmp_path)
    (base / "annotations" / "validation" / "ADE_val_00000001.png").unlink()
    report = prepare_ade20k(base)
    assert not report.ok and "ADE_val_00000001.png" in report.text()
    assert "images/training/ADE_train_*.jpg" in report.text()  # the expected layout is printed
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--root", str(base)], capture_output=True, text=True
    )
    assert run.returncode == 1 and "ADE_val_00000001.png" in run.stdout


def test_missing_class_list_is_named_not_assumed(tmp_path):
    base = write_ade(tmp_path)
    (base / "objectInfo150.txt").unlink()
    report = prepare_ade20k(base)
    assert not report.ok and "objectInfo150.txt (the class list)" in report.text()


def test_datamodule_error_names_the_path_and_the_prepare_command(tmp_path):
    data = DataModule("segmentation", tmp_path / "nowhere", batch_size=1)
    with pytest.raises(DatasetError) as error:
        data.setup("fit")
    message = str(error.value)
    assert str(tmp_path / "nowhere") in message and "prepare_ade20k.py --root" in message
