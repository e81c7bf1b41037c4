"""Test-wide setup: no network, W&B offline, deterministic seeds."""

import os
import tempfile
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")
# Runs a test starts write outputs/ and data/ under the project root (uplab.paths): a temporary
# one, so the suite never writes into the checkout. Tests that need another set their own.
os.environ.setdefault("UPLAB_ROOT", tempfile.mkdtemp(prefix="uplab-tests-root-"))
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one pytest-xdist worker per core: a worker (and any process it starts)
    # computes on one thread, or the workers' thread pools fight over the same cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def golden():
    """The golden cases of the released operators (float64), keyed by case name."""
    return torch.load(FIXTURES / "operators.pt")
