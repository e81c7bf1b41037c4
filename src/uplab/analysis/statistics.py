"""Statistics of a results table: paired differences over seeds with Student-t confidence
intervals, whether a run's validation metric levelled off, and verdicts on the papers' claims.

Rows of a table are compared *paired by seed*: runs of two rows with the same seed share the data
order and the initial weights wherever the shapes allow (see ``conf/table/toy.yaml``), so the
seed-to-seed variation common to both rows cancels in their difference. The interval of the mean
paired difference over ``n`` seeds is ``mean ± t_{0.975, n-1} · sd / sqrt(n)`` (Student, 1908;
the paired t-test's interval), and a difference is called significant when that interval excludes
zero.

Example::

    comparison = paired_difference(fade_values, bilinear_values, higher_is_better=True)
    comparison.delta, comparison.ci_low, comparison.ci_high, comparison.effect
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from uplab.analysis.run_record import read_run_record

CONFIDENCE = 0.95
EFFECTS = ("better", "worse", "none", "unknown")
"""``better``/``worse``: the interval excludes zero on that side (with the metric's direction);
``none``: the interval includes zero; ``unknown``: fewer than two pairs, no interval."""


@dataclass(frozen=True)
class PairedComparison:
    """The mean paired difference ``row - reference`` over seeds and its confidence interval."""

    delta: float
    ci_low: float
    ci_high: float
    n_pairs: int
    higher_is_better: bool

    @property
    def significant(self) -> bool:
        """Whether the interval excludes zero."""
        return self.n_pairs >= 2 and (self.ci_low > 0 or self.ci_high < 0)

    @property
    def effect(self) -> str:
        """One of :data:`EFFECTS`, with the metric's direction (a lower error is ``better``)."""
        if self.n_pairs < 2 or math.isnan(self.ci_low):
            return "unknown"
        if not self.significant:
            return "none"
        return "better" if (self.delta > 0) == self.higher_is_better else "worse"


def t_interval(differences: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """``(mean, low, high)`` of the Student-t interval of the mean of ``differences``
    (``n - 1`` degrees of freedom); the bounds are NaN for fewer than two values."""
    values = np.asarray(differences, dtype=float)
    if values.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(values.mean())
    if values.size < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + confidence / 2, values.size - 1) * values.std(ddof=1) / math.sqrt(values.size))
    return mean, mean - half, mean + half


def paired_difference(
    row: pd.Series, reference: pd.Series, higher_is_better: bool, confidence: float = CONFIDENCE
) -> PairedComparison:
    """Compare two rows' values of one metric, each indexed by seed: only seeds where both have a
    finite value are paired (the others are left out and ``n_pairs`` says how many remain)."""
    pairs = pd.concat({"row": row, "reference": reference}, axis=1, join="inner").astype(float)
    pairs = pairs[np.isfinite(pairs).all(axis=1)]
    delta, low, high = t_interval((pairs["row"] - pairs["reference"]).to_numpy(), confidence)
    return PairedComparison(delta, low, high, len(pairs), higher_is_better)


def levelled_off(values: Sequence[float], higher_is_better: bool, tail: float = 0.25, tolerance: float = 0.1) -> bool | None:
    """Whether a validation curve has levelled off: the best value reached in the last ``tail``
    of the evaluations improves on the best before them by at most ``tolerance`` times the whole
    run's improvement (best value minus the first evaluation). A curve that never improves on its
    first evaluation has levelled off. None when there are too few evaluations to split (fewer
    than two, or no evaluation before the tail).

    Best-so-far values are compared, so a noisy dip in the tail is not mistaken for progress.
    """
    curve = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if not higher_is_better:
        curve = -curve
    n_tail = math.ceil(len(curve) * tail)
    if len(curve) < 2 or n_tail < 1 or n_tail >= len(curve):
        return None
    head = curve[: len(curve) - n_tail]
    total = curve.max() - curve[0]
    late = max(0.0, curve.max() - head.max())
    return bool(total <= 0 or late <= tolerance * total)


def run_levelled_off(record: Mapping[str, Any] | str | Path, tail: float = 0.25, tolerance: float = 0.1) -> bool | None:
    """:func:`levelled_off` of a run's monitored metric, from its ``results.json`` (a path, a run
    directory or the record read already): ``metrics.monitor``, ``metrics.mode`` and the
    per-evaluation ``metrics.history``. None when the record has no monitored history."""
    if not isinstance(record, Mapping):
        record = read_run_record(record)
    metrics = record.get("metrics") or {}
    monitor, mode = metrics.get("monitor"), metrics.get("mode", "max")
    history = metrics.get("history") or []
    if not monitor or not history:
        return None
    values = [h["metrics"].get(monitor) for h in history]
    return levelled_off(values, mode == "max", tail, tolerance)


EXPECTATIONS = ("better", "worse", "not_better", "not_worse")
VERDICTS = ("supported", "not supported", "inconclusive")


def check_verdict(expect: str, effect: str) -> str:
    """The verdict of one expected direction against an observed :attr:`PairedComparison.effect`.

    ``better``/``worse`` are supported by a significant difference that way and contradicted by
    one the other way. ``not_better`` ("does not help") is contradicted by a significant gain and
    supported only by a significant loss, ``not_worse`` ("does not hurt") the mirror: an interval
    that includes zero cannot show that a difference is absent, so it stays inconclusive.
    """
    if expect not in EXPECTATIONS:
        raise ValueError(f"expected direction must be one of {EXPECTATIONS}, got {expect!r}; fix the claim's 'expect'")
    if effect not in ("better", "worse"):
        return "inconclusive"
    wanted = {"better": "better", "not_worse": "better", "worse": "worse", "not_better": "worse"}[expect]
    return "supported" if effect == wanted else "not supported"


def claim_verdict(verdicts: Sequence[str]) -> str:
    """A claim made of several checks: not supported if any check is, supported if all are,
    else inconclusive (no checks: inconclusive)."""
    if "not supported" in verdicts:
        return "not supported"
    if verdicts and all(v == "supported" for v in verdicts):
        return "supported"
    return "inconclusive"
