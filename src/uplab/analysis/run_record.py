"""The record of one run, ``results.json`` in its Hydra run directory (see DESIGN.md): the
resolved config, the git commit, final and best metrics (with the step of the best), parameters
and FLOPs of the whole model and of its upsamplers alone, wall time, peak memory and the W&B run
id. Tables are built from these files, never from a W&B server."""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch

RESULTS_FILE = "results.json"
SCHEMA_VERSION = 1
STATUSES = ("finished", "interrupted", "diverged", "not_evaluated")
"""``finished``: trained to the end with a validation result; ``interrupted``: stopped by a signal,
``resume=true`` continues it; ``diverged``: the training loss became non-finite; ``not_evaluated``:
no validation result (no epoch ran, no validation batch, or nothing to evaluate)."""


def git_commit(directory: str | Path = ".") -> str | None:
    """The commit checked out at ``directory`` (with ``-dirty`` if the tree has changes), or
    None outside a git work tree or without git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=directory, capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def peak_memory_mb() -> dict[str, float | None]:
    """Peak resident memory of this process and, if CUDA is in use, the peak CUDA allocation (MiB)."""
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_mb = rss_kb / 1024 if sys.platform != "darwin" else rss_kb / 2**20  # macOS reports bytes
    cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_initialized() else None
    return {"cpu_rss": round(rss_mb, 1), "cuda_allocated": None if cuda is None else round(cuda, 1)}


def current_umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | Path, write: Callable[[BinaryIO], Any]) -> Path:
    """Write ``path`` through ``write(file)`` on a temporary file in the same directory, flushed
    to disk, then ``os.replace``: a reader never sees a half-written file, and a failed write
    leaves the old file in place and no temporary one. The file gets the mode a plain ``open``
    would give it (0644 under the usual umask), not ``mkstemp``'s 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`write_atomic`)."""
    return write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def write_json_atomic(path: str | Path, data: Mapping[str, Any]) -> Path:
    """Write ``data`` as strict JSON (no ``NaN``/``Infinity``) to ``path`` atomically
    (:func:`write_text_atomic`); a non-finite float raises ``ValueError``."""
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n")


def replace_non_finite(value: Any, path: str = "") -> tuple[Any, list[str]]:
    """``value`` with every non-finite float replaced by None, and the dotted keys replaced.

    Example:
        >>> replace_non_finite({"final": {"val/mIoU": float("nan")}, "steps": [1, 2]})
        ({'final': {'val/mIoU': None}, 'steps': [1, 2]}, ['final.val/mIoU'])
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None, [path]
    if isinstance(value, Mapping):
        out, keys = {}, []
        for k, v in value.items():
            out[k], found = replace_non_finite(v, f"{path}.{k}" if path else str(k))
            keys += found
        return out, keys
    if isinstance(value, (list, tuple)):
        items = [replace_non_finite(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return [v for v, _ in items], [k for _, found in items for k in found]
    return value, []


def write_run_record(
    run_dir: str | Path,
    *,
    config: Mapping[str, Any],
    metrics: Mapping[str, Any],
    cost: Mapping[str, Any],
    wall_time_s: float,
    wandb_run_id: str | None,
    commit: str | None,
    status: str = "finished",
    message: str | None = None,
    divergence: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``<run_dir>/results.json`` atomically and return its path.

    Args:
        run_dir: the run's Hydra output directory.
        config: the resolved config (plain containers).
        metrics: ``{"monitor", "mode", "final": {...}, "best": {...}, "best_step", ...}``.
        cost: ``{"params": {"total", "upsamplers"}, "flops": {"total", "upsamplers"} or None}``.
        wall_time_s: seconds from start to end of the run.
        wandb_run_id: the W&B run id, or None without W&B.
        commit: the git commit of the code.
        status: one of :data:`STATUSES`.
        message: what a status other than ``finished`` means for this run, in one line.
        divergence: ``{"step", "last_finite_loss", "loss"}`` of a diverged run.

    Non-finite values are written as null and their keys listed under ``non_finite``, so the file
    is strict JSON.
    """
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}; got {status!r}")
    record = {
        "schema": SCHEMA_VERSION,
        "status": status,
        "message": message,
        "divergence": None if divergence is None else dict(divergence),
        "commit": commit,
        "wandb_run_id": wandb_run_id,
        "wall_time_s": round(float(wall_time_s), 3),
        "peak_memory_mb": peak_memory_mb(),
        "metrics": dict(metrics),
        "cost": dict(cost),
        "config": dict(config),
    }
    record, non_finite = replace_non_finite(record)
    if non_finite:
        record["non_finite"] = non_finite
    return write_json_atomic(Path(run_dir) / RESULTS_FILE, record)


def read_run_record(path: str | Path) -> dict[str, Any]:
    """Read a ``results.json`` (or the one in a run directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    if not path.is_file():
        raise ValueError(f"no run record at {path}: expected a results.json or a run directory holding one")
    return json.loads(path.read_text())
