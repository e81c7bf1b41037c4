"""Paired differences over seeds with Student-t intervals (computed by hand here), the
convergence flag of a run's validation history, and the verdict logic of the papers' claims."""

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from uplab.analysis import statistics as st

FIXTURE = Path(__file__).parents[1] / "fixtures" / "results" / "toy"
# t_{0.975} with 2 degrees of freedom, from a printed t table
T_975_2DOF = 4.302653


def test_interval_by_hand_for_three_paired_seeds():
    # differences row - baseline per seed: 12-10=2, 14-11=3, 13-9=4 -> mean 3, sample sd 1,
    # half-width t_{0.975,2} * 1 / sqrt(3) = 4.302653 * 0.577350 = 2.484138 -> [0.515862, 5.484138]
    row = pd.Series({0: 12.0, 1: 14.0, 2: 13.0})
    baseline = pd.Series({0: 10.0, 1: 11.0, 2: 9.0})
    c = st.paired_difference(row, baseline, higher_is_better=True)
    assert c.delta == pytest.approx(3.0)
    assert c.ci_low == pytest.approx(3 - T_975_2DOF / math.sqrt(3), abs=1e-6)
    assert c.ci_high == pytest.approx(5.484138, abs=1e-6)
    assert c.n_pairs == 3 and c.significant and c.effect == "better"


def test_interval_that_includes_zero_is_not_significant():
    # differences 1, 2, 3: mean 2, sd 1, half-width 2.484138 -> [-0.484138, 4.484138]
    c = st.paired_difference(pd.Series([11.0, 12.0, 13.0]), pd.Series([10.0, 10.0, 10.0]), True)
    assert c.ci_low == pytest.approx(-0.484138, abs=1e-6)
    assert not c.significant and c.effect == "none"


def test_lower_is_better_flips_the_direction():
    # errors 2 lower on every seed (a constant difference: zero-width interval at -2)
    c = st.paired_difference(pd.Series([1.0, 2.0, 3.0]), pd.Series([3.0, 4.0, 5.0]), higher_is_better=False)
    assert c.delta == pytest.approx(-2.0) and c.effect == "better"
    assert st.paired_difference(pd.Series([3.0, 4.0, 5.0]), pd.Series([1.0, 2.0, 3.0]), False).effect == "worse"


def test_unpaired_and_missing_seeds_are_left_out_and_counted():
    # seed 3 has no baseline run, seed 1's row value is missing: pairs are seeds 0 and 2
    row = pd.Series({0: 5.0, 1: math.nan, 2: 7.0, 3: 100.0})
    baseline = pd.Series({0: 4.0, 1: 4.0, 2: 4.0})
    c = st.paired_difference(row, baseline, True)
    assert c.n_pairs == 2 and c.delta == pytest.approx(2.0)  # (1 + 3) / 2, seed 3 ignored
    one = st.paired_difference(pd.Series({0: 5.0}), baseline, True)
    assert one.n_pairs == 1 and math.isnan(one.ci_low) and one.effect == "unknown"


def test_levelled_history_is_converged_and_a_rising_one_is_not():
    # last quarter (1 of 4 evaluations) gains 0.62 - 0.60 = 0.02 <= 10% of 0.62 - 0.10
    assert st.levelled_off([0.10, 0.50, 0.60, 0.62], higher_is_better=True) is True
    # gains 0.4 - 0.3 = 0.1 > 10% of 0.3
    assert st.levelled_off([0.10, 0.20, 0.30, 0.40], higher_is_better=True) is False
    assert st.levelled_off([1.0, 0.5, 0.45, 0.449], higher_is_better=False) is True
    assert st.levelled_off([1.0, 0.9, 0.8, 0.5], higher_is_better=False) is False
    # recovering from a noisy dip (0.5 -> 0.58, still below the best 0.6) is no progress;
    # a curve that never improves on its first evaluation has levelled off
    assert st.levelled_off([0.1, 0.6, 0.5, 0.58], True) is True
    assert st.levelled_off([0.5, 0.4, 0.45, 0.3], True) is True
    assert st.levelled_off([0.5], True) is None


def test_convergence_is_read_from_a_run_record(tmp_path):
    # the fixture run's mIoU history 0.1641, 0.3281, 0.4922: the last of 3 evaluations gains
    # half of the total, far from levelled
    assert st.run_levelled_off(FIXTURE / "segmentation" / "fade" / "seed0") is False
    record = json.loads((FIXTURE / "segmentation" / "fade" / "seed0" / "results.json").read_text())
    record["metrics"]["history"][-1]["metrics"]["val/mIoU"] = 0.33
    assert st.run_levelled_off(record) is True
    record["metrics"]["history"] = []
    assert st.run_levelled_off(record) is None


@pytest.mark.parametrize(
    ("expect", "effect", "verdict"),
    [
        ("better", "better", "supported"),
        ("better", "worse", "not supported"),
        ("better", "none", "inconclusive"),
        ("better", "unknown", "inconclusive"),
        ("not_better", "worse", "supported"),
        ("not_better", "better", "not supported"),
        ("not_better", "none", "inconclusive"),
        ("not_worse", "worse", "not supported"),
        ("worse", "worse", "supported"),
    ],
)
def test_check_verdicts(expect, effect, verdict):
    assert st.check_verdict(expect, effect) == verdict


def test_claim_verdict_needs_every_check_and_fails_on_any():
    assert st.claim_verdict(["supported", "supported"]) == "supported"
    assert st.claim_verdict(["supported", "inconclusive"]) == "inconclusive"
    assert st.claim_verdict(["inconclusive", "not supported"]) == "not supported"
    assert st.claim_verdict([]) == "inconclusive"
    with pytest.raises(ValueError, match="expect"):
        st.check_verdict("improves", "better")
