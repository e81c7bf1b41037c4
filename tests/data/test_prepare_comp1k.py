"""scripts/prepare_comp1k.py on a tiny Adobe Combined_Dataset written here: training layers and
COCO backgrounds are linked, test images composited as DIM does, and the loader reads the result."""

from pathlib import Path

import numpy as np
from PIL import Image

from uplab.data.comp1k import Composition1k
from uplab.data.prepare import composite_on, prepare_comp1k

FG, BG = (200, 100, 0), (0, 50, 250)


def save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def alpha_map() -> np.ndarray:
    alpha = np.zeros((16, 16), np.uint8)
    alpha[4:12, 4:12] = 255
    alpha[4:12, 8] = 128
    return alpha


def write_combined(root: Path) -> tuple[Path, Path, Path]:
    base, coco, voc = root / "Combined_Dataset", root / "train2014", root / "JPEGImages"
    train, test = base / "Training_set", base / "Test_set"
    for source, name in (("Adobe-licensed images", "a.png"), ("Other", "b.png")):
        save(train / source / "fg" / name, np.full((16, 16, 3), FG, np.uint8))
        save(train / source / "alpha" / name, alpha_map())
    (train / "training_fg_names.txt").write_text("a.png\nb.png\n")
    (train / "training_bg_names.txt").write_text("c1.jpg\nc2.jpg\nc3.jpg\nc4.jpg\n")
    for i in range(1, 5):
        save(coco / f"c{i}.jpg", np.full((20, 24, 3), BG, np.uint8))
    adobe = test / "Adobe-licensed images"
    save(adobe / "fg" / "t.png", np.full((16, 16, 3), FG, np.uint8))
    save(adobe / "alpha" / "t.png", alpha_map())
    trimap = np.where(alpha_map() == 255, 255, 0).astype(np.uint8)
    trimap[3:13, 3:13][trimap[3:13, 3:13] == 0] = 128
    for i in range(2):
        save(adobe / "trimaps" / f"t_{i}.png", trimap)
    (test / "test_fg_names.txt").write_text("t.png\n")
    (test / "test_bg_names.txt").write_text("v1.jpg\nv2.jpg\n")
    for i in (1, 2):
        save(voc / f"v{i}.jpg", np.full((8, 8, 3), BG, np.uint8))  # smaller: scaled up to cover
    return base, coco, voc


def test_composite_by_hand():
    alpha = np.array([[0, 255], [128, 255]], np.uint8)
    fg, bg = np.full((2, 2, 3), 200, np.uint8), np.full((1, 1, 3), 100, np.uint8)
    out = composite_on(fg, alpha, bg)
    assert (
        out[0, 0, 0] == 100 and out[0, 1, 0] == 200 and out[1, 0, 0] == round(100 + 100 * 128 / 255)
    )


def test_links_composites_and_the_loader_reads_both_splits(tmp_path):
    base, coco, voc = write_combined(tmp_path)
    report = prepare_comp1k(base, coco, voc)
    assert report.ok, report.text()
    assert (base / "Training_set" / "bg" / "c3.jpg").is_symlink()
    assert sorted(p.name for p in (base / "Test_set" / "merged").iterdir()) == [
        "t_0.png",
        "t_1.png",
    ]
    test = Composition1k(tmp_path, "test")
    sample = test[0]
    assert sample["trimap"].unique().tolist() == [0.0, 0.5, 1.0]
    merged = np.asarray(Image.open(base / "Test_set" / "merged" / "t_0.png"))
    assert np.abs(merged[0, 0].astype(int) - BG).max() <= 4  # JPEG background
    assert tuple(merged[6, 6]) == FG
    assert len(Composition1k(tmp_path, "train")) == 4


def test_without_backgrounds_the_missing_ones_are_named(tmp_path):
    base, _, _ = write_combined(tmp_path)
    report = prepare_comp1k(base)
    assert not report.ok
    assert "c1.jpg" in report.text() and "--coco" in report.text() and "--voc" in report.text()
