"""One process per run directory, checkpoints written atomically in it, corrupt checkpoints named."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch

from uplab.run_directory import (
    LOCK_FILE,
    AtomicCheckpointIO,
    RunDirectoryError,
    RunLock,
    check_checkpoint,
    remove_stale_temp_files,
)


def test_second_process_on_a_run_directory_is_refused_with_the_holder(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunDirectoryError, match=f"in use by pid {os.getpid()} on host {socket.gethostname()}"):
            RunLock(tmp_path).acquire()
    assert not (tmp_path / LOCK_FILE).exists()


def test_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / LOCK_FILE).write_text(f"{int(dead.stdout)} {socket.gethostname()}\n")
    with RunLock(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text().split()[0] == str(os.getpid())


def test_lock_held_on_another_host_is_never_guessed_stale(tmp_path):
    (tmp_path / LOCK_FILE).write_text("999999999 some-other-node\n")
    with pytest.raises(RunDirectoryError, match="some-other-node"):
        RunLock(tmp_path).acquire()


class Unpicklable:
    def __reduce__(self):
        raise OSError(28, "No space left on device")


def test_failed_checkpoint_save_keeps_the_previous_checkpoint_and_no_temporary_file(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"step": 2, "bad": Unpicklable()}, path)
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_truncated_checkpoint_is_named_with_what_to_do(tmp_path):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"weights": torch.zeros(1000)}, path)
    check_checkpoint(path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(RunDirectoryError, match=rf"{path} is unreadable .*resume=") as error:
        check_checkpoint(path)
    assert "\n" not in str(error.value)


def test_stale_temporary_files_are_removed(tmp_path):
    (tmp_path / ".results.json.abc.tmp").write_text("{")
    (tmp_path / "results.json").write_text("{}")
    remove_stale_temp_files(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
