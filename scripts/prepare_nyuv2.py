"""Check the NYUv2 layout of BTS and build missing file lists
(python scripts/prepare_nyuv2.py --root data/nyu_depth_v2)."""

import argparse
import sys

from uplab.data.prepare import prepare_nyuv2

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default="data/nyu_depth_v2")
    parser.add_argument("--no-build", action="store_true", help="only check; build no file list")
    args = parser.parse_args()
    report = prepare_nyuv2(args.root, build_lists=not args.no_build)
    print(report.text())
    sys.exit(0 if report.ok else 1)
