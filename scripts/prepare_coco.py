"""Check the COCO 2017 layout (python scripts/prepare_coco.py --root data/coco)."""

import argparse
import sys

from uplab.data.prepare import prepare_coco

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default="data/coco")
    report = prepare_coco(parser.parse_args().root)
    print(report.text())
    sys.exit(0 if report.ok else 1)
