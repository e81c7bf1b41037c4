"""Check the ADE20K layout (python scripts/prepare_ade20k.py --root data/ade/ADEChallengeData2016)."""

import argparse
import sys

from uplab.data.prepare import prepare_ade20k

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default="data/ade/ADEChallengeData2016")
    report = prepare_ade20k(parser.parse_args().root)
    print(report.text())
    sys.exit(0 if report.ok else 1)
