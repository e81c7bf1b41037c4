"""scripts/prepare_coco.py on a tiny COCO 2017 written here."""

import json
from pathlib import Path

import numpy as np
from PIL import Image

from uplab.data.coco import COCODetection
from uplab.data.prepare import prepare_coco


def write_coco(root: Path) -> Path:
    for split, ids in (("train", (1, 2)), ("val", (3,))):
        images = [{"id": i, "file_name": f"{i:012d}.jpg", "height": 10, "width": 12} for i in ids]
        annotations = [
            {
                "id": 10 + i,
                "image_id": i,
                "category_id": 18,
                "bbox": [1, 2, 5, 4],
                "area": 20,
                "iscrowd": 0,
            }
            for i in ids
        ]
        doc = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": 18, "name": "dog"}],
        }
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(doc))
        for image in images:
            path = root / f"{split}2017" / image["file_name"]
            path.parent.mkdir(exist_ok=True)
            Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(path)
    return root


def test_complete_fixture_passes_and_loads(tmp_path):
    root = write_coco(tmp_path)
    report = prepare_coco(root)
    assert report.ok, report.text()
    image, target = COCODetection(root, "val")[0]
    assert image.shape == (3, 10, 12) and target["boxes"].tolist() == [[1.0, 2.0, 6.0, 6.0]]


def test_missing_image_and_corrupt_json_are_named(tmp_path):
    root = write_coco(tmp_path)
    (root / "train2017" / "000000000002.jpg").unlink()
    (root / "annotations" / "instances_val2017.json").write_text("{not json")
    text = prepare_coco(root).text()
    assert "000000000002.jpg" in text and "unreadable COCO JSON" in text and "INCOMPLETE" in text
