"""Result tables from run records (:mod:`uplab.analysis.records`): one table per task with the
mean ± std over seeds of each metric, the mean paired difference to the baseline with its 95%
confidence interval (:mod:`uplab.analysis.statistics`), the best row per column marked when it is
significantly better than the runner-up, how many runs converged, failed runs shown with their
error, and the parameter and FLOP increments over the baseline row; for the paper tables, the
published numbers (``reference/paper_results.yaml``) beside ours with the difference.

Example::

    records = load_records("outputs/tables/toy")
    summary = summarize(records[records.task == "segmentation"], ["mIoU", "bIoU"],
                        rows=["bilinear", "fade"], baseline="bilinear")
    print(render(summary, ["mIoU", "bIoU"], fmt="markdown"))
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from uplab.analysis.statistics import CONFIDENCE, check_verdict, claim_verdict, paired_difference

LOWER_IS_BETTER = frozenset(
    {"loss", "abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "sad", "mse", "grad", "conn"}
)
FORMATS = ("markdown", "csv", "latex")


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` is better (False for errors and losses)."""
    return metric.lower() not in LOWER_IS_BETTER


def _mean_std(values: pd.Series) -> tuple[float, float]:
    values = values.dropna()
    if values.empty:
        return math.nan, math.nan
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else math.nan


def _by_seed(runs: pd.DataFrame, column: str, factor: float) -> pd.Series:
    """A row's finished values of one column indexed by seed (a seed run twice keeps its last)."""
    if column not in runs or not len(runs):
        return pd.Series(dtype=float)
    values = runs[["seed", column]].dropna(subset=["seed"]).drop_duplicates("seed", keep="last")
    return values.set_index("seed")[column].astype(float) * factor


def summarize(
    records: pd.DataFrame,
    metrics: Sequence[str],
    rows: Sequence[str],
    baseline: str,
    which: str = "final",
    scale: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """Aggregate the runs of one task over seeds.

    Args:
        records: rows of :func:`uplab.analysis.records.load_records` for one task.
        metrics: metric names without the ``val/`` prefix, in column order.
        rows: the table's rows in order (a row with no run at all is listed as missing).
        baseline: the row the parameter and FLOP increments are taken against.
        which: ``"final"`` (last evaluation) or ``"best"`` (best evaluation of each run).
        scale: factors per metric (e.g. ``{"mIoU": 100}`` to show percent).

    Returns:
        One line per row, indexed by row name, with ``<metric>``/``<metric>_std`` (mean and
        sample std over the finished seeds), ``<metric>_best`` (whether it is the best mean of
        its column among the rows whose every run finished), ``runs`` (finished), ``expected``
        (all runs of the row), ``status`` (``ok``; ``partial`` when some runs finished; the
        runs' own status when none did and they agree: ``diverged``, ``not_evaluated``,
        ``interrupted``, ``failed``; else ``failed``; ``missing`` without runs),
        ``unfinished`` (the count of each status other than finished, e.g. ``2 diverged``),
        ``error`` (the first reason a run of the row gives for not finishing),
        ``params``, ``flops`` and their increments ``d_params``, ``d_flops`` over the baseline;
        per metric the paired comparison with the baseline over the seeds both finished
        (:func:`uplab.analysis.statistics.paired_difference`): ``<metric>_delta`` (mean of
        row minus baseline), ``<metric>_ci_low``/``<metric>_ci_high`` (its 95% Student-t
        interval), ``<metric>_n_pairs``, ``<metric>_significant`` (the interval excludes zero)
        and ``<metric>_effect`` (``better``, ``worse``, ``none``, ``unknown``), and
        ``<metric>_bold``: the best mean of the column is significantly better than the
        runner-up's (paired over seeds); ``converged`` (finished runs whose monitored metric
        levelled off) and ``convergence_known`` (finished runs with a verdict) where the records
        carry a ``converged`` column.
    """
    if which not in ("final", "best"):
        raise ValueError(f"which must be 'final' or 'best', got {which!r}")
    scale = dict(scale or {})
    if baseline not in rows:
        raise ValueError(f"baseline {baseline!r} is not one of the rows {list(rows)}")
    lines, per_seed = [], {}
    for name in rows:
        runs = records[records["row"] == name] if len(records) else records
        done = runs[runs["status"] == "finished"] if len(runs) else runs
        line: dict[str, object] = {"row": name, "runs": len(done), "expected": len(runs)}
        for metric in metrics:
            column = f"{which}/{metric}"
            values = done[column] if column in done else pd.Series(dtype=float)
            mean, std = _mean_std(values.astype(float) * scale.get(metric, 1.0))
            line[metric], line[f"{metric}_std"] = mean, std
            per_seed[name, metric] = _by_seed(done, column, scale.get(metric, 1.0))
        if "converged" in done:
            known = done["converged"].dropna()
            line["converged"], line["convergence_known"] = int(known.astype(bool).sum()), len(known)
        unfinished = runs[runs["status"] != "finished"] if len(runs) else runs
        errors = unfinished["error"].dropna() if "error" in unfinished else pd.Series(dtype=object)
        line["error"] = str(errors.iloc[0]) if len(errors) else None
        counts = unfinished["status"].value_counts() if len(unfinished) else pd.Series(dtype=int)
        line["unfinished"] = ", ".join(f"{n} {status}" for status, n in counts.items())
        line["status"] = (
            "missing" if len(runs) == 0
            else "ok" if len(done) == len(runs)
            else "partial" if len(done)
            else str(counts.index[0]) if len(counts) == 1
            else "failed"
        )
        for kind in ("params", "flops"):
            column = f"{kind}_total"
            line[kind] = float(done[column].median()) if len(done) and column in done else math.nan
        lines.append(line)
    table = pd.DataFrame.from_records(lines).set_index("row")
    table.attrs["baseline"] = baseline
    for kind in ("params", "flops"):
        table[f"d_{kind}"] = table[kind] - table.loc[baseline, kind]
    # only rows whose every run finished are ranked: a mean over the seeds that survived a
    # divergence or a failure is not comparable to the others
    ranked = table["status"] == "ok"
    for metric in metrics:
        up = higher_is_better(metric)
        compared = {name: paired_difference(per_seed[name, metric], per_seed[baseline, metric], up) for name in rows}
        for field in ("delta", "ci_low", "ci_high", "n_pairs", "significant", "effect"):
            table[f"{metric}_{field}"] = [getattr(compared[name], field) for name in table.index]
        column = table[metric].where(ranked)
        target = column.max() if up else column.min()
        table[f"{metric}_best"] = column.notna() & np.isclose(column, target, rtol=0, atol=1e-12)
        order = column.dropna().sort_values(ascending=not up, kind="stable").index
        table[f"{metric}_bold"] = False
        if len(order) >= 2:
            best, runner_up = order[0], order[1]
            lead = paired_difference(per_seed[best, metric], per_seed[runner_up, metric], up)
            table.loc[best, f"{metric}_bold"] = lead.effect == "better"
    table.attrs["confidence"] = CONFIDENCE
    return table


def human(value: float, signed: bool = False) -> str:
    """``1.5e6`` as ``1.50M`` (K, M, G), with a sign for increments; empty for NaN."""
    if value is None or math.isnan(value):
        return ""
    sign = "+" if signed and value >= 0 else ""
    magnitude = abs(value)
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if magnitude >= size:
            return f"{sign}{value / size:.2f}{unit}"
    return f"{sign}{value:.0f}"


def _cell(table: pd.DataFrame, name: str, metric: str, digits: int, bold: tuple[str, str]) -> str:
    line = table.loc[name]
    if line["status"] not in ("ok", "partial"):
        return line["status"]
    mean, std = line[metric], line[f"{metric}_std"]
    if math.isnan(mean):
        return "n/a"
    text = f"{mean:.{digits}f}"
    if line[f"{metric}_bold"]:
        text = f"{bold[0]}{text}{bold[1]}"
    if not math.isnan(std):
        text += f" ± {std:.{digits}f}"
    return text


EFFECT_MARKS = {"better": "▲", "worse": "▼"}
"""How a difference to the baseline whose interval excludes zero is marked, by its direction."""


def _delta_cell(table: pd.DataFrame, name: str, metric: str, digits: int) -> str:
    """``+1.20 [+0.40, +2.00] ▲``: the mean paired difference to the baseline, its interval and
    a mark when the interval excludes zero; ``n=2`` where fewer seeds paired than the most runs
    any row of the table has (a seed without a finished run of both rows is left out)."""
    line = table.loc[name]
    if name == table.attrs.get("baseline") or line["status"] not in ("ok", "partial"):
        return ""
    delta, low, high, n = line[f"{metric}_delta"], line[f"{metric}_ci_low"], line[f"{metric}_ci_high"], line[f"{metric}_n_pairs"]
    if math.isnan(delta):
        return "n/a"
    text = f"{delta:+.{digits}f}"
    if not math.isnan(low):
        text += f" [{low:+.{digits}f}, {high:+.{digits}f}]"
    if line[f"{metric}_effect"] in EFFECT_MARKS:
        text += f" {EFFECT_MARKS[line[f'{metric}_effect']]}"
    if n < table["expected"].max():
        text += f" n={n}"
    return text


def _converged(line: pd.Series) -> str:
    known = line.get("convergence_known")
    if known is None or (isinstance(known, float) and math.isnan(known)) or not line["runs"]:
        return ""
    return f"{int(line['converged'])}/{int(known)}"


def _note(line: pd.Series) -> str:
    if line["status"] == "ok":
        return ""
    if line["status"] == "missing":
        return "no run"
    counts = line.get("unfinished") or f"{line['expected'] - line['runs']} failed"
    prefix = f"{counts} of {line['expected']} runs" + (", not ranked" if line["status"] == "partial" else "")
    return f"{prefix}: {line['error']}" if line["error"] else prefix


def display_frame(
    table: pd.DataFrame, metrics: Sequence[str], digits: int = 2, bold: tuple[str, str] = ("**", "**")
) -> pd.DataFrame:
    """The summary as the strings shown in Markdown and LaTeX: ``mean ± std`` cells with the best
    bold when it is significantly better than the runner-up, ``Δ <metric>`` cells (mean paired
    difference to the baseline, its interval, ▲/▼ when the interval excludes zero),
    ``Params``/``FLOPs`` of the baseline and increments of the others, seeds, converged runs
    (where known), notes."""
    arrows = {m: f"{m} {'↑' if higher_is_better(m) else '↓'}" for m in metrics}
    lines = []
    for name in table.index:
        line = table.loc[name]
        absolute = name == table.attrs.get("baseline")
        cells = {}
        for m in metrics:
            cells[arrows[m]] = _cell(table, name, m, digits, bold)
            cells[f"Δ {m}"] = _delta_cell(table, name, m, digits)
        lines.append(
            {
                "upsampler": name,
                **cells,
                "params": human(line["params"]) if absolute else human(line["d_params"], signed=True),
                "FLOPs": human(line["flops"]) if absolute else human(line["d_flops"], signed=True),
                "seeds": f"{line['runs']}/{line['expected']}",
                **({"converged": _converged(line)} if "convergence_known" in table else {}),
                "note": _note(line),
            }
        )
    return pd.DataFrame.from_records(lines)


def markdown_table(frame: pd.DataFrame) -> str:
    """A pipe table (no tabulate needed); ``|`` inside cells is escaped."""
    def clean(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(clean(c) for c in frame.columns) + " |"
    rule = "|" + "|".join(":---" if i == 0 else "---:" for i in range(len(frame.columns))) + "|"
    body = ["| " + " | ".join(clean(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


_LATEX = {
    "±": "$\\pm$", "↑": "$\\uparrow$", "↓": "$\\downarrow$", "Δ": "$\\Delta$",
    "▲": "$^{+}$", "▼": "$^{-}$", "_": "\\_", "%": "\\%", "&": "\\&",
}


def _latex(text: str) -> str:
    for plain, tex in _LATEX.items():
        text = text.replace(plain, tex)
    return text


def render(table: pd.DataFrame, metrics: Sequence[str], fmt: str = "markdown", digits: int = 2) -> str:
    """One task's summary as Markdown, CSV (all numbers, unformatted) or LaTeX (booktabs)."""
    if fmt == "csv":
        return table.reset_index().to_csv(index=False)
    if fmt == "markdown":
        return markdown_table(display_frame(table, metrics, digits))
    if fmt == "latex":
        frame = display_frame(table, metrics, digits, bold=("\\textbf{", "}"))
        frame = frame.map(lambda v: _latex(str(v)))
        frame.columns = [_latex(c) for c in frame.columns]
        return frame.to_latex(index=False, escape=False)
    raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")


def paper_comparison(
    table_final: pd.DataFrame,
    table_best: pd.DataFrame,
    published: pd.DataFrame,
    model: str,
    metrics: Sequence[str],
    sources: Sequence[str] | None = None,
    published_names: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Ours (final and best evaluation, mean over seeds) beside the published numbers.

    Args:
        table_final: :func:`summarize` with ``which="final"``.
        table_best: :func:`summarize` with ``which="best"``.
        published: records of :func:`uplab.analysis.cost.load_paper_results`.
        model: the paper model (``segformer_b1``, ``a2u_matting_r34``, ...).
        metrics: accuracy metrics in the published layout's order.
        sources: which sources to take a published cell from, in order of preference (default:
            every source, in file order).
        published_names: our metric name -> the published column where they differ
            (``{"sad": "SAD"}``).

    Returns:
        One line per row with ``<metric> paper``, ``<metric> final``, ``<metric> best`` and
        ``<metric> Δ`` (best minus paper: the released logs report the best evaluation), plus
        ``source`` (where the published numbers come from) and ``note`` (failed/missing runs).
    """
    pub = published[(published["model"] == model) & ~published["relative"]]
    if sources is not None:
        unknown = set(sources) - set(pub["source"])
        if unknown:
            raise ValueError(f"no published numbers for {model} from sources {sorted(unknown)}")
        order = {s: i for i, s in enumerate(sources)}
        pub = pub[pub["source"].isin(order)].sort_values("source", key=lambda s: s.map(order), kind="stable")
    lines = []
    for name in table_final.index:
        line: dict[str, object] = {"upsampler": name}
        used = []
        for metric in metrics:
            column = (published_names or {}).get(metric, metric)
            cells = pub[(pub["upsampler"] == name) & (pub["metric"] == column)]
            paper = float(cells["value"].iloc[0]) if len(cells) else math.nan
            if len(cells):
                used.append(cells["source"].iloc[0])
            final, best = table_final.loc[name, metric], table_best.loc[name, metric]
            line.update(
                {
                    f"{metric} paper": paper,
                    f"{metric} final": final,
                    f"{metric} best": best,
                    f"{metric} Δ": best - paper,
                }
            )
        line["source"] = ", ".join(dict.fromkeys(used))
        line["note"] = _note(table_final.loc[name])
        lines.append(line)
    return pd.DataFrame.from_records(lines)


def render_comparison(frame: pd.DataFrame, fmt: str = "markdown", digits: int = 4) -> str:
    """A :func:`paper_comparison` frame as Markdown, CSV or LaTeX (``digits`` significant)."""
    if fmt == "csv":
        return frame.to_csv(index=False)
    shown = frame.copy()
    for column in shown.columns:
        if shown[column].dtype.kind == "f":
            signed = column.endswith("Δ")
            shown[column] = shown[column].map(
                lambda v, s=signed: "" if math.isnan(v) else f"{v:+.{digits}g}" if s else f"{v:.{digits}g}"
            )
    shown = shown.fillna("")
    if fmt == "markdown":
        return markdown_table(shown)
    if fmt == "latex":
        return shown.to_latex(index=False, escape=True)
    raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")


def check_claims(claims: Sequence[Mapping], summaries: Mapping[str, pd.DataFrame], digits: int = 2) -> pd.DataFrame:
    """The papers' qualitative claims, checked against the tables' paired intervals.

    Args:
        claims: each ``{"claim": text, "source": where it is stated, "checks": [{"task", "row",
            "metric", "expect"}]}`` with ``expect`` one of
            :data:`uplab.analysis.statistics.EXPECTATIONS`, relative to the task's baseline.
        summaries: :func:`summarize` per task.

    Returns:
        One line per claim: ``claim``, ``source``, ``evidence`` (each check's observed Δ and
        interval with its verdict) and ``verdict`` (:func:`uplab.analysis.statistics.claim_verdict`).
        A check whose row has no finished run, or whose table lacks the metric, is inconclusive.
    """
    lines = []
    for claim in claims:
        verdicts, evidence = [], []
        for check in claim["checks"]:
            task, row, metric, expect = (str(check[k]) for k in ("task", "row", "metric", "expect"))
            table = summaries.get(task)
            if table is None or row not in table.index or f"{metric}_effect" not in table:
                effect, shown = "unknown", "no such row or metric in the table"
            else:
                effect = str(table.loc[row, f"{metric}_effect"])
                shown = _delta_cell(table, row, metric, digits) or table.loc[row, "status"]
            verdict = check_verdict(expect, effect)
            verdicts.append(verdict)
            evidence.append(f"{task} {row} {metric} ({expect.replace('_', ' ')}): {shown}: {verdict}")
        lines.append(
            {"claim": claim["claim"], "source": claim.get("source", ""), "evidence": "; ".join(evidence),
             "verdict": claim_verdict(verdicts)}
        )
    return pd.DataFrame.from_records(lines, columns=["claim", "source", "evidence", "verdict"])


def render_claims(frame: pd.DataFrame, fmt: str = "markdown") -> str:
    """A :func:`check_claims` frame as Markdown, CSV or LaTeX."""
    if fmt == "csv":
        return frame.to_csv(index=False)
    if fmt == "markdown":
        return markdown_table(frame)
    if fmt == "latex":
        shown = frame.map(lambda v: _latex(str(v)))
        return shown.to_latex(index=False, escape=False)
    raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
