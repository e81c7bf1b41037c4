"""Inspect any folder of runs: a table's (``outputs/tables/toy``), a multirun or a sweep
(``outputs/multiruns/<date>``), or all of ``outputs/``; or the same runs read back from W&B.

The runs are compared by their *settings*: the command-line overrides that differ between runs
(the swept parameters become columns), plus any resolved-config value that still differs between
runs with the same overrides (a schedule changed in a config file, a run of an older commit's
defaults). Runs are averaged over seeds only when every other setting is equal, so two schedules
or two learning rates are never one row. Runs that did not finish (no ``results.json`` yet,
failed, diverged, not evaluated) are listed apart, never averaged.

Examples::

    uplab-runs outputs/multiruns/2026-12-06_10-00-00      # or python -m uplab.analysis.runs
    uplab-runs outputs --metric mIoU --which best
    uplab-runs outputs --wandb my-entity/uplab             # online runs from the W&B API

In Python (what ``notebooks/inspect_ablations.ipynb`` does)::

    runs = load_runs("outputs/tables/toy")
    compare(runs)        # one line per setting: seeds, mean and std of each metric
    unfinished(runs)     # status and reason of each run that did not finish
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from uplab.analysis import records
from uplab.analysis.run_record import RESULTS_FILE
from uplab.paths import project_root

# config keys that do not change what a run computes; ``seed`` is the axis runs are averaged over
IGNORED_KEYS = (
    "seed", "resume", "keep_checkpoint", "tags", "paths", "logger", "hydra",
    "callbacks.rich_progress_bar", "trainer.enable_progress_bar", "trainer.enable_model_summary",
    "trainer.default_root_dir",  # where a run writes (a table gives each run its own directory)
)
HYDRA_OVERRIDES = Path(".hydra") / "overrides.yaml"
HYDRA_CONFIG = Path(".hydra") / "config.yaml"
DEFAULT = "·"  # a setting a run does not override (it keeps the config's default)
WANDB_OFFLINE_GLOB = "wandb/offline-run-*"
FIXTURE_RUNS = Path("tests") / "fixtures" / "runs"


def is_ignored(key: str) -> bool:
    return any(key == k or key.startswith(f"{k}.") for k in IGNORED_KEYS)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}``; lists become their JSON text."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, list | tuple) else value
    return flat


def parse_overrides(overrides: Iterable[str]) -> dict[str, str]:
    """Hydra override strings as ``key -> value`` (``+key=v``, ``++key=v`` and ``~key`` too)."""
    parsed = {}
    for item in overrides:
        key, _, value = str(item).partition("=")
        key = key.lstrip("+")
        if key.startswith("~"):
            key, value = key[1:], "(deleted)"
        parsed[key] = value
    return parsed


def run_overrides(run_dir: Path) -> dict[str, str] | None:
    """The run's command-line overrides (Hydra's ``.hydra/overrides.yaml``, or the table
    runner's ``run.json``), None where neither exists."""
    if (run_dir / HYDRA_OVERRIDES).is_file():
        return parse_overrides(yaml.safe_load((run_dir / HYDRA_OVERRIDES).read_text()) or [])
    key = run_dir / records.RUN_FILE
    if key.is_file():
        return parse_overrides(json.loads(key.read_text()).get("overrides", []))
    return None


def run_config(run_dir: Path) -> dict[str, Any]:
    """The run's resolved config, flattened: from ``results.json``, else from Hydra's
    ``.hydra/config.yaml`` (a run that never wrote its record), else empty."""
    try:
        config = json.loads((run_dir / RESULTS_FILE).read_text()).get("config") or {}
    except (OSError, json.JSONDecodeError):
        config = {}
    if not config and (run_dir / HYDRA_CONFIG).is_file():
        config = yaml.safe_load((run_dir / HYDRA_CONFIG).read_text()) or {}
    return flatten(config)


def wandb_offline_id(run_dir: Path) -> str | None:
    """The W&B id of the run's offline W&B record (``wandb/offline-run-<time>-<id>``), if any."""
    found = sorted(run_dir.glob(WANDB_OFFLINE_GLOB))
    return found[-1].name.rsplit("-", 1)[-1] if found else None


def load_runs(folder: str | Path) -> pd.DataFrame:
    """Every run under ``folder``: the columns of :func:`uplab.analysis.records.record_row`
    plus ``overrides`` (dict or None), ``config`` (flattened dict) and ``wandb_offline`` (the id
    of an offline W&B record in the run directory). A run directory without ``results.json``
    (Hydra's ``.hydra/`` only) is a run with status ``unfinished``."""
    rows = []
    for run_dir in records.find_run_dirs(folder):
        row = records.record_row(run_dir)
        row.update(overrides=run_overrides(run_dir), config=run_config(run_dir), wandb_offline=wandb_offline_id(run_dir))
        rows.append(row)
    return pd.DataFrame.from_records(rows)


def _differing(dicts: Sequence[Mapping[str, Any]]) -> list[str]:
    keys = sorted({k for d in dicts for k in d if not is_ignored(k)})
    return [k for k in keys if len({json.dumps(d.get(k), default=str) for d in dicts}) > 1]


def settings(runs: pd.DataFrame) -> pd.DataFrame:
    """The settings that tell the runs apart, one column each (indexed like ``runs``): the
    overrides whose values differ between runs (``·`` where a run keeps the default), then the
    resolved-config keys that still differ between runs with equal overrides."""
    if runs.empty:
        return pd.DataFrame(index=runs.index)
    overrides = [o if isinstance(o, Mapping) else {} for o in runs["overrides"]]
    override_keys = _differing(overrides)
    table = pd.DataFrame(
        [{k: str(o.get(k, DEFAULT)) for k in override_keys} for o in overrides], index=runs.index
    )
    groups = table.astype(str).agg("|".join, axis=1) if override_keys else pd.Series("", index=runs.index)
    config_keys: set[str] = set()
    for _, members in runs.groupby(groups.to_numpy()):
        config_keys |= set(_differing(list(members["config"])))
    for key in sorted(config_keys - set(override_keys)):
        table[key] = [str(c.get(key, DEFAULT)) for c in runs["config"]]
    return table


def metric_names(runs: pd.DataFrame, which: str = "final") -> list[str]:
    """The metrics the runs report (``<which>/<metric>`` columns), the monitored one first."""
    names = [
        c.split("/", 1)[1] for c in runs.columns if c.startswith(f"{which}/") and runs[c].notna().any()
    ]
    monitors = list(runs["monitor"].dropna().unique()) if "monitor" in runs else []
    return sorted(names, key=lambda m: (m not in monitors, names.index(m)))


def compare(runs: pd.DataFrame, metrics: Sequence[str] | None = None, which: str = "final") -> pd.DataFrame:
    """One line per distinct setting (:func:`settings`) of the finished runs: ``task``, the
    setting columns, ``seeds`` (how many runs), and ``<metric>`` / ``<metric>_std`` (mean and
    sample std over those runs), sorted by the first metric, best first."""
    from uplab.analysis.tables import higher_is_better

    if which not in ("final", "best"):
        raise ValueError(f"which must be 'final' or 'best', got {which!r}")
    done = runs[runs["status"] == "finished"] if len(runs) else runs
    if done.empty:
        return pd.DataFrame()
    keys = settings(done).drop(columns=["task"], errors="ignore")  # a column of its own already
    metrics = list(metrics or metric_names(done, which))
    frame = pd.concat([done[["task"]].fillna(DEFAULT), keys], axis=1)
    group_cols = list(frame.columns)
    for metric in metrics:
        column = f"{which}/{metric}"
        frame[metric] = done[column].astype(float) if column in done else math.nan
    grouped = frame.groupby(group_cols, sort=False, dropna=False)
    table = grouped[metrics].mean()
    table = table.join(grouped[metrics].std(ddof=1).add_suffix("_std"))
    table.insert(0, "seeds", grouped.size())
    table = table.reset_index()
    if metrics:
        table = table.sort_values(metrics[0], ascending=not higher_is_better(metrics[0]), kind="stable")
    ordered = [*group_cols, "seeds", *[c for m in metrics for c in (m, f"{m}_std")]]
    return table[ordered].reset_index(drop=True)


def unfinished(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs that did not finish: directory, status (``unfinished``: no ``results.json``;
    ``failed``; ``diverged``; ``not_evaluated``; ``interrupted``), reason, and their settings."""
    if runs.empty:
        return pd.DataFrame(columns=["run_dir", "status", "error"])
    left = runs[runs["status"] != "finished"]
    keys = settings(runs).loc[left.index]
    return pd.concat([left[["run_dir", "status", "error"]], keys], axis=1).reset_index(drop=True)


def display(table: pd.DataFrame, metrics: Sequence[str], digits: int = 4) -> pd.DataFrame:
    """:func:`compare`'s table with ``mean ± std`` cells (the std where there are two seeds)."""
    shown = table.drop(columns=[f"{m}_std" for m in metrics if f"{m}_std" in table])
    for metric in metrics:
        if metric not in table:
            continue
        shown[metric] = [
            "" if math.isnan(m) else f"{m:.{digits}g}" + ("" if math.isnan(s) else f" ± {s:.{digits}g}")
            for m, s in zip(table[metric], table[f"{metric}_std"], strict=True)
        ]
    return shown


def report(runs: pd.DataFrame, metrics: Sequence[str] | None = None, which: str = "final") -> str:
    """The comparison table and the list of unfinished runs as Markdown text."""
    from uplab.analysis.tables import markdown_table

    if runs.empty:
        return "no runs"
    done = runs[runs["status"] == "finished"]
    parts = [f"{len(runs)} runs, {len(done)} finished; {which} evaluation, mean ± std over seeds"]
    tasks = list(done["task"].fillna(DEFAULT).unique()) if len(done) else []
    for task in tasks:  # one table per task: their metrics differ
        of_task = runs[runs["task"].fillna(DEFAULT) == task]
        shown = list(metrics or metric_names(of_task[of_task["status"] == "finished"], which))
        table = compare(of_task, shown, which)
        if len(table):
            heading = [f"### {task}"] if len(tasks) > 1 else []
            parts.append("\n\n".join([*heading, markdown_table(display(table, shown))]))
    left = unfinished(runs)
    if len(left):
        parts.append(f"{len(left)} runs did not finish:\n" + markdown_table(left.fillna("")))
    return "\n\n".join(parts)


def wandb_runs(project: str, api: Any = None) -> pd.DataFrame:
    """The runs of a W&B project from the W&B API (online), as :func:`load_runs` rows: the
    config W&B holds, its summary's ``val/*`` values as the final metrics and ``best/val/*`` as
    the best, its state as the status (``finished`` or what W&B says: running, crashed, ...)."""
    if api is None:
        import wandb

        api = wandb.Api(timeout=30)
    rows = []
    for run in api.runs(project):
        summary = dict(run.summary._json_dict) if hasattr(run.summary, "_json_dict") else dict(run.summary)
        row: dict[str, Any] = {
            "run_dir": f"wandb:{project}/{run.id}", "task": None, "status": run.state, "error": None,
            "overrides": None, "config": flatten(dict(run.config)), "wandb_offline": None,
        }
        for key, value in summary.items():
            if isinstance(value, int | float) and key.startswith(("val/", "best/val/")):
                which = "best" if key.startswith("best/") else "final"
                row[f"{which}/{key.removeprefix('best/').removeprefix(records.METRIC_PREFIX)}"] = float(value)
        rows.append(row)
    return pd.DataFrame.from_records(rows)


def wandb_offline_runs(folder: str | Path) -> pd.DataFrame:
    """The runs under ``folder`` that hold an offline W&B record, read from their run
    directories (``results.json`` holds what was sent to W&B: config, metrics and cost);
    ``wandb_offline`` is the W&B id, for ``wandb sync``."""
    runs = load_runs(folder)
    return runs[runs["wandb_offline"].notna()].reset_index(drop=True) if len(runs) else runs


class CompareRuns(Callback):
    """Hydra callback (conf/hydra/default.yaml): a multirun or sweep ends with one comparison
    table of its runs (:func:`report` of the sweep directory)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        folder = Path(config.hydra.sweep.dir)
        if folder.exists():
            print(f"\nruns under {folder}\n\n{report(load_runs(folder))}\n", flush=True)


def default_folder(root: Path | None = None) -> tuple[Path, str]:
    """The folder to inspect when none is named, and a line saying why: ``$UPLAB_RUNS``; else
    the project's ``outputs/`` when it holds runs; else the fixture runs of the source checkout
    (``tests/fixtures/runs``: a small sweep), so the notebook shows something on a fresh clone."""
    root = root or project_root()
    if os.environ.get("UPLAB_RUNS"):
        return Path(os.environ["UPLAB_RUNS"]), "the folder named by $UPLAB_RUNS"
    outputs = root / "outputs"
    if outputs.is_dir() and records.find_run_dirs(outputs):
        return outputs, "the project's outputs/ (every run, table and sweep made here)"
    return root / FIXTURE_RUNS, (
        f"no runs under {outputs} yet: showing the fixture runs (a small sweep) instead; train some "
        "(`make sweep SWEEP=quick`, `make reproduce-table TABLE=quick`) or set $UPLAB_RUNS"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``uplab-runs``: print the comparison of the runs under a folder."""
    parser = argparse.ArgumentParser(prog="uplab-runs", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, nargs="?", default=project_root() / "outputs",
                        help="a folder of runs (default: the project's outputs/)")
    parser.add_argument("--metric", action="append", help="metric(s) to compare (default: all, the monitored first)")
    parser.add_argument("--which", choices=("final", "best"), default="final")
    parser.add_argument("--wandb", metavar="PROJECT",
                        help="read the runs of this W&B project (entity/project) from the W&B API; "
                             "offline W&B runs are read from the folder's run directories")
    parser.add_argument("--format", choices=("markdown", "csv"), default="markdown")
    args = parser.parse_args(argv)
    try:
        if args.wandb:
            runs = pd.concat([wandb_offline_runs(args.folder) if args.folder.exists() else pd.DataFrame(),
                              wandb_runs(args.wandb)], ignore_index=True)
        else:
            runs = load_runs(args.folder)
    except ValueError as err:
        parser.exit(2, f"uplab-runs: {err}\n")
    if runs.empty:
        parser.exit(1, f"uplab-runs: no runs under {args.folder} (no results.json, run.json, failed.json or "
                       ".hydra/ there): pass a run, multirun or table folder, e.g. outputs/\n")
    if args.format == "csv":
        compare(runs, args.metric, args.which).to_csv(sys.stdout, index=False)
    else:
        print(report(runs, args.metric, args.which))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
