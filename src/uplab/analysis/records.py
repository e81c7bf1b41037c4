"""Run records as a table: the ``results.json`` files (and failure notes) under a directory, one
row per run, read by the table builder, the figures and ``notebooks/inspect_ablations.ipynb``.

A run directory made by ``scripts/reproduce_table.py`` also holds ``run.json`` (which table, task,
row and seed it is) and, if training raised, ``failed.json`` (the error). Any other Hydra run or
multirun directory works too: the task, upsampler and seed then come from the resolved config in
``results.json``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from uplab.analysis.run_record import RESULTS_FILE, read_run_record, write_json_atomic

RUN_FILE = "run.json"
HYDRA_CONFIG = "config.yaml"  # in a Hydra run directory's .hydra/
FAILURE_FILE = "failed.json"
METRIC_PREFIX = "val/"
# where a record that is not "finished" says why (uplab.analysis.run_record.write_run_record's
# one-line message, its divergence details, a failed run's error)
STATUS_REASON_KEYS = ("message", "divergence", "error")
# the task module's class name -> the task (``uplab.tasks.SegmentationTask`` -> segmentation)
TASK_SUFFIX = "Task"


def status_reason(record: Mapping[str, Any]) -> str | None:
    """One line on why a run that is not ``finished`` has no result (``diverged`` with its step
    and last finite loss, ``not_evaluated`` with what was missing), from the fields the run's
    record carries next to its status; None where it names none."""
    for source in (record, record.get("metrics") or {}):
        for key in STATUS_REASON_KEYS:
            value = source.get(key)
            if isinstance(value, Mapping):
                value = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in value.items() if v is not None)
            elif isinstance(value, list | tuple):
                value = "; ".join(str(v) for v in value)
            if value:
                return " ".join(str(value).split())
    return None


def is_complete(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a finished run: a readable ``results.json`` with status
    ``finished`` and at least one final metric. Anything else (no file, an interrupted run, a
    truncated file) is redone on resume."""
    path = Path(run_dir) / RESULTS_FILE
    if not path.is_file():
        return False
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return record.get("status") == "finished" and bool(record.get("metrics", {}).get("final"))


def write_run_key(run_dir: str | Path, key: Mapping[str, Any]) -> Path:
    """Write ``run.json``: what the run is in its table (table, task, row, seed, overrides)."""
    return write_json_atomic(Path(run_dir) / RUN_FILE, dict(key))


def root_cause(error: BaseException) -> BaseException:
    """The innermost exception of ``error``'s chain (``raise ... from``, or one raised while
    handling another): Hydra's instantiation error wraps the one that names the missing file."""
    seen = {id(error)}
    while True:
        inner = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
        if inner is None or id(inner) in seen:
            return error
        seen.add(id(inner))
        error = inner


def error_line(error: BaseException) -> str:
    """``Type: first line of the message`` of an exception."""
    first_line = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first_line}".rstrip(": ")


def write_failure(run_dir: str | Path, error: BaseException, traceback_text: str) -> Path:
    """Write ``failed.json`` for a run whose training raised ``error``: ``error`` is the root
    cause in one line (:func:`root_cause`), ``raised`` the exception that reached the runner
    where it differs, ``traceback`` the whole."""
    cause = root_cause(error)
    note = {"error": error_line(cause), "traceback": traceback_text}
    if cause is not error:
        note["raised"] = error_line(error)
    return write_json_atomic(Path(run_dir) / FAILURE_FILE, note)


def clear_failure(run_dir: str | Path) -> None:
    """Forget an earlier failure of ``run_dir`` (before it is redone)."""
    (Path(run_dir) / FAILURE_FILE).unlink(missing_ok=True)


def _task_from_config(config: Mapping[str, Any]) -> str | None:
    target = str(config.get("task", {}).get("_target_", ""))
    name = target.rsplit(".", 1)[-1]
    if name.endswith(TASK_SUFFIX):
        return name[: -len(TASK_SUFFIX)].lower()
    return config.get("data", {}).get("task")


def _strip(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {
        k.removeprefix(METRIC_PREFIX): float(v) for k, v in metrics.items() if v is not None
    }


def _status(run_dir: Path, record: Mapping[str, Any]) -> str:
    """``finished`` only for a complete run; a record that says finished without a final metric
    was never evaluated."""
    if is_complete(run_dir):
        return "finished"
    status = record.get("status") or "interrupted"
    return "not_evaluated" if status == "finished" else str(status)


def _cost_columns(cost: Mapping[str, Any]) -> dict[str, float]:
    columns = {}
    for kind in ("params", "flops"):
        values = cost.get(kind) or {}
        for part in ("total", "upsamplers"):
            value = values.get(part)
            columns[f"{kind}_{part}"] = math.nan if value is None else float(value)
    return columns


def record_row(run_dir: str | Path) -> dict[str, Any]:
    """One run directory as a flat row.

    Columns: ``run_dir, table, task, row, upsampler, seed, status, error`` (status is
    ``finished``, or what the record says instead (``diverged``, ``not_evaluated``,
    ``interrupted``), ``failed`` (training raised, see ``failed.json``) or ``unfinished`` (no
    ``results.json`` yet); ``error`` is the one-line reason of a run that did not finish),
    ``final/<metric>`` and
    ``best/<metric>`` (without the ``val/`` prefix), ``best_step``, ``monitor``,
    ``params_total, params_upsamplers, flops_total, flops_upsamplers``, ``wall_time_s``.
    """
    run_dir = Path(run_dir)
    key_path = run_dir / RUN_FILE
    key = json.loads(key_path.read_text()) if key_path.is_file() else {}
    row: dict[str, Any] = {
        "run_dir": str(run_dir),
        "table": key.get("table"),
        "task": key.get("task"),
        "row": key.get("row"),
        "upsampler": None,
        "seed": key.get("seed"),
        "status": "unfinished",
        "error": None,
    }
    if (run_dir / RESULTS_FILE).is_file():
        try:
            record = read_run_record(run_dir)
        except (OSError, json.JSONDecodeError) as err:
            row.update(status="failed", error=f"unreadable {RESULTS_FILE}: {err}")
            record = None
        if record is not None:
            config = record.get("config", {})
            metrics = record.get("metrics", {})
            upsampler = config.get("upsampler", {}).get("name")
            row.update(
                task=row["task"] or _task_from_config(config),
                upsampler=upsampler,
                row=row["row"] or upsampler,
                seed=config.get("seed") if row["seed"] is None else row["seed"],
                status=_status(run_dir, record),
                error=None if is_complete(run_dir) else status_reason(record),
                monitor=str(metrics.get("monitor", "")).removeprefix(METRIC_PREFIX) or None,
                best_step=metrics.get("best_step"),
                wall_time_s=record.get("wall_time_s"),
                **_cost_columns(record.get("cost", {})),
            )
            row.update({f"final/{k}": v for k, v in _strip(metrics.get("final", {})).items()})
            row.update({f"best/{k}": v for k, v in _strip(metrics.get("best", {})).items()})
    failure = run_dir / FAILURE_FILE
    if failure.is_file() and row["status"] != "finished":
        row.update(status="failed", error=json.loads(failure.read_text()).get("error"))
    return row


def find_run_dirs(root: str | Path) -> list[Path]:
    """Every directory under ``root`` (itself included) that holds a ``results.json``, a
    ``run.json``, a ``failed.json`` or Hydra's ``.hydra/config.yaml`` (a run that started), sorted."""
    root = Path(root)
    if not root.exists():
        raise ValueError(f"no run directory at {root}: expected a run, multirun or table folder (e.g. outputs/)")
    names = (RESULTS_FILE, RUN_FILE, FAILURE_FILE)
    found = {p.parent for name in names for p in root.rglob(name)}
    found |= {p.parent.parent for p in root.rglob(HYDRA_CONFIG) if p.parent.name == ".hydra"}
    return sorted(found)


def load_records(roots: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    """All runs under one or more directories, one row per run (see :func:`record_row`)."""
    if isinstance(roots, str | Path):
        roots = [roots]
    rows = [record_row(d) for root in roots for d in find_run_dirs(root)]
    return pd.DataFrame.from_records(rows)


def training_curves(run_dir: str | Path) -> pd.DataFrame:
    """The validation history of a run (``step``, ``epoch`` and one column per metric) from its
    ``results.json``; Lightning's CSV log (``csv/metrics.csv``) adds the training loss where it
    exists."""
    record = read_run_record(run_dir)
    history = record.get("metrics", {}).get("history", [])
    curves = pd.DataFrame.from_records(
        [{"step": h["step"], "epoch": h["epoch"], **_strip(h["metrics"])} for h in history]
    )
    csv_logs = sorted(Path(run_dir).glob("csv/**/metrics.csv"))
    if csv_logs:
        logged = pd.read_csv(csv_logs[0])
        train_cols = [c for c in logged.columns if c.startswith("train/")]
        if train_cols:
            train = logged[["step", *train_cols]].dropna(how="all", subset=train_cols)
            train = train.rename(columns={c: c.replace("/", "_") for c in train_cols})
            curves = pd.concat([curves, train], ignore_index=True).sort_values("step", kind="stable")
    return curves.reset_index(drop=True)
