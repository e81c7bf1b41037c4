"""notebooks/inspect_ablations.ipynb executes headless on the fixture run records."""

import os
import shutil
from pathlib import Path

import nbformat
import pytest

nbclient = pytest.importorskip("nbclient", reason="the notebook extra (nbclient) is not installed")

ROOT = Path(__file__).parents[2]
NOTEBOOK = ROOT / "notebooks" / "inspect_ablations.ipynb"
FIXTURE = ROOT / "tests" / "fixtures" / "results" / "toy"


def test_notebook_executes_on_fixture_results(tmp_path, monkeypatch):
    runs = shutil.copytree(FIXTURE, tmp_path / "toy")
    monkeypatch.setenv("UPLAB_RUNS", str(runs))
    monkeypatch.setenv("UPLAB_WANDB", "offline")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert f"{len(list(Path(runs).rglob('run.json')))} runs under {runs}" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # metric per upsampler, accuracy-cost and curves, for two tasks
    assert os.environ["UPLAB_WANDB"] == "offline" and "W&B offline" in text
