"""Table building from fixture run records: mean ± std over seeds, best marked, failures shown,
cost increments, and the published numbers beside ours."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from uplab.analysis import tables
from uplab.analysis.records import load_records

FIXTURE = Path(__file__).parents[1] / "fixtures" / "results" / "toy"
ROWS = ["bilinear", "carafe", "fade", "sapa_g", "dysample"]


@pytest.fixture(scope="module")
def seg():
    records = load_records(FIXTURE)
    return records[records.task == "segmentation"]


@pytest.fixture(scope="module")
def summary(seg):
    return tables.summarize(seg, ["mIoU", "bIoU"], ROWS, "bilinear", scale={"mIoU": 100})


def test_mean_and_sample_std_over_finished_seeds(seg, summary):
    values = seg[seg.row == "carafe"]["final/mIoU"].to_numpy() * 100
    assert summary.loc["carafe", "mIoU"] == pytest.approx(values.mean())
    assert summary.loc["carafe", "mIoU_std"] == pytest.approx(values.std(ddof=1))
    assert summary.loc["carafe", "runs"] == 2
    bIoU = seg[seg.row == "carafe"]["final/bIoU"]
    assert summary.loc["carafe", "bIoU"] == pytest.approx(bIoU.mean())  # unscaled


def test_best_of_each_column_is_marked_once_among_complete_rows(summary):
    complete = summary[summary.status == "ok"]
    for metric in ("mIoU", "bIoU"):
        assert summary[f"{metric}_best"].sum() == 1
        assert summary.loc[summary[f"{metric}_best"], metric].iloc[0] == complete[metric].max()


def test_lower_is_better_metrics_mark_the_minimum():
    records = load_records(FIXTURE)
    depth = records[records.task == "depth"]
    table = tables.summarize(depth, ["d1", "abs_rel"], ["bilinear", "fade"], "bilinear")
    assert not tables.higher_is_better("abs_rel") and tables.higher_is_better("d1")
    assert table.loc[table["abs_rel_best"], "abs_rel"].iloc[0] == table["abs_rel"].min()


def test_failed_partial_and_missing_rows_are_shown(summary):
    assert summary.loc["sapa_g", "status"] == "partial"
    assert summary.loc["sapa_g", "runs"] == 1 and summary.loc["sapa_g", "expected"] == 2
    assert math.isnan(summary.loc["sapa_g", "mIoU_std"])
    assert summary.loc["dysample", "status"] == "missing"
    text = tables.render(summary, ["mIoU", "bIoU"], "markdown")
    sapa = next(line for line in text.splitlines() if line.startswith("| sapa_g"))
    assert "1 failed of 2 runs, not ranked: RuntimeError: out of memory" in sapa
    assert "| dysample | missing |  | missing |  |" in text


def test_interrupted_run_counts_as_not_finished():
    records = load_records(FIXTURE)
    depth = records[records.task == "depth"]
    table = tables.summarize(depth, ["d1"], ["bilinear", "fade"], "bilinear")
    assert table.loc["fade", "status"] == "interrupted" and math.isnan(table.loc["fade", "d1"])


def _with_status(seg, row, status, error, miou):
    seg = seg.copy()
    mask = seg.row == row
    seg.loc[mask, "status"], seg.loc[mask, "error"], seg.loc[mask, "final/mIoU"] = status, error, miou
    return seg


@pytest.mark.parametrize("status", ["diverged", "not_evaluated"])
def test_unfinished_rows_are_shown_by_status_never_ranked(seg, status):
    # its metrics would top the column: a diverged run's NaN logits argmax to one class
    shown = _with_status(seg, "carafe", status, "step 2, last finite loss 3.1", 0.99)
    table = tables.summarize(shown, ["mIoU"], ROWS, "bilinear", scale={"mIoU": 100})
    assert table.loc["carafe", "status"] == status and math.isnan(table.loc["carafe", "mIoU"])
    assert not table.loc["carafe", "mIoU_best"] and table["mIoU_best"].sum() == 1
    line = next(r for r in tables.render(table, ["mIoU"]).splitlines() if r.startswith("| carafe"))
    assert f"| carafe | {status} |" in line and "**" not in line
    assert f"2 {status} of 2 runs: step 2, last finite loss 3.1" in line


def test_partial_row_keeps_its_mean_but_is_not_ranked(seg):
    shown = seg.copy()
    carafe = shown.index[shown.row == "carafe"]
    shown.loc[carafe[0], ["status", "error"]] = ["diverged", "step 5"]
    shown.loc[carafe[1], "final/mIoU"] = 0.99
    table = tables.summarize(shown, ["mIoU"], ROWS, "bilinear")
    assert table.loc["carafe", "status"] == "partial" and table.loc["carafe", "mIoU"] == 0.99
    assert not table.loc["carafe", "mIoU_best"]
    assert "1 diverged of 2 runs, not ranked: step 5" in tables.render(table, ["mIoU"])


def test_cost_increments_over_the_baseline(seg, summary):
    base = seg[seg.row == "bilinear"]["params_total"].iloc[0]
    fade = seg[seg.row == "fade"]["params_total"].iloc[0]
    assert summary.loc["fade", "d_params"] == fade - base
    assert summary.loc["bilinear", "d_params"] == 0
    frame = tables.display_frame(summary, ["mIoU", "bIoU"])
    assert frame.set_index("upsampler").loc["fade", "params"] == tables.human(fade - base, signed=True)
    assert frame.set_index("upsampler").loc["bilinear", "params"] == tables.human(base)


def test_markdown_bolds_no_best_without_a_significant_lead_and_latex_csv_render(summary):
    md = tables.render(summary, ["mIoU", "bIoU"], "markdown")
    # two seeds per row in the fixture: no lead over the runner-up is significant
    assert not summary["mIoU_bold"].any() and "**" not in md
    tex = tables.render(summary, ["mIoU", "bIoU"], "latex")
    assert "$\\pm$" in tex and "$\\Delta$ mIoU" in tex
    csv = pd.read_csv(__import__("io").StringIO(tables.render(summary, ["mIoU"], "csv")))
    assert np.allclose(csv.set_index("row")["mIoU"].dropna(), summary["mIoU"].dropna())
    for field in ("delta", "ci_low", "ci_high", "n_pairs", "significant"):
        assert f"mIoU_{field}" in csv
    with pytest.raises(ValueError, match="format"):
        tables.render(summary, ["mIoU"], "html")


def _records(values: dict[str, list[float]], metric: str = "mIoU", seeds=(0, 1, 2)) -> pd.DataFrame:
    """Finished runs of one task: ``{row: [value of seed 0, 1, 2]}`` (NaN: no run of that seed)."""
    return pd.DataFrame.from_records(
        [
            {"row": row, "seed": seed, "status": "finished", "error": None, f"final/{metric}": v,
             "params_total": 1e6, "flops_total": 1e9}
            for row, vs in values.items() for seed, v in zip(seeds, vs, strict=True) if not math.isnan(v)
        ]
    )


def test_delta_to_baseline_with_interval_marked_only_when_it_excludes_zero():
    # a - base: 2, 3, 4 -> +3.00 [+0.52, +5.48] (see test_statistics); b - base: 1, 2, 3 -> [-0.48, +4.48]
    records = _records({"base": [10, 11, 9], "a": [12, 14, 13], "b": [11, 13, 12]})
    table = tables.summarize(records, ["mIoU"], ["base", "a", "b"], "base")
    assert table.loc["a", "mIoU_significant"] and table.loc["a", "mIoU_effect"] == "better"
    assert not table.loc["b", "mIoU_significant"] and table.loc["b", "mIoU_effect"] == "none"
    frame = tables.display_frame(table, ["mIoU"]).set_index("upsampler")
    assert frame.loc["a", "Δ mIoU"] == "+3.00 [+0.52, +5.48] ▲"
    assert frame.loc["b", "Δ mIoU"] == "+2.00 [-0.48, +4.48]"
    assert frame.loc["base", "Δ mIoU"] == ""


def test_lower_is_better_delta_is_marked_as_worse_when_errors_grow():
    records = _records({"base": [1.0, 2.0, 3.0], "up": [2.0, 3.1, 3.9]}, metric="sad")
    table = tables.summarize(records, ["sad"], ["base", "up"], "base")
    assert table.loc["up", "sad_effect"] == "worse"
    assert tables.display_frame(table, ["sad"]).set_index("upsampler").loc["up", "Δ sad"].endswith("▼")


def test_unpaired_seed_is_left_out_and_the_pair_count_shown():
    # the row has no run of seed 1: it pairs with the baseline on seeds 0 and 2 only
    records = _records({"base": [10, 11, 9], "a": [12, math.nan, 13]})
    table = tables.summarize(records, ["mIoU"], ["base", "a"], "base")
    assert table.loc["a", "mIoU_n_pairs"] == 2 and table.loc["a", "mIoU_delta"] == pytest.approx(3.0)
    assert tables.display_frame(table, ["mIoU"]).set_index("upsampler").loc["a", "Δ mIoU"].endswith(" n=2")


def test_best_is_bold_only_when_significantly_better_than_the_runner_up():
    # a - b per seed: 1.0, 1.1, 0.9 (consistent lead) -> bold; c - b: 3, -2, 0.5 (higher mean, noisy) -> not
    steady = _records({"base": [5, 5, 5], "a": [11.0, 12.1, 10.9], "b": [10, 11, 10]})
    table = tables.summarize(steady, ["mIoU"], ["base", "a", "b"], "base")
    assert table["mIoU_bold"].tolist() == [False, True, False]
    assert "**11.33**" in tables.render(table, ["mIoU"])
    noisy = _records({"base": [5, 5, 5], "c": [13.0, 9.0, 10.5], "b": [10, 11, 10]})
    table = tables.summarize(noisy, ["mIoU"], ["base", "c", "b"], "base")
    assert table.loc["c", "mIoU_best"] and not table["mIoU_bold"].any()


def test_converged_runs_are_counted_per_row():
    records = _records({"base": [10, 11, 9], "a": [12, 14, 13]})
    records["converged"] = [True, True, None, False, True, True]
    table = tables.summarize(records, ["mIoU"], ["base", "a"], "base")
    assert (table.loc["base", "converged"], table.loc["base", "convergence_known"]) == (2, 2)
    assert tables.display_frame(table, ["mIoU"]).set_index("upsampler").loc["a", "converged"] == "2/3"


def test_claims_are_checked_against_the_intervals():
    seg = tables.summarize(_records({"base": [10, 11, 9], "a": [12, 14, 13], "b": [11, 13, 12]}), ["mIoU"], ["base", "a", "b"], "base")
    mat = tables.summarize(_records({"base": [1, 2, 3], "a": [2, 3.1, 3.9]}, "sad"), ["sad"], ["base", "a"], "base")
    summaries = {"segmentation": seg, "matting": mat}
    claims = [
        {"claim": "a helps segmentation", "checks": [{"task": "segmentation", "row": "a", "metric": "mIoU", "expect": "better"}]},
        {"claim": "a helps both", "checks": [
            {"task": "segmentation", "row": "a", "metric": "mIoU", "expect": "better"},
            {"task": "matting", "row": "a", "metric": "sad", "expect": "better"}]},
        {"claim": "a does not help matting", "checks": [{"task": "matting", "row": "a", "metric": "sad", "expect": "not_better"}]},
        {"claim": "b helps segmentation", "checks": [{"task": "segmentation", "row": "b", "metric": "mIoU", "expect": "better"}]},
        {"claim": "z helps", "checks": [{"task": "segmentation", "row": "z", "metric": "mIoU", "expect": "better"}]},
    ]
    frame = tables.check_claims(claims, summaries)
    assert frame["verdict"].tolist() == ["supported", "not supported", "supported", "inconclusive", "inconclusive"]
    assert "segmentation a mIoU (better): +3.00 [+0.52, +5.48] ▲: supported" in frame.loc[0, "evidence"]


def test_bad_arguments_are_clear(seg):
    with pytest.raises(ValueError, match="baseline"):
        tables.summarize(seg, ["mIoU"], ["carafe"], "bilinear")
    with pytest.raises(ValueError, match="which"):
        tables.summarize(seg, ["mIoU"], ["bilinear"], "bilinear", which="last")


def test_human_units():
    assert tables.human(1_500_000) == "1.50M"
    assert tables.human(2_000, signed=True) == "+2.00K"
    assert tables.human(-3e9, signed=True) == "-3.00G"
    assert tables.human(float("nan")) == ""


def test_paper_comparison_puts_published_beside_final_and_best(summary, tmp_path):
    published = pd.DataFrame.from_records(
        [
            dict(model="m", dataset="d", upsampler="bilinear", metric="mIoU", value=41.0, relative=False, baseline="bilinear", source="s1"),
            dict(model="m", dataset="d", upsampler="bilinear", metric="mIoU", value=42.0, relative=False, baseline="bilinear", source="s2"),
            dict(model="m", dataset="d", upsampler="fade", metric="params", value=0.3, relative=True, baseline="bilinear", source="s1"),
        ]
    )
    frame = tables.paper_comparison(summary, summary, published, "m", ["mIoU"], sources=["s2", "s1"]).set_index("upsampler")
    assert frame.loc["bilinear", "mIoU paper"] == 42.0 and frame.loc["bilinear", "source"] == "s2"
    assert frame.loc["bilinear", "mIoU Δ"] == pytest.approx(summary.loc["bilinear", "mIoU"] - 42.0)
    assert math.isnan(frame.loc["fade", "mIoU paper"])  # relative cost cells are not accuracy
    assert "1 failed of 2 runs" in frame.loc["sapa_g", "note"]
    md = tables.render_comparison(frame.reset_index())
    assert f"{frame.loc['bilinear', 'mIoU Δ']:+.4g}" in md
    with pytest.raises(ValueError, match="sources"):
        tables.paper_comparison(summary, summary, published, "m", ["mIoU"], sources=["nope"])
