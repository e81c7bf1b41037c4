"""Download the released initial weights of reference/weights.yaml into the cache ($UPLAB_WEIGHTS,
default ~/.cache/uplab/weights), check their SHA-256, load each into the module the rows load it
into (every tensor used, none missing), and move each in whole.

    python scripts/fetch_weights.py --all
    python scripts/fetch_weights.py torchvision_resnet50 a2u_resnet34
    python scripts/fetch_weights.py mit_b1 --from ~/Downloads/mit_b1.pth   # a file got by hand

A file already in the cache is checked, not fetched again. An entry whose URL is a folder or
page (direct: false) needs --from. Exit status 1 when any entry failed; each failure is one line
on stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hydra.utils import instantiate

from uplab import weights


def load_into_module(item: weights.WeightsEntry, file: Path) -> None:
    """Load ``file`` into the module the rows load it into (the entry's ``loads_into``), strictly:
    a file that is not the released one fails here, before it reaches the cache."""
    try:
        instantiate(item.loads_into, checkpoint=str(file))
    except Exception as err:  # a foreign file fails in the loader's own way (unpickling, keys)
        reason = err.__cause__ or err  # the loader's error, not Hydra's wrapper around it
        raise weights.WeightsError(
            f"{item.file} does not load into {item.loads_into['_target_']}: "
            f"{' '.join(str(reason).split())}"
        ) from err


def main(argv: list[str] | None = None) -> int:
    entries = weights.manifest()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="*", metavar="name", help=f"entries: {', '.join(entries)}")
    parser.add_argument("--all", action="store_true", help="every entry")
    parser.add_argument("--from", dest="source", help="a local copy of the one named file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    names = list(args.names) or (list(entries) if args.all else [])
    if not names:
        parser.error("name the entries to fetch, or pass --all")
    if args.source is not None and len(names) != 1:
        parser.error(f"--from is a copy of one file; name one entry, got {len(names)}")
    failed = 0
    for name in names:
        try:
            target = weights.fetch(
                name, args.source, progress=not args.no_progress, check=load_into_module
            )
        except (weights.WeightsError, OSError) as err:
            print(f"fetch_weights: {name}: {err}", file=sys.stderr)
            failed += 1
            continue
        item = weights.entry(name)
        checked = (
            "SHA-256 checked"
            if item.sha256 or item.sha256_prefix
            else (
                f"SHA-256 {weights.sha256_of(target)}, not published: nothing to check it against"
            )
        )
        print(f"{name}: {target} ({checked})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
