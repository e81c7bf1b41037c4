"""Figures of a table's runs (matplotlib): metric per upsampler, accuracy against added cost,
training curves, and a qualitative grid (input, ground truth, prediction per upsampler).

The figures are plain :class:`matplotlib.figure.Figure` objects, made without pyplot: no backend
is chosen here (a notebook keeps its inline one), nothing stays open, and ``fig.savefig`` writes
PNGs anywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from uplab.analysis.predictions import load_predictions
from uplab.analysis.tables import higher_is_better


def _direction(metric: str) -> str:
    return f"{metric} ({'higher' if higher_is_better(metric) else 'lower'} is better)"


def accuracy_cost(summary: pd.DataFrame, metric: str, cost: str = "flops", title: str = "") -> Figure:
    """Mean ± std of ``metric`` against the added cost of each row (a :func:`summarize` table).

    Args:
        summary: :func:`uplab.analysis.tables.summarize` of one task.
        metric: the metric on the y axis.
        cost: ``"flops"`` or ``"params"``: the increment over the baseline on the x axis.
        title: the figure's title.
    """
    if cost not in ("flops", "params"):
        raise ValueError(f"cost must be 'flops' or 'params', got {cost!r}")
    done = summary[summary[metric].notna()]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    x = done[f"d_{cost}"] / 1e6
    ax.errorbar(x, done[metric], yerr=done[f"{metric}_std"].fillna(0), fmt="o", capsize=3)
    for name, xi, yi in zip(done.index, x, done[metric], strict=True):
        ax.annotate(name, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(f"added {'MFLOPs (MACs)' if cost == 'flops' else 'parameters (M)'} over {summary.attrs.get('baseline', 'the baseline')}")
    ax.set_ylabel(_direction(metric))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    failed = summary.index[summary[metric].isna()]
    if len(failed):
        ax.text(0.01, 0.01, "no result: " + ", ".join(failed), transform=ax.transAxes, fontsize=7, color="red")
    fig.tight_layout()
    return fig


def metric_per_upsampler(records: pd.DataFrame, metric: str, which: str = "final", title: str = "") -> Figure:
    """Every finished run's ``metric`` per row (one dot per seed) with the mean as a bar."""
    column = f"{which}/{metric}"
    done = records[(records["status"] == "finished")] if len(records) else records
    if column not in done:
        raise ValueError(f"no run has {column!r}; columns: {sorted(c for c in records.columns if '/' in c)}")
    order = list(dict.fromkeys(done["row"]))
    fig = Figure(figsize=(max(4, 0.6 * len(order)), 3.5))
    ax = fig.subplots()
    means = done.groupby("row")[column].mean().reindex(order)
    ax.bar(range(len(order)), means, color="lightsteelblue")
    for i, name in enumerate(order):
        values = done.loc[done["row"] == name, column]
        ax.plot(np.full(len(values), i), values, "k.", ms=5)
    ax.set_xticks(range(len(order)), order, rotation=45, ha="right")
    ax.set_ylabel(_direction(metric))
    ax.set_title(title)
    fig.tight_layout()
    return fig


def training_curves(curves: Mapping[str, pd.DataFrame], metric: str, title: str = "") -> Figure:
    """One line per run (``name -> curve`` from :func:`uplab.analysis.records.training_curves`)
    of ``metric`` against the step."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for name, curve in curves.items():
        if metric in curve:
            points = curve[["step", metric]].dropna()
            ax.plot(points["step"], points[metric], marker=".", label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(_direction(metric) if not metric.startswith("train") else metric)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def _show(ax: Axes, panel: np.ndarray | None, title: str, vmin: float | None, vmax: float | None) -> None:
    ax.axis("off")
    ax.set_title(title, fontsize=8)
    if panel is None:
        ax.text(0.5, 0.5, "no prediction", ha="center", va="center", fontsize=7, transform=ax.transAxes)
        return
    if panel.ndim == 3:
        ax.imshow(panel, interpolation="nearest")
    else:
        ax.imshow(panel, cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")


def qualitative_grid(records: pd.DataFrame, rows: Mapping[str, Sequence[str]]) -> Figure | None:
    """Input, ground truth and each row's prediction on the same validation image, one line per
    task (the ``predictions.npz`` of one run per task and row); None if no run stored any."""
    panels: dict[str, dict[str, dict[str, np.ndarray] | None]] = {}
    for task, names in rows.items():
        runs = records[records["task"] == task] if len(records) else records
        panels[task] = {}
        for name in names:
            dirs = runs.loc[runs["row"] == name, "run_dir"]
            panels[task][name] = load_predictions(dirs.iloc[0]) if len(dirs) else None
    if not any(p for task in panels.values() for p in task.values()):
        return None
    width = 2 + max(len(n) for n in rows.values())
    fig = Figure(figsize=(1.3 * width, 1.45 * len(rows)))
    axes = fig.subplots(len(rows), width, squeeze=False)
    for axes_row, (task, by_row) in zip(axes, panels.items(), strict=True):
        reference = next((p for p in by_row.values() if p), None)
        truth = None if reference is None else reference.get("ground_truth")
        # one colour scale per task, set by the ground truth, so predictions compare by eye
        vmin = vmax = None
        if truth is not None and truth.ndim == 2:
            vmin, vmax = float(np.min(truth)), float(np.max(truth))
        _show(axes_row[0], None if reference is None else reference.get("input"), "input", None, None)
        axes_row[0].annotate(task, xy=(-0.08, 0.5), xycoords="axes fraction", rotation=90, ha="right", va="center", fontsize=9)
        _show(axes_row[1], truth, "ground truth", vmin, vmax)
        for ax, (name, pred) in zip(axes_row[2:], by_row.items(), strict=False):
            _show(ax, None if pred is None else pred.get("prediction"), name, vmin, vmax)
        for ax in axes_row[2 + len(by_row):]:
            ax.axis("off")
    fig.tight_layout(pad=0.3)
    return fig



def setting_effect(table: pd.DataFrame, setting: str, metric: str, title: str = "") -> Figure:
    """Mean ± std of ``metric`` for each value of one swept ``setting``, one dot per line of a
    :func:`uplab.analysis.runs.compare` table (the other settings of a line annotate its dot)."""
    if setting not in table or metric not in table:
        raise ValueError(f"expected columns {setting!r} and {metric!r}; the table has {list(table.columns)}")
    others = [c for c in table.columns if c not in (setting, metric, f"{metric}_std", "seeds", "task") and "." in c]
    values = list(dict.fromkeys(sorted(table[setting].astype(str), key=_numeric_first)))
    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    x = [values.index(str(v)) for v in table[setting]]
    ax.errorbar(x, table[metric], yerr=table[f"{metric}_std"].fillna(0), fmt="o", capsize=3)
    for xi, (_, line) in zip(x, table.iterrows(), strict=True):
        label = ", ".join(f"{c.rsplit('.', 1)[-1]}={line[c]}" for c in others)
        ax.annotate(label, (xi, line[metric]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xticks(range(len(values)), values)
    ax.set_xlabel(setting)
    ax.set_ylabel(_direction(metric))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _numeric_first(value: str) -> tuple[int, float, str]:
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)
