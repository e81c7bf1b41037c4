"""Check Composition-1k, link the training layers and backgrounds, composite the 1,000 test images
(python scripts/prepare_comp1k.py --root data/Combined_Dataset --coco <train2014> --voc <JPEGImages>)."""

import argparse
import sys

from uplab.data.prepare import prepare_comp1k

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default="data/Combined_Dataset")
    parser.add_argument("--coco", help="COCO train2014 images (the training backgrounds)")
    parser.add_argument("--voc", help="PASCAL VOC 2012 JPEGImages (the test backgrounds)")
    args = parser.parse_args()
    report = prepare_comp1k(args.root, args.coco, args.voc)
    print(report.text())
    sys.exit(0 if report.ok else 1)
