"""Figures from fixture run records: accuracy against cost, metric per upsampler, training curves
and the qualitative grid."""

from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from uplab.analysis import figures, records, tables

FIXTURE = Path(__file__).parents[1] / "fixtures" / "results" / "toy"
ROWS = ["bilinear", "carafe", "fade", "sapa_g", "dysample"]


@pytest.fixture(scope="module")
def seg():
    runs = records.load_records(FIXTURE)
    return runs[runs.task == "segmentation"]


def test_accuracy_cost_plots_one_point_per_row_with_a_result(seg, tmp_path):
    summary = tables.summarize(seg, ["mIoU"], ROWS, "bilinear")
    fig = figures.accuracy_cost(summary, "mIoU", title="segmentation")
    ax = fig.axes[0]
    labels = {t.get_text() for t in ax.texts}
    assert {"bilinear", "carafe", "fade", "sapa_g"} <= labels
    assert any("no result: dysample" in label for label in labels)
    x, y = ax.lines[0].get_data()
    assert np.allclose(np.asarray(y), summary["mIoU"].dropna())
    assert np.allclose(np.asarray(x), summary["d_flops"][summary["mIoU"].notna()] / 1e6)
    fig.savefig(tmp_path / "ac.png")
    assert imread(tmp_path / "ac.png").shape[2] in (3, 4)
    with pytest.raises(ValueError, match="cost"):
        figures.accuracy_cost(summary, "mIoU", cost="time")


def test_metric_per_upsampler_shows_every_finished_seed(seg):
    fig = figures.metric_per_upsampler(seg, "mIoU")
    dots = sum(len(line.get_xdata()) for line in fig.axes[0].lines)
    assert dots == (seg.status == "finished").sum()
    with pytest.raises(ValueError, match="no run has"):
        figures.metric_per_upsampler(seg, "AP")


def test_training_curves_one_line_per_run(seg):
    done = seg[(seg.status == "finished") & (seg.seed == 0)]
    curves = {r.row: records.training_curves(r.run_dir) for r in done.itertuples()}
    fig = figures.training_curves(curves, "mIoU")
    assert len(fig.axes[0].lines) == len(curves)


def test_qualitative_grid_has_input_truth_and_each_row(tmp_path):
    runs = records.load_records(FIXTURE)
    rows = {"segmentation": ["bilinear", "fade", "dysample"], "depth": ["bilinear", "fade"]}
    fig = figures.qualitative_grid(runs[runs.seed == 0], rows)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:5] == ["input", "ground truth", "bilinear", "fade", "dysample"]
    assert [t.get_text() for t in fig.axes[0].texts] == ["segmentation"]
    assert len(fig.axes) == 2 * 5
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 2 * 2 + 2 + 2  # input and truth per task, the predictions that exist
    fig.savefig(tmp_path / "grid.png")
    assert (tmp_path / "grid.png").stat().st_size > 0


def test_qualitative_grid_none_without_predictions(tmp_path):
    runs = records.load_records(FIXTURE)
    assert figures.qualitative_grid(runs, {"segmentation": ["dysample"]}) is None
