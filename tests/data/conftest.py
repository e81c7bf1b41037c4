"""A tiny toy suite shared by the data tests (generated once per session)."""

import pytest

from uplab.data.toy import TASKS, ensure_toy

TINY = {"num_train": 3, "num_val": 2, "image_size": 32}


@pytest.fixture(scope="session")
def tiny():
    """Toy sizes small enough for tests."""
    return dict(TINY)


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    for task in TASKS:
        ensure_toy(task, root, seed=0, **TINY)
    return root
