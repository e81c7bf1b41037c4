"""notebooks/inspect_ablations.ipynb executes headless on the fixture runs (a sweep with two
seeds of one setting, that setting on another schedule, diverged, failed and unfinished trials)."""

import shutil
from pathlib import Path

import nbformat
import pytest

nbclient = pytest.importorskip("nbclient", reason="the notebook extra (nbclient) is not installed")

ROOT = Path(__file__).parents[2]
NOTEBOOK = ROOT / "notebooks" / "inspect_ablations.ipynb"
FIXTURE = ROOT / "tests" / "fixtures" / "runs"


def test_notebook_compares_the_fixture_sweep(tmp_path, monkeypatch):
    runs = shutil.copytree(FIXTURE, tmp_path / "runs")
    monkeypatch.setenv("UPLAB_RUNS", str(runs))
    monkeypatch.delenv("UPLAB_WANDB_PROJECT", raising=False)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert f"7 runs under {runs}, 4 finished" in text
    assert "W&B offline: 1 run(s) with an offline W&B record" in text and "swp0abcd" in text
    frames = [o["data"]["text/plain"] for o in outputs if "text/plain" in o.get("data", {}) and "image/png" not in o["data"]]
    comparison = next(f for f in frames if "upsampler.kernel_size" in f and "seeds" in f)
    assert "0.46 ± 0.01414" in comparison and "0.55" in comparison  # two schedules, two lines
    assert any("diverged" in f and "step 6, last finite loss 2.9" in f for f in frames)
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # three swept settings and the curves
