"""The real datasets' loaders read the toy suite, and say clearly what is missing or broken."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import default_collate

from uplab.data.ade20k import ADE20K, reduce_zero_label
from uplab.data.coco import COCODetection, collate_detection
from uplab.data.comp1k import Composition1k, trimap_to_unit
from uplab.data.io import DatasetError
from uplab.data.nyuv2 import NYUv2
from uplab.data.pipelines import a2u_matting_train
from uplab.data.transforms import IMAGENET_MEAN, IMAGENET_STD


def test_ade20k_reads_toy_and_reduces_zero_label(toy_root):
    dataset = ADE20K(toy_root / "segmentation", "validation")
    assert len(dataset) == 2 and dataset.num_classes == 6
    sample = dataset[0]
    assert sample["image"].shape == (3, 32, 32) and sample["image"].dtype == torch.float32
    assert sample["mask"].dtype == torch.int64
    labels = set(sample["mask"].unique().tolist())
    assert labels <= set(range(6)) | {255}


def test_reduce_zero_label_by_hand():
    # ADE's 0 ("other") -> 255 ignore; 1 -> 0, 150 -> 149.
    np.testing.assert_array_equal(
        reduce_zero_label(np.array([[0, 1], [2, 150]], np.uint8)),
        np.array([[255, 0], [1, 149]], np.uint8),
    )


def test_nyuv2_reads_millimetres_as_metres(toy_root):
    dataset = NYUv2(toy_root / "depth", "test")
    sample = dataset[0]
    assert sample["depth"].shape == (1, 32, 32) and sample["depth"].dtype == torch.float32
    valid = sample["depth"][sample["depth"] > 0]
    assert 0.5 <= valid.min() and valid.max() <= 9.5
    assert sample["focal"].item() == pytest.approx(518.8579)


def test_composition1k_composites_training_and_reads_test(toy_root):
    train = Composition1k(toy_root / "matting", "train")
    test = Composition1k(toy_root / "matting", "test")
    assert (len(train), len(test)) == (3, 2)
    for sample in (train[0], test[0]):
        assert sample["image"].shape == (3, 32, 32)
        assert set(sample["trimap"].unique().tolist()) <= {0.0, 0.5, 1.0}
        assert 0 <= sample["alpha"].min() and sample["alpha"].max() <= 1
        # known regions of the trimap agree with alpha
        assert torch.all(sample["alpha"][sample["trimap"] == 1] == 1)
        assert torch.all(sample["alpha"][sample["trimap"] == 0] == 0)


def test_composition1k_hands_the_a2u_pipelines_layers_as_tensors(toy_root):
    train = Composition1k(
        toy_root / "matting", "train", transform=a2u_matting_train(crop_size=32), composite=False
    )
    batch = default_collate([train[0], train[1]])
    for key in ("fg", "bg"):
        assert batch[key].shape == (2, 3, 32, 32) and batch[key].dtype == torch.float32
        assert 0 <= batch[key].min() and batch[key].max() <= 1
    # the image is their composite with the alpha (up to float rounding)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    a = batch["alpha"]
    composite = a * batch["fg"] + (1 - a) * batch["bg"]
    torch.testing.assert_close(batch["image"] * std + mean, composite, atol=1e-5, rtol=0)
    # the second-foreground overlay draws from the training foregrounds
    fg, alpha = train.draw_foreground(np.random.default_rng(0))
    assert fg.dtype == alpha.dtype == np.uint8 and fg.shape == (*alpha.shape, 3)
    # the toy suite's own compositing hands no layers
    assert not {"fg", "bg"} & set(Composition1k(toy_root / "matting", "train")[0])


def test_trimap_to_unit_by_hand_and_rejects_other_values():
    np.testing.assert_array_equal(
        trimap_to_unit(np.array([0, 128, 255], np.uint8)), [0.0, 0.5, 1.0]
    )
    with pytest.raises(ValueError, match="0, 128 or 255"):
        trimap_to_unit(np.array([0, 100], np.uint8))


def test_coco_reads_boxes_as_xyxy_with_labels_from_1(toy_root):
    dataset = COCODetection(toy_root / "detection", "val")
    assert dataset.num_classes == 4
    images, targets = collate_detection([dataset[0], dataset[1]])
    assert images[0].shape == (3, 32, 32) and 0 <= images[0].min() and images[0].max() <= 1
    for target in targets:
        boxes = target["boxes"]
        assert boxes.dtype == torch.float32 and boxes.shape[1] == 4
        assert torch.all(boxes[:, 2:] > boxes[:, :2])
        assert target["labels"].dtype == torch.int64 and torch.all(target["labels"] >= 1)
    raw = dataset.coco.loadAnns(dataset.coco.getAnnIds(imgIds=targets[0]["image_id"]))[0]["bbox"]
    x, y, w, h = raw
    assert targets[0]["boxes"][0].tolist() == pytest.approx([x, y, x + w, y + h])


@pytest.mark.parametrize(
    "make, missing",
    [
        (lambda r: ADE20K(r / "nowhere", "training"), "images/training"),
        (lambda r: NYUv2(r / "nowhere", "train"), "nowhere"),
        (lambda r: Composition1k(r / "nowhere", "test"), "Test_set"),
        (lambda r: COCODetection(r / "nowhere", "val"), "instances_val2017.json"),
    ],
)
def test_missing_dataset_names_the_path_looked_at(make, missing, tmp_path):
    with pytest.raises(DatasetError, match=missing) as error:
        make(tmp_path)
    assert str(tmp_path / "nowhere") in str(error.value)


def test_partial_dataset_names_a_missing_file(toy_root, tmp_path):
    copy = tmp_path / "segmentation"
    shutil.copytree(toy_root / "segmentation", copy)
    victim = copy / "ADEChallengeData2016/annotations/training/ADE_train_00000002.png"
    victim.unlink()
    with pytest.raises(DatasetError, match="ADE_train_00000002.png"):
        ADE20K(copy, "training")


def test_partial_nyu_list_names_the_list(toy_root, tmp_path):
    copy = tmp_path / "depth"
    shutil.copytree(toy_root / "depth", copy)
    (copy / "nyudepthv2_test_files_with_gt.txt").unlink()
    with pytest.raises(DatasetError, match="nyudepthv2_test_files_with_gt.txt"):
        NYUv2(copy, "test")


def test_corrupt_file_names_the_file(toy_root, tmp_path):
    copy = tmp_path / "depth"
    shutil.copytree(toy_root / "depth", copy)
    dataset = NYUv2(copy, "test")
    depth_path = dataset.samples[0][1]
    depth_path.write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=depth_path.name):
        dataset[0]


def test_invalid_split_is_a_value_error(toy_root):
    with pytest.raises(ValueError, match="split must be one of"):
        ADE20K(toy_root / "segmentation", "train")


def _copy(toy_root, task, tmp_path):
    shutil.copytree(toy_root / task, tmp_path / task)
    return tmp_path / task


def test_ade20k_label_out_of_range_names_the_file(toy_root, tmp_path):
    root = _copy(toy_root, "segmentation", tmp_path)
    dataset = ADE20K(root, "validation")
    label = np.asarray(Image.open(dataset.labels[0])).copy()
    label[0, 0] = 99  # the toy set has 6 classes: raw labels 0..6
    Image.fromarray(label).save(dataset.labels[0])
    with pytest.raises(DatasetError, match=rf"{dataset.labels[0].name}: label 99 is out of range"):
        dataset[0]


def test_ade20k_without_its_class_list_names_the_file(toy_root, tmp_path):
    # a deleted objectInfo150.txt must not mean 150 classes
    root = _copy(toy_root, "segmentation", tmp_path)
    (root / "ADEChallengeData2016" / "objectInfo150.txt").unlink()
    with pytest.raises(DatasetError, match="objectInfo150.txt, which does not exist"):
        ADE20K(root, "validation")


def _edit_coco(root, edit):
    """Apply ``edit`` to the first annotation of the toy val file; returns that annotation's id."""
    path = root / "annotations" / "instances_val2017.json"
    document = json.loads(path.read_text())
    edit(document["annotations"][0])
    path.write_text(json.dumps(document))  # NaN is written as the bare token pycocotools reads
    return document["annotations"][0]["id"]


def _set_bbox(bbox):
    def edit(annotation):
        annotation["bbox"] = bbox

    return edit


def _set_category(annotation):
    annotation["category_id"] = 99


@pytest.mark.parametrize(
    "edit, rule",
    [
        (
            _set_bbox([1.0, 2.0, 3.0]),
            r"bbox must be 4 numbers \[x, y, width, height\]; got \[1.0, 2.0, 3.0\]",
        ),
        (_set_bbox([1.0, 2.0, float("nan"), 3.0]), "bbox holds a non-finite number"),
        (_set_category, r"category_id 99 is not in the file's categories \[1, 2, 3\]"),
    ],
    ids=["three-numbers", "nan", "unknown-category"],
)
def test_coco_bad_annotation_names_the_file_the_annotation_and_the_rule(
    edit, rule, toy_root, tmp_path
):
    root = _copy(toy_root, "detection", tmp_path)
    annotation_id = _edit_coco(root, edit)
    with pytest.raises(
        DatasetError, match=rf"instances_val2017.json: annotation id {annotation_id} .*{rule}"
    ):
        COCODetection(root, "val")


@pytest.mark.parametrize(
    "edit, rule",
    [
        (_set_bbox([1.0, 2.0, 0.0, 3.0]), "1 narrower or lower than 1 pixel"),
        (_set_bbox([1.0, 2.0, 0.5, 3.0]), "1 narrower or lower than 1 pixel"),
        (_set_bbox([40.0, 2.0, 5.0, 3.0]), "1 no overlap with the image"),
        (lambda annotation: annotation.update(area=0.0), "1 area <= 0"),
    ],
    ids=["zero-width", "sub-pixel-width", "outside", "zero-area"],
)
def test_coco_boxes_the_released_recipe_skips_are_left_out_with_a_warning(
    edit, rule, toy_root, tmp_path
):
    root = _copy(toy_root, "detection", tmp_path)
    annotation_id = _edit_coco(root, edit)
    with pytest.warns(UserWarning, match=rf"instances_val2017.json: left out 1 of .*{rule}"):
        dataset = COCODetection(root, "val")
    image_id = dataset.coco.anns[annotation_id]["image_id"]
    n_boxes = sum(
        1
        for a in dataset.coco.anns.values()
        if a["image_id"] == image_id and not a.get("iscrowd", 0)
    )
    _, target = dataset[dataset.image_ids.index(image_id)]
    assert len(target["boxes"]) == n_boxes - 1


def test_coco_box_partly_outside_the_image_is_clipped(toy_root, tmp_path):
    root = _copy(toy_root, "detection", tmp_path)
    annotation_id = _edit_coco(root, _set_bbox([-4.0, 20.0, 10.0, 20.0]))  # 32 x 32: x -4, y 40
    dataset = COCODetection(root, "val")
    image_id = dataset.coco.anns[annotation_id]["image_id"]
    _, target = dataset[dataset.image_ids.index(image_id)]
    assert [0.0, 20.0, 6.0, 32.0] in target["boxes"].tolist()



def test_coco_training_filter_leaves_out_images_without_annotations_and_small_images(
    toy_root, tmp_path
):
    """mmdetection 2.x ``CocoDataset._filter_imgs(min_size=32)`` with ``filter_empty_gt``: an
    image with no annotation goes, one with only a crowd region stays, one under 32 pixels goes."""
    root = _copy(toy_root, "detection", tmp_path)
    path = root / "annotations" / "instances_train2017.json"
    document = json.loads(path.read_text())
    first, second, third = (image["id"] for image in document["images"][:3])
    document["annotations"] = [a for a in document["annotations"] if a["image_id"] != first]
    for annotation in document["annotations"]:
        if annotation["image_id"] == second:
            annotation["iscrowd"] = 1
    document["images"][2]["width"] = 31
    path.write_text(json.dumps(document))
    everything = COCODetection(root, "train")
    kept = COCODetection(root, "train", filter_empty_gt=True, min_size=32)
    assert first in everything.image_ids and third in everything.image_ids
    assert set(everything.image_ids) - set(kept.image_ids) == {first, third}
    assert len(kept[kept.image_ids.index(second)][1]["boxes"]) == 0


@pytest.mark.parametrize(
    "line, rule",
    [
        ("/a/rgb.jpg /a/depth.png", "expected 'rgb_path depth_path focal'"),
        ("{rgb} {depth} abc", "the focal length .* must be a positive number of pixels; got 'abc'"),
        ("{rgb} {depth} -518.8", "the focal length .* got '-518.8'"),
        ("{rgb} /nowhere/depth.png 518.8", "the file .*nowhere/depth.png it names does not exist"),
    ],
)
def test_nyuv2_bad_list_line_names_the_list_and_line(line, rule, toy_root, tmp_path):
    root = _copy(toy_root, "depth", tmp_path)
    listing = root / "nyudepthv2_test_files_with_gt.txt"
    rgb, depth, _ = listing.read_text().splitlines()[0].split()
    listing.write_text(listing.read_text() + line.format(rgb=rgb, depth=depth) + "\n")
    with pytest.raises(DatasetError, match=rf"nyudepthv2_test_files_with_gt.txt:3: {rule}"):
        NYUv2(root, "test")


@pytest.mark.parametrize(
    "name, rule",
    [
        ("fg/extra.png", "expected a file name ending in .png, .jpg, .jpeg"),
        ("extra.txt", "expected a file name ending in"),
        (None, "is listed twice .first on line 1."),
    ],
    ids=["folder", "suffix", "duplicate"],
)
def test_composition1k_bad_name_list_line_names_the_list_and_line(name, rule, toy_root, tmp_path):
    root = _copy(toy_root, "matting", tmp_path)
    listing = root / "Combined_Dataset" / "Training_set" / "training_fg_names.txt"
    lines = listing.read_text().splitlines()
    listing.write_text("\n".join([*lines, name or lines[0]]) + "\n")
    with pytest.raises(DatasetError, match=rf"training_fg_names.txt:{len(lines) + 1}: .*{rule}"):
        Composition1k(root, "train")


def test_composition1k_test_trimap_with_other_values_names_the_file(toy_root, tmp_path):
    root = _copy(toy_root, "matting", tmp_path)
    dataset = Composition1k(root, "test")
    trimap_path = dataset.samples[0][2]
    trimap = np.asarray(Image.open(trimap_path)).copy()
    trimap[0, 0] = 100
    Image.fromarray(trimap).save(trimap_path)
    with pytest.raises(
        DatasetError, match=rf"{trimap_path.name}: trimap values must be 0, 128 or 255; got \[100\]"
    ):
        dataset[0]


def test_composition1k_random_background_draws_a_new_background_per_read(toy_root):
    def backgrounds_of_sample_0(random_background: bool) -> set[bytes]:
        seen = []

        def keep_bg(sample, rng):
            seen.append(sample["bg"].tobytes())
            alpha = sample["alpha"]
            return {"image": sample["fg"], "alpha": alpha, "trimap": np.zeros_like(alpha)}

        dataset = Composition1k(
            toy_root / "matting",
            "train",
            transform=keep_bg,
            composite=False,
            random_background=random_background,
        )
        for epoch in range(12):
            dataset.epoch = epoch
            dataset[0]
        return set(seen)

    paired, drawn = backgrounds_of_sample_0(False), backgrounds_of_sample_0(True)
    assert len(paired) == 1  # DIM's pairing: sample 0 always on background 0
    assert len(drawn) == 3  # every one of the toy's three backgrounds turns up
