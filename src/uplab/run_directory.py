"""One run directory, one process: the lock that says who holds it, checkpoints written
atomically inside it, the check that its ``last.ckpt`` is readable, and the state that outlives
one process (the W&B run id and the wall time spent so far)."""

from __future__ import annotations

import json
import os
import socket
import time
import zipfile
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from uplab.analysis.run_record import write_atomic, write_json_atomic

LOCK_FILE = "run.lock"
STATE_FILE = "run_state.json"


class RunDirectoryError(RuntimeError):
    """A run directory cannot be used as it is (held by another process, or holds a corrupt
    checkpoint); the message says which file and what to do."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


class RunLock:
    """An exclusive claim on a run directory: ``run.lock`` holds ``pid host`` of the holder.

    A second process gets a :class:`RunDirectoryError` naming the holder. A lock left by a dead
    process of this host is taken over; one from another host is never guessed stale (its pid
    means nothing here).

    Args:
        run_dir: the directory to claim (created if missing).
    """

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.host = socket.gethostname()

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        mine = f"{os.getpid()} {self.host}\n"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._take_over_stale():
                    raise self._held_error() from None
                continue
            with os.fdopen(fd, "w") as f:
                f.write(mine)
            return
        raise self._held_error()

    def _holder(self) -> tuple[int | None, str | None]:
        try:
            pid, host = self.path.read_text().split()
            return int(pid), host
        except (OSError, ValueError):
            return None, None

    def _take_over_stale(self) -> bool:
        pid, host = self._holder()
        if host == self.host and pid is not None and not _pid_alive(pid):
            self.path.unlink(missing_ok=True)
            return True
        return False

    def _held_error(self) -> RunDirectoryError:
        pid, host = self._holder()
        return RunDirectoryError(
            f"run directory {self.path.parent} is in use by pid {pid} on host {host} "
            f"(lock file {self.path}); wait for that run to end, or change an override to get "
            "another run directory"
        )

    def release(self) -> None:
        pid, host = self._holder()
        if pid == os.getpid() and host == self.host:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def remove_stale_temp_files(run_dir: str | Path) -> list[Path]:
    """Delete the ``.<name>.*.tmp`` files a killed atomic write left in ``run_dir`` (call it while
    holding the run's lock, so no live writer owns them)."""
    removed = []
    for path in Path(run_dir).glob(".*.tmp"):
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with local saves written to a temporary file in the
    checkpoint's own directory, flushed to disk and renamed over the target.

    Lightning's own save goes through an fsspec transaction, which for local files stages the
    bytes in the system temporary directory and then copies them across (``shutil.move``): a
    full disk or a kill during that copy leaves a truncated checkpoint in the run directory.
    Here the old checkpoint stays intact until the new one is complete, and the temporary file is
    removed if the save fails.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if "://" in str(path):  # remote filesystems keep Lightning's fsspec path
            return super().save_checkpoint(checkpoint, path, storage_options)
        write_atomic(path, lambda f: torch.save(checkpoint, f))
        return None


def check_checkpoint(path: str | Path) -> None:
    """Raise :class:`RunDirectoryError` if ``path`` is not a complete checkpoint (torch's zip
    format: a truncated file has lost its central directory)."""
    try:
        with zipfile.ZipFile(path):  # reads the central directory, at the file's end
            pass
    except (zipfile.BadZipFile, OSError) as err:
        raise RunDirectoryError(
            f"checkpoint {path} is unreadable ({err}); delete it and run without resume=true to "
            "start over, or pass resume=<another checkpoint>"
        ) from err


class RunState:
    """What a run keeps across its processes in ``run_state.json``: the W&B run id (so a resumed
    run continues the same W&B run) and the wall time its earlier processes spent.

    Args:
        run_dir: the run directory.
    """

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / STATE_FILE

    def read(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def write(self, **values: Any) -> None:
        write_json_atomic(self.path, {**self.read(), **values})


class RecordWallTime(pl.Callback):
    """Writes the run's wall time so far into its :class:`RunState` whenever a checkpoint is
    saved, so a process killed outright (SIGKILL, a node failure) still hands its time to the
    resumed run.

    Args:
        state: the run's state file.
        start: ``time.perf_counter()`` value at which the run began (earlier processes included).
    """

    def __init__(self, state: RunState, start: float):
        self.state = state
        self.start = start

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if trainer.is_global_zero:
            self.state.write(wall_time_s=round(time.perf_counter() - self.start, 3))
