"""Released initial weights: the manifest ``reference/weights.yaml``, the local cache, downloads
verified by SHA-256, and strict loading of a released state dict into a module.

The cache is ``$UPLAB_WEIGHTS`` when set, else ``~/.cache/uplab/weights``. A config names a
manifest entry as ``${uplab.weights:<name>}``, which resolves to the entry's path in the cache
whether or not the file is there; :func:`resolve` (and uplab's preflight) say in one line what is
missing, where it is published and the command that fetches it::

    python scripts/fetch_weights.py mit_b1 a2u_resnet34 torchvision_resnet50

Nothing here downloads at import or at run time: only :func:`fetch` does, and only when asked.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import urllib.error
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from omegaconf import OmegaConf

if TYPE_CHECKING:
    import torch
    from torch import nn

ENV = "UPLAB_WEIGHTS"
MANIFEST = Path(__file__).resolve().parents[2] / "reference" / "weights.yaml"
FETCH_COMMAND = "python scripts/fetch_weights.py"
# BatchNorm's step counter: torchvision's and inplace_abn's files predate it, and PyTorch fills it
# in when a state dict lacks it (BatchNorm's _load_from_state_dict)
_FILLED_BY_PYTORCH = re.compile(r"(^|\.)num_batches_tracked$")


class WeightsError(Exception):
    """Initial weights that are missing, fail their hash, or do not fit the module; the message
    is one line: what, and what to do."""


@dataclass(frozen=True)
class WeightsEntry:
    """One file of ``reference/weights.yaml`` (the manifest's header describes each field)."""

    name: str
    file: str
    url: str
    direct: bool
    sha256: str | None
    sha256_prefix: str | None
    key_mapping: str
    loads_into: Mapping[str, Any]
    source: str
    settings: tuple[str, ...]

    def command(self) -> str:
        """The command that puts this file into the cache."""
        if self.direct:
            return f"{FETCH_COMMAND} {self.name}"
        return f"{FETCH_COMMAND} {self.name} --from <the downloaded {self.file}>"


def cache_dir() -> Path:
    """Where fetched weights live: ``$UPLAB_WEIGHTS``, else ``~/.cache/uplab/weights``."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    return Path("~/.cache/uplab/weights").expanduser()


@lru_cache(maxsize=4)
def _read_manifest(path: Path) -> dict[str, WeightsEntry]:
    raw = yaml.safe_load(path.read_text())["weights"]
    return {
        name: WeightsEntry(
            name=name,
            file=fields["file"],
            url=fields["url"],
            direct=bool(fields["direct"]),
            sha256=fields.get("sha256"),
            sha256_prefix=fields.get("sha256_prefix"),
            key_mapping=fields["key_mapping"],
            loads_into=dict(fields["loads_into"]),
            source=" ".join(str(fields["source"]).split()),
            settings=tuple(fields.get("settings") or ()),
        )
        for name, fields in raw.items()
    }


def manifest(path: str | os.PathLike = MANIFEST) -> dict[str, WeightsEntry]:
    """The manifest's entries by name."""
    return _read_manifest(Path(path))


def entry(name: str) -> WeightsEntry:
    """The manifest entry ``name``; an unknown name raises :class:`WeightsError` listing them."""
    entries = manifest()
    if name not in entries:
        raise WeightsError(
            f"no initial weights named {name!r} in {MANIFEST}; the entries are: "
            f"{', '.join(sorted(entries))}"
        )
    return entries[name]


def path(name: str) -> Path:
    """Where entry ``name`` lives in the cache (the file need not exist)."""
    return cache_dir() / entry(name).file


def missing_message(item: WeightsEntry) -> str:
    """One line: the file that is not in the cache, where it is published, how to get it."""
    how = (
        "download it with"
        if item.direct
        else f"download it by hand from that {_kind(item)}, then run"
    )
    return (
        f"initial weights {item.name!r} ({item.file}) are not in {cache_dir()} ({ENV}); they are "
        f"published at {item.url}: {how}: {item.command()}"
    )


def _kind(item: WeightsEntry) -> str:
    return "folder" if "folders" in item.url else "page"


def resolve(name: str) -> Path:
    """The cached file of entry ``name``.

    Raises:
        WeightsError: the file is not in the cache (the message names the file, the URL and
            the command that fetches it).
    """
    item = entry(name)
    target = cache_dir() / item.file
    if not target.is_file():
        raise WeightsError(missing_message(item))
    return target


def entry_for_path(candidate: str | os.PathLike) -> WeightsEntry | None:
    """The manifest entry whose cache path is ``candidate``, or None."""
    candidate = Path(candidate).expanduser()
    for item in manifest().values():
        if candidate == cache_dir() / item.file:
            return item
    return None


def sha256_of(file: str | os.PathLike) -> str:
    """The SHA-256 of a file, in hex."""
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(item: WeightsEntry, file: str | os.PathLike) -> str:
    """Check ``file`` against the entry's ``sha256`` and ``sha256_prefix`` (those it has) and
    return its SHA-256.

    Raises:
        WeightsError: a hash differs.
    """
    actual = sha256_of(file)
    for expected in (item.sha256, item.sha256_prefix):
        if expected and not actual.startswith(expected.lower()):
            raise WeightsError(
                f"{item.file}: SHA-256 {actual} where reference/weights.yaml ({item.name}) expects "
                f"{expected}; the download is corrupt or not the released file: fetch it again"
            )
    return actual


def fetch(
    name: str,
    source: str | os.PathLike | None = None,
    progress: bool = True,
    check: Callable[[WeightsEntry, Path], None] | None = None,
) -> Path:
    """Put entry ``name`` into the cache: download its URL (or copy ``source``, a file downloaded
    by hand), check its hash, and move it into place whole, so the cache never holds a partial
    or unverified file. A file already in the cache is checked, not fetched again.

    Args:
        name: a manifest entry.
        source: a local copy of the file, for entries whose URL is a folder or page
            (``direct: false``) and for machines without network.
        progress: show a progress bar while downloading.
        check: a further check of the file before it moves in (scripts/fetch_weights.py loads
            it into the entry's ``loads_into`` module); it raises to reject the file.

    Returns:
        The file's path in the cache.

    Raises:
        WeightsError: the download failed, the URL is not a direct download, or a hash differs.
    """
    item = entry(name)
    target = cache_dir() / item.file
    if source is None and target.is_file():
        verify(item, target)
        if check is not None:
            check(item, target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=f".{item.file}.", suffix=".partial", dir=target.parent)
    os.close(fd)
    try:
        if source is not None:
            shutil.copyfile(source, partial)
        elif not item.direct:
            raise WeightsError(
                f"{item.name}: {item.url} is a {_kind(item)}, not a file a script can download; "
                f"download {item.file} from it by hand, then run: {item.command()}"
            )
        else:
            _download(item, partial, progress)
        verify(item, partial)
        if check is not None:
            check(item, Path(partial))
        os.chmod(partial, 0o644)
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


def _download(item: WeightsEntry, destination: str, progress: bool) -> None:
    import torch  # only here: importing uplab (which registers the resolver) stays light

    try:
        torch.hub.download_url_to_file(item.url, destination, progress=progress)
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", None) or err
        raise WeightsError(
            f"cannot download {item.url} ({reason}); on a machine without network, download "
            f"{item.file} elsewhere and run: {FETCH_COMMAND} {item.name} --from <that file>"
        ) from err


def load_strict(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    source: str,
    dropped: Iterable[str] = (),
) -> None:
    """Load ``state_dict`` (already in ``module``'s key names) so that every tensor of it is used
    and every tensor of ``module`` is set, with equal shapes.

    Args:
        module: the module to load into.
        state_dict: the released tensors, renamed to ``module``'s keys.
        source: what the tensors are (the file or the release), for the error message.
        dropped: keys of ``state_dict`` that ``module`` has no place for by design (a classifier,
            blocks past the encoder's depth); they are skipped. Any other surplus key is an error.

    Raises:
        WeightsError: keys missing from ``state_dict``, keys of it ``module`` does not have, or
            shapes that differ, each named (the first few of each, with their count).
    """
    dropped = set(dropped)
    own = module.state_dict()
    used = {k: v for k, v in state_dict.items() if k not in dropped}
    missing = [k for k in own if k not in used and not _FILLED_BY_PYTORCH.search(k)]
    unused = [k for k in used if k not in own]
    shapes = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in used.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    problems = [
        f"{len(keys)} {what}: {', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''}"
        for what, keys in (
            ("module tensors the checkpoint lacks", missing),
            ("checkpoint tensors the module has no place for", unused),
            ("shapes that differ (checkpoint vs module)", shapes),
        )
        if keys
    ]
    if problems:
        raise WeightsError(
            f"{source} does not fit {type(module).__name__}: {'; '.join(problems)}; "
            "expected the released file that reference/weights.yaml names for this model"
        )
    module.load_state_dict(used, strict=False)


OmegaConf.register_new_resolver("uplab.weights", lambda name: str(path(name)), replace=True)
