"""Toy suite: determinism, atomic regeneration, and the real datasets' file formats."""

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from scipy import ndimage

from uplab.data.toy import (
    DEFAULT_SIZES,
    MARKER,
    TASKS,
    build_toy,
    depth,
    detection,
    ensure_toy,
    matting,
    segmentation,
    toy_parameters,
)


def _tree_bytes(root):
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("task", TASKS)
def test_same_seed_gives_identical_bytes_and_another_seed_differs(task, toy_root, tmp_path, tiny):
    again = _tree_bytes(ensure_toy(task, tmp_path / "a", seed=0, **tiny))
    assert again == _tree_bytes(toy_root / task)
    other = _tree_bytes(ensure_toy(task, tmp_path / "b", seed=1, **tiny))
    assert set(other) == set(again)
    images = [k for k in again if k.endswith((".jpg", ".png"))]
    assert images and all(other[k] != again[k] for k in images)


def test_marker_records_parameters_and_a_change_regenerates(tmp_path, tiny):
    path = ensure_toy("segmentation", tmp_path, seed=0, **tiny)
    assert json.loads((path / MARKER).read_text()) == toy_parameters("segmentation", 0, **tiny)
    label = path / "ADEChallengeData2016/annotations/training/ADE_train_00000001.png"
    stamp = label.stat().st_mtime_ns
    ensure_toy("segmentation", tmp_path, seed=0, **tiny)
    assert label.stat().st_mtime_ns == stamp  # matching marker: nothing rewritten
    ensure_toy("segmentation", tmp_path, seed=0, **{**tiny, "num_train": 4})
    assert len(list((path / "ADEChallengeData2016/images/training").iterdir())) == 4
    assert [p.name for p in tmp_path.iterdir()] == ["segmentation"]  # no temp dirs left behind


def test_refuses_to_replace_a_folder_that_is_not_a_toy_dataset(tmp_path, tiny):
    (tmp_path / "depth").mkdir()
    (tmp_path / "depth" / "precious.txt").write_text("real data")
    with pytest.raises(FileExistsError, match="not a toy dataset"):
        build_toy("depth", tmp_path / "depth", **tiny)
    assert (tmp_path / "depth" / "precious.txt").exists()


def test_rejects_unknown_task_and_size_options():
    with pytest.raises(ValueError, match="unknown toy task"):
        toy_parameters("optical_flow")
    with pytest.raises(ValueError, match="unknown toy size options"):
        toy_parameters("depth", num_test=3)


def test_segmentation_is_ade20k_format(toy_root):
    base = toy_root / "segmentation" / "ADEChallengeData2016"
    image = Image.open(base / "images/validation/ADE_val_00000001.jpg")
    label = Image.open(base / "annotations/validation/ADE_val_00000001.png")
    assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (32, 32))
    assert (label.format, label.mode) == ("PNG", "L")
    values = np.asarray(label)
    assert values.dtype == np.uint8 and values.max() <= 6 and len(np.unique(values)) > 1
    assert len((base / "objectInfo150.txt").read_text().splitlines()) == 1 + 6


def test_depth_is_bts_nyu_format(toy_root):
    base = toy_root / "depth"
    line = (base / "nyudepthv2_train_files_with_gt.txt").read_text().splitlines()[0]
    rgb, depth, focal = line.split()
    assert float(focal) == pytest.approx(518.8579)
    depth_png = Image.open(base / "sync" / depth.lstrip("/"))
    assert (depth_png.format, depth_png.mode) == ("PNG", "I;16")
    millimetres = np.asarray(depth_png)
    assert millimetres.dtype == np.uint16
    valid = millimetres[millimetres > 0]
    assert 500 <= valid.min() and valid.max() <= 9500  # 0.5..9.5 m, in millimetres
    assert Image.open(base / "sync" / rgb.lstrip("/")).format == "JPEG"
    assert (base / "official_splits/test").is_dir()


def test_matting_is_composition1k_format(toy_root):
    base = toy_root / "matting" / "Combined_Dataset"
    fg_name = (base / "Training_set/training_fg_names.txt").read_text().split()[0]
    alpha = np.asarray(Image.open(base / "Training_set/alpha" / fg_name))
    assert alpha.dtype == np.uint8 and ((alpha > 0) & (alpha < 255)).any()  # soft edges
    trimap = np.asarray(Image.open(next((base / "Test_set/trimaps").iterdir())))
    assert set(np.unique(trimap)) == {0, 128, 255}
    merged = Image.open(next((base / "Test_set/merged").iterdir()))
    assert merged.mode == "RGB"


def test_detection_is_coco_format(toy_root):
    base = toy_root / "detection"
    coco = COCO(str(base / "annotations/instances_val2017.json"))
    assert sorted(c["name"] for c in coco.loadCats(coco.getCatIds())) == [
        "disc",
        "square",
        "triangle",
    ]
    image_info = coco.loadImgs(coco.getImgIds())[0]
    assert Image.open(base / "val2017" / image_info["file_name"]).size == (32, 32)
    for annotation in coco.loadAnns(coco.getAnnIds()):
        x, y, w, h = annotation["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 32 and y + h <= 32 and w > 0 and h > 0
        assert 0 < annotation["area"] <= w * h


# The structures where the output stride matters, measured on samples at the default image sizes
# (a coarse output, stride 32, sees a 64-pixel image as 2 x 2 cells).


def _samples(render, task, count):
    size = DEFAULT_SIZES[task]["image_size"]
    return [render(np.random.default_rng([0, k]), size) for k in range(count)]


def test_segmentation_poles_and_rings_are_one_to_three_pixels_wide():
    widths = {"pole": [], "ring": []}
    for _, label in _samples(segmentation.render_sample, "segmentation", 12):
        for name, found in widths.items():
            mask = label == segmentation.CLASSES.index(name)
            if mask.any():
                # a pixel 3 px from the class's edge would sit in a band at least 4 px wide
                found.append(ndimage.distance_transform_edt(mask).max())
    assert all(len(found) >= 4 for found in widths.values()), widths
    assert max(max(found) for found in widths.values()) <= 2, widths


def test_matting_alpha_has_semi_transparent_strands_beyond_the_opaque_body():
    for alpha in _samples(matting.render_alpha, "matting", 8):
        alpha = np.round(alpha * 255)
        fractional = (alpha > 0) & (alpha < 255)
        assert fractional.sum() >= 0.2 * (alpha > 0).sum()
        # an anti-aliased edge is fractional within a pixel of the body; hair reaches far beyond it
        assert ndimage.distance_transform_edt(alpha < 255)[fractional].max() >= 4


def test_depth_steps_by_a_metre_or_more_between_neighbouring_pixels():
    for _, millimetres in _samples(depth.render_sample, "depth", 8):
        metres = np.where(millimetres > 0, millimetres / 1000.0, np.nan)  # 0: no measurement
        steps = [np.nanmax(np.abs(np.diff(metres, axis=axis))) for axis in (0, 1)]
        assert max(steps) >= 1.0


def test_detection_boxes_reach_down_to_a_few_pixels():
    sides = np.array(
        [
            max(obj["bbox"][2:])
            for _, objects in _samples(detection.render_sample, "detection", 12)
            for obj in objects
        ]
    )
    assert sides.size >= 30
    assert sides.min() <= 8 and (sides <= 16).mean() >= 0.3 and sides.max() >= 32
