"""Reproduce a results table: run its grid of training runs, then write the table.

``make reproduce-table`` (``TABLE=toy``, the default) trains the toy grid (conf/table/toy.yaml:
the four toy tasks x the papers' upsampler rows x seeds) in this process, one Hydra-composed run
after another under a progress bar over the whole grid, and writes
``results/tables/<table>.{md,csv,tex}``, the cost table ``results/tables/cost.md`` and the
figures in ``results/figures/``. ``TABLE=quick`` is a three-minute subset; ``TABLE=paper-*`` are
the real-data grids of the papers' experiment configs, rendered beside the published numbers.

Each run lives in ``<runs-dir>/<table>/<task>/<row>/seed<seed>``. A re-run skips every run whose
``results.json`` is complete and whose overrides (``run.json``) match the table's, and redoes the
others (an interrupted grid resumes; a changed schedule reruns); a run that raises is recorded in
``failed.json`` and shown as failed in the table.

Examples::

    python scripts/reproduce_table.py --table toy
    python scripts/reproduce_table.py --table quick --readme
    python scripts/reproduce_table.py --table paper-segformer --launcher slurm
    python scripts/reproduce_table.py --table toy --render-only     # tables from existing runs
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from omegaconf import DictConfig, ListConfig, OmegaConf  # noqa: E402

from uplab.analysis import records as rec  # noqa: E402
from uplab.analysis import tables  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
TABLE_CONF = CONF / "table"
README = ROOT / "README.md"
log = logging.getLogger("reproduce_table")


@dataclass(frozen=True)
class Run:
    """One training run of a table: where it lives and the Hydra overrides that make it."""

    table: str
    task: str
    row: str
    seed: int
    overrides: tuple[str, ...]
    run_dir: Path = field(compare=False)

    @property
    def label(self) -> str:
        return f"{self.task} · {self.row} · seed {self.seed}"


def available_tables() -> list[str]:
    return sorted(p.stem for p in TABLE_CONF.glob("*.yaml"))


def load_table(name: str) -> DictConfig:
    """conf/table/<name>.yaml (or a table file's path); an unknown name lists the available ones."""
    path = Path(name) if name.endswith(".yaml") else TABLE_CONF / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"no table {name!r} (conf/table/{name}.yaml); available: {', '.join(available_tables())}")
    spec = OmegaConf.load(path)
    for key in ("seeds", "tasks"):
        if key not in spec:
            raise ValueError(f"{path}: missing {key!r}")
    return spec


def row_overrides(rows: ListConfig | DictConfig) -> dict[str, list[str]]:
    """A task's rows as ``name -> overrides``: a list of upsampler names means ``upsampler=<name>``."""
    if isinstance(rows, DictConfig):
        return {str(k): [str(o) for o in v] for k, v in rows.items()}
    return {str(name): [f"upsampler={name}"] for name in rows}


def plan_runs(spec: DictConfig, runs_dir: Path, tasks: Sequence[str] | None = None) -> list[Run]:
    """Every run of the table, seed-major (all rows of seed 0 first, so an interrupted grid has
    whole tables of the first seeds)."""
    unknown = set(tasks or []) - set(spec.tasks)
    if unknown:
        raise ValueError(f"tasks {sorted(unknown)} are not in table {spec.name}: {list(spec.tasks)}")
    runs = []
    for seed in spec.seeds:
        for task, task_spec in spec.tasks.items():
            if tasks and task not in tasks:
                continue
            for row, overrides in row_overrides(task_spec.rows).items():
                runs.append(
                    Run(
                        table=spec.name, task=str(task), row=row, seed=int(seed),
                        overrides=(
                            *spec.get("overrides", []), *task_spec.get("overrides", []),
                            *overrides, f"seed={seed}",
                        ),
                        run_dir=runs_dir / spec.name / str(task) / row / f"seed{seed}",
                    )
                )
    return runs


def missing_experiments(runs: Sequence[Run]) -> list[str]:
    """The ``experiment=`` configs the runs name that do not exist in conf/experiment/."""
    names = {o.split("=", 1)[1] for r in runs for o in r.overrides if o.startswith(("experiment=", "+experiment="))}
    return sorted(n for n in names if not (CONF / "experiment" / f"{n}.yaml").is_file())


def compose_run(run: Run) -> DictConfig:
    """The run's config, composed as ``uplab-train <overrides>`` would, with its directory set."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    if not GlobalHydra.instance().is_initialized():
        initialize_config_dir(config_dir=str(CONF), version_base="1.3", job_name="reproduce_table")
    cfg = compose("train", overrides=[*run.overrides, f"hydra.run.dir={run.run_dir}"], return_hydra_config=True)
    cfg.hydra.runtime.output_dir = str(run.run_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def is_done(run: Run) -> bool:
    """Whether the run is complete and was made by the same overrides (a run of an older version
    of the table's config is redone)."""
    if not rec.is_complete(run.run_dir):
        return False
    key = run.run_dir / rec.RUN_FILE
    if not key.is_file():
        return True
    return json.loads(key.read_text()).get("overrides") == list(run.overrides)


def train_run(run: Run) -> str:
    """Train one run in this process; returns ``finished`` or ``failed`` (the error goes to
    ``failed.json``). ``KeyboardInterrupt`` propagates: the grid stops and resumes later."""
    from uplab.train import train

    run.run_dir.mkdir(parents=True, exist_ok=True)
    rec.clear_failure(run.run_dir)
    rec.write_run_key(
        run.run_dir,
        {"table": run.table, "task": run.task, "row": run.row, "seed": run.seed, "overrides": list(run.overrides)},
    )
    try:
        cfg = compose_run(run)
        (run.run_dir / ".hydra").mkdir(exist_ok=True)
        OmegaConf.save(cfg, run.run_dir / ".hydra" / "config.yaml")
        train(cfg)
    except Exception as err:  # noqa: BLE001  a failed run is a table cell, not the end of the grid
        rec.write_failure(run.run_dir, err, traceback.format_exc())
        log.debug("run %s failed", run.label, exc_info=True)
        return "failed"
    return "finished" if rec.is_complete(run.run_dir) else "failed"


def quiet_training_logs() -> None:
    """One progress bar over the grid instead of Lightning's chatter for every run."""
    import pytorch_lightning  # noqa: F401  its import sets its loggers to INFO: quiet them after

    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric", "uplab.train"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="pytorch_lightning")
    warnings.filterwarnings("ignore", module="lightning_fabric")
    warnings.filterwarnings("ignore", category=UserWarning, message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", category=UserWarning, message="boxes doesn't contain any box")


def run_local(runs: Sequence[Run], progress: bool = True) -> dict[str, int]:
    """Train the runs that are not complete, one after another, with a progress bar; returns
    counts of ``skipped``, ``finished`` and ``failed``."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    quiet_training_logs()
    counts = {"skipped": 0, "finished": 0, "failed": 0}
    todo = [r for r in runs if not is_done(r)]
    counts["skipped"] = len(runs) - len(todo)
    console = Console(stderr=True)
    if counts["skipped"]:
        console.print(f"resuming: {counts['skipped']} of {len(runs)} runs are complete and skipped")
    columns = (
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("failed: {task.fields[failed]}"), TimeElapsedColumn(), TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, disable=not progress) as bar:
        grid = bar.add_task("grid", total=len(todo), failed=0)
        for run in todo:
            bar.update(grid, description=run.label)
            status = train_run(run)
            counts[status] += 1
            if status == "failed":
                console.print(f"[red]failed[/red] {run.label}: {rec.record_row(run.run_dir)['error']}")
            bar.update(grid, advance=1, failed=counts["failed"])
    return counts


def slurm_commands(runs: Sequence[Run], launcher: str) -> list[list[str]]:
    """One ``uplab-train -m`` per (task, row) over its incomplete seeds, each run in its own
    deterministic directory, spread by ``hydra/launcher=<launcher>``."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        if not is_done(run):
            groups.setdefault((run.task, run.row), []).append(run)
    commands = []
    for group in groups.values():
        first = group[0]
        seeds = ",".join(str(r.seed) for r in group)
        shared = [o for o in first.overrides if not o.startswith("seed=")]
        commands.append(
            [
                str(Path(sys.executable).with_name("uplab-train")), "-m", *shared, f"seed={seeds}",
                "resume=true", f"hydra/launcher={launcher}",
                f"hydra.sweep.dir={first.run_dir.parent}", "hydra.sweep.subdir=seed${seed}",
            ]
        )
        for run in group:
            run.run_dir.mkdir(parents=True, exist_ok=True)
            rec.write_run_key(
                run.run_dir,
                {"table": run.table, "task": run.task, "row": run.row, "seed": run.seed, "overrides": list(run.overrides)},
            )
    return commands


def run_slurm(runs: Sequence[Run], launcher: str) -> dict[str, int]:
    """Submit the incomplete runs through Hydra's SLURM launcher and wait for them."""
    commands = slurm_commands(runs, launcher)
    failed = 0
    for command in commands:
        log.info("%s", shlex.join(command))
        failed += subprocess.run(command, cwd=ROOT, check=False).returncode != 0
    return {"skipped": sum(1 for r in runs if is_done(r)), "submitted": len(commands), "failed_commands": failed}


def task_tables(spec: DictConfig, records, which: str | None = None) -> dict[str, object]:
    """The summary of each task (:func:`uplab.analysis.tables.summarize`)."""
    which = which or spec.get("which", "final")
    out = {}
    for task, task_spec in spec.tasks.items():
        task_records = records[records["task"] == task] if len(records) else records
        out[str(task)] = tables.summarize(
            task_records, list(task_spec.metrics), list(row_overrides(task_spec.rows)),
            str(task_spec.baseline), which=which, scale=dict(task_spec.get("scale", {})),
        )
    return out


def render_table(spec: DictConfig, records, fmt: str) -> str:
    """All tasks of a toy table in one document (Markdown sections, one CSV, LaTeX tables)."""
    import pandas as pd

    summaries = task_tables(spec, records)
    if fmt == "csv":
        frames = [s.reset_index().assign(task=t) for t, s in summaries.items()]
        return pd.concat(frames, ignore_index=True).to_csv(index=False)
    parts = []
    if fmt == "markdown":
        seeds = ", ".join(str(s) for s in spec.seeds)
        parts.append(f"{spec.get('description', '').strip()} Seeds: {seeds}. Best mean per column in bold; "
                     "params and FLOPs: the baseline's, then increments over it (FLOPs: multiply-accumulates "
                     "of one validation image).")
    for task, summary in summaries.items():
        metrics = list(spec.tasks[task].metrics)
        body = tables.render(summary, metrics, fmt)
        parts.append(f"### {task}\n\n{body}" if fmt == "markdown" else f"% {task}\n{body}")
    return "\n\n".join(parts) + "\n"


def render_paper_table(spec: DictConfig, records, fmt: str) -> str:
    """A paper table in its published layout, published numbers beside ours."""
    import pandas as pd

    from uplab.analysis.cost import load_paper_results

    published, _ = load_paper_results()
    final, best = task_tables(spec, records, "final"), task_tables(spec, records, "best")
    parts, frames = [], []
    for task, task_spec in spec.tasks.items():
        frame = tables.paper_comparison(
            final[task], best[task], published, str(spec.model), list(task_spec.metrics),
            sources=list(spec.sources) if "sources" in spec else None,
            published_names=dict(task_spec.get("published", {})),
        )
        frames.append(frame.assign(task=task))
        parts.append(tables.render_comparison(frame, fmt))
    if fmt == "csv":
        return pd.concat(frames, ignore_index=True).to_csv(index=False)
    if fmt == "markdown":
        import yaml

        from uplab.analysis.cost import PAPER_RESULTS

        sources = yaml.safe_load(PAPER_RESULTS.read_text())["sources"]
        parts.insert(0, f"{spec.get('description', '').strip()} Ours: mean over seeds of the final and of the "
                        "best evaluation; Δ = best − paper (the released logs report the best evaluation).")
        parts.append("Sources: " + "; ".join(f"{k}: [{v['title']}]({v['url']})" for k, v in sources.items()))
    return "\n\n".join(parts) + "\n"


def write_outputs(spec: DictConfig, records, out_dir: Path) -> list[Path]:
    """results/tables/<table>.{md,csv,tex}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    render = render_paper_table if "model" in spec else render_table
    written = []
    for fmt, suffix in (("markdown", "md"), ("csv", "csv"), ("latex", "tex")):
        path = out_dir / f"{spec.name}.{suffix}"
        path.write_text(render(spec, records, fmt))
        written.append(path)
    return written


COST_INPUTS = (
    "src/uplab", "conf/train.yaml", "conf/task", "conf/experiment/paper", "conf/upsampler",
    "conf/backbone", "conf/decoder", "reference/paper_results.yaml",
)  # the rows' models are built from their composed configs


def cost_inputs_digest() -> str:
    """A digest of everything the cost table depends on (model and operator code, configs, the
    published numbers), so an unchanged cost table is not counted again."""
    import hashlib

    digest = hashlib.sha256()
    for entry in COST_INPUTS:
        path = ROOT / entry
        files = sorted(path.rglob("*.py")) + sorted(path.rglob("*.yaml")) if path.is_dir() else [path]
        for file in files:
            digest.update(str(file.relative_to(ROOT)).encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def write_cost_table(out_dir: Path, force: bool = False) -> Path:
    """results/tables/cost.md: ``uplab-cost`` (the papers' models, ours beside the published);
    kept as it is when its inputs have not changed since it was written (``force`` recounts)."""
    from uplab.analysis.cost import cost_table, render

    path, stamp = out_dir / "cost.md", out_dir / "cost.inputs"
    digest = cost_inputs_digest()
    if not force and path.is_file() and stamp.is_file() and stamp.read_text().strip() == digest:
        return path
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    path.write_text(render(cost_table(progress=True)) + "\n")
    stamp.write_text(digest + "\n")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    (out_dir / "cost.timing.md").write_text(
        f"Counting the cost table (`make cost`, or the last step of `make reproduce-table` when its "
        f"inputs changed): {(time.perf_counter() - start) / 60:.1f} min on {machine()}, load average "
        f"{load:.1f} at the end.\n"
    )
    return path


def machine() -> str:
    """The CPU model and the number of cores this process may use."""
    import platform

    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        model = names[0] if names else model
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cores} CPU cores ({model})"


def write_timing(path: Path, table: str, counts: dict[str, int], seconds: float) -> Path:
    """``results/tables/<table>.timing.md``: how long the whole command took (grid, tables,
    figures, cost table), on what machine."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    path.write_text(
        f"`make reproduce-table TABLE={table}`: {counts.get('finished', 0)} runs trained, "
        f"{counts.get('skipped', 0)} skipped as complete, {counts.get('failed', 0)} failed, in "
        f"{seconds / 60:.1f} min on {machine()}, load average {load:.1f} at the end.\n"
    )
    return path


def write_figures(spec: DictConfig, records, out_dir: Path) -> list[Path]:
    """results/figures/: accuracy against added FLOPs per task and the qualitative grid."""
    from uplab.analysis import figures

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for task, summary in task_tables(spec, records).items():
        metric = str(spec.tasks[task].metrics[0])
        fig = figures.accuracy_cost(summary, metric, title=f"{spec.name} · {task}")
        path = out_dir / f"{spec.name}_{task}_accuracy_cost.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        written.append(path)
    first_seed = records[records["seed"] == min(spec.seeds)] if len(records) else records
    fig = figures.qualitative_grid(first_seed, {t: list(row_overrides(s.rows)) for t, s in spec.tasks.items()})
    if fig is not None:
        path = out_dir / f"{spec.name}_qualitative.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        written.append(path)
    return written


def replace_between(text: str, name: str, body: str) -> str:
    """``text`` with the part between ``<!-- name:begin -->`` and ``<!-- name:end -->`` replaced
    (appended at the end when the markers are absent)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        return head + block + rest.split(end, 1)[1]
    return text.rstrip("\n") + "\n\n" + block + "\n"


def update_readme(readme: Path, toy_md: Path, cost_md: Path, timing: str, cost_timing: str = "") -> None:
    """Put the generated toy and cost tables between their README markers."""
    regen = "Regenerate with `python scripts/reproduce_table.py --render-only --readme` (after `make reproduce-table`)."
    text = readme.read_text() if readme.is_file() else ""
    text = replace_between(text, "toy-table", f"{toy_md.read_text()}\n{timing}\n\n{regen}")
    text = replace_between(text, "cost-table", f"{cost_md.read_text()}\n{cost_timing}\n\n{regen}")
    readme.write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", default="toy", help=f"one of {', '.join(available_tables())}")
    parser.add_argument("--tasks", help="comma-separated subset of the table's tasks")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "outputs" / "tables", help="where runs live")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "results", help="tables/ and figures/ go here")
    parser.add_argument("--launcher", choices=("local", "slurm"), default="local",
                        help="local: in this process; slurm: uplab-train -m with hydra/launcher=submitit_slurm")
    parser.add_argument("--render-only", action="store_true", help="write the table from existing runs")
    parser.add_argument("--no-cost", action="store_true", help="skip results/tables/cost.md")
    parser.add_argument("--recount-cost", action="store_true", help="recount the cost table even if its inputs are unchanged")
    parser.add_argument("--no-figures", action="store_true", help="skip results/figures/")
    parser.add_argument("--readme", action="store_true", help="put the toy and cost tables into README.md")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if args.readme and args.table != "toy":
        parser.error("--readme puts the toy table into README.md: use it with --table toy")
    try:
        spec = load_table(args.table)
        runs = plan_runs(spec, args.runs_dir, args.tasks.split(",") if args.tasks else None)
    except ValueError as err:
        parser.error(str(err))
    missing = missing_experiments(runs)
    if missing and not args.render_only:
        parser.error(
            f"table {spec.name} needs experiment configs that do not exist yet: "
            + ", ".join(f"conf/experiment/{m}.yaml" for m in missing)
        )
    start = time.perf_counter()
    tables_dir = args.results_dir / "tables"
    tables_dir.mkdir(parents=True, exist_ok=True)
    if not args.render_only:
        counts = run_local(runs, not args.no_progress) if args.launcher == "local" else run_slurm(runs, "submitit_slurm")
        log.info("grid: %s in %.0f s", counts, time.perf_counter() - start)
    table_runs = args.runs_dir / spec.name
    records = rec.load_records(table_runs) if table_runs.exists() else rec.load_records([])
    for path in write_outputs(spec, records, tables_dir):
        log.info("wrote %s", path)
    if not args.no_figures and "model" not in spec and len(records):
        for path in write_figures(spec, records, args.results_dir / "figures"):
            log.info("wrote %s", path)
    if not args.no_cost:
        log.info("cost table: %s", write_cost_table(tables_dir, force=args.recount_cost))
    log.info("total %.0f s", time.perf_counter() - start)
    if not args.render_only and args.launcher == "local" and counts["skipped"] < len(runs):
        write_timing(tables_dir / f"{spec.name}.timing.md", spec.name, counts, time.perf_counter() - start)
    if args.readme:
        timing_files = [tables_dir / f"{name}.timing.md" for name in (spec.name, "quick")]
        timing = "\n\n".join(f.read_text().strip() for f in timing_files if f.is_file())
        cost_timing_file = tables_dir / "cost.timing.md"
        cost_timing = cost_timing_file.read_text().strip() if cost_timing_file.is_file() else ""
        update_readme(README, tables_dir / f"{spec.name}.md", tables_dir / "cost.md", timing, cost_timing)
        log.info("updated %s", README)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
