"""Reproduce a results table: run its grid of training runs, then write the table.

``make reproduce-table`` (``TABLE=toy``, the default) trains the toy grid (conf/table/toy.yaml:
the four toy tasks x the papers' upsampler rows x seeds) in this process, one Hydra-composed run
after another under a progress bar over the whole grid, and writes the table
(``<table>.{md,csv,tex}``), its timing, the cost table and the figures under the git-ignored
``outputs/results/{tables,figures}/``. The committed copies in ``results/`` change only through
``make publish-tables`` (``--publish``). ``TABLE=quick`` is a three-minute subset;
``TABLE=paper-*`` are the real-data grids of the papers' experiment configs, rendered beside the
published numbers.

Each run lives in ``<runs-dir>/<table>/<task>/<row>/seed<seed>``. A re-run skips every run whose
``results.json`` is complete and whose overrides (``run.json``) match the table's, and redoes the
others (an interrupted grid resumes; a changed schedule reruns). A run that raises is recorded in
``failed.json``; every run that did not finish is printed with its root cause in one line, shown
as such in the table, and makes the command exit with status 1. With no finished run at all, no
table is written.

``--launcher submitit-local`` and ``--launcher slurm`` run the grid as submitit jobs (one per
run, each in its own process; ``slurm`` submits them to the cluster and waits). A job that is
preempted or about to time out (submitit's signal) checkpoints and is requeued with
``resume=true``, so it continues from the run's ``last.ckpt``.

Examples::

    python scripts/reproduce_table.py --table toy
    python scripts/reproduce_table.py --table quick --publish          # copy outputs/results -> results/
    python scripts/reproduce_table.py --table paper-segformer --launcher slurm --slurm-partition gpu
    python scripts/reproduce_table.py --table toy --render-only     # tables from existing runs
    python scripts/reproduce_table.py --table toy --all-rows        # with the rows beyond the papers' defaults
"""

from __future__ import annotations

import argparse
import json
import logging
import os
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
# what `make reproduce-table` writes (git-ignored) and what `make publish-tables` commits
OUTPUT_RESULTS = ROOT / "outputs" / "results"
PUBLISHED_RESULTS = ROOT / "results"
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
    """A task's rows as ``name -> overrides``: a mapping as it is; in a list, a name means
    ``upsampler=<name>`` and a one-key mapping ``{name: [overrides]}`` is a row of its own (a
    control row beside the upsampler rows)."""
    if isinstance(rows, DictConfig):
        return {str(k): [str(o) for o in v] for k, v in rows.items()}
    out: dict[str, list[str]] = {}
    for item in rows:
        if isinstance(item, DictConfig):
            out.update({str(k): [str(o) for o in v] for k, v in item.items()})
        else:
            out[str(item)] = [f"upsampler={item}"]
    return out


def with_extra_rows(spec: DictConfig) -> DictConfig:
    """The table with each task's ``extra_rows`` appended to its ``rows`` (``--all-rows``): the
    rows left out of the default grid to keep it within its time budget."""
    spec = spec.copy()
    for task_spec in spec.tasks.values():
        extra = task_spec.get("extra_rows")
        if extra:
            task_spec.rows = ListConfig([*task_spec.rows, *extra])
    return spec


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


def compose_run(run: Run, resume: bool = False) -> DictConfig:
    """The run's config, composed as ``uplab-train <overrides>`` would, with its directory set
    (and ``resume=true`` for a requeued job: continue from the run's ``last.ckpt``)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    if not GlobalHydra.instance().is_initialized():
        initialize_config_dir(config_dir=str(CONF), version_base="1.3", job_name="reproduce_table")
    extra = ["resume=true"] if resume else []
    cfg = compose("train", overrides=[*run.overrides, *extra, f"hydra.run.dir={run.run_dir}"], return_hydra_config=True)
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


def train_run(run: Run, resume: bool = False) -> str:
    """Train one run in this process; returns its status: ``finished``, ``failed`` (the error
    goes to ``failed.json``) or what its record says instead (``diverged``, ``not_evaluated``).
    ``KeyboardInterrupt`` propagates: the grid stops and resumes later."""
    from uplab.train import train

    run.run_dir.mkdir(parents=True, exist_ok=True)
    rec.clear_failure(run.run_dir)
    rec.write_run_key(
        run.run_dir,
        {"table": run.table, "task": run.task, "row": run.row, "seed": run.seed, "overrides": list(run.overrides)},
    )
    try:
        cfg = compose_run(run, resume)
        (run.run_dir / ".hydra").mkdir(exist_ok=True)
        OmegaConf.save(cfg, run.run_dir / ".hydra" / "config.yaml")
        train(cfg)
    except Exception as err:  # noqa: BLE001  a failed run is a table cell, not the end of the grid
        rec.write_failure(run.run_dir, err, traceback.format_exc())
        log.debug("run %s failed", run.label, exc_info=True)
        return "failed"
    return rec.record_row(run.run_dir)["status"]


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
    counts of ``skipped``, ``finished``, ``failed`` and of any other status a run ended with."""
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
        TextColumn("not finished: {task.fields[failed]}"), TimeElapsedColumn(), TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, disable=not progress) as bar:
        grid = bar.add_task("grid", total=len(todo), failed=0)
        for run in todo:
            bar.update(grid, description=run.label)
            status = train_run(run)
            counts[status] = counts.get(status, 0) + 1
            if status != "finished":
                console.print(f"[red]{status}[/red] {run.label}: {rec.record_row(run.run_dir)['error']}", soft_wrap=True)
            bar.update(grid, advance=1, failed=sum(n for k, n in counts.items() if k not in ("skipped", "finished")))
    return counts


class TableJob:
    """One run of the grid as a submitit job: trains it in the job's process (:func:`train_run`)
    and, when submitit's preemption or timeout signal arrives, requeues itself with
    ``resume=true`` (submitit calls :meth:`checkpoint`; the requeued job continues from the
    run's ``last.ckpt``, or starts over where the table's schedule keeps no checkpoint)."""

    def __init__(self, run: Run, resume: bool = False) -> None:
        self.run, self.resume = run, resume

    def __call__(self) -> str:
        quiet_training_logs()
        return train_run(self.run, self.resume)

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(TableJob(self.run, resume=True))


def submitit_executor(launcher: str, folder: Path, run: Run, partition: str | None = None, timeout_min: int = 720):
    """A submitit executor for the grid's jobs: ``submitit-local`` (a process per job on this
    machine, with the same pickling, job folders, signals and requeue as SLURM) or ``slurm``.
    Devices per job come from the run's trainer config."""
    import submitit

    trainer = compose_run(run).trainer
    gpu = str(trainer.get("accelerator", "cpu")) in ("gpu", "cuda")
    devices = int(trainer.get("devices", 1)) if gpu and str(trainer.get("devices", 1)).isdigit() else 1
    executor = submitit.AutoExecutor(folder=folder, cluster="local" if launcher == "submitit-local" else "slurm")
    executor.update_parameters(
        name="uplab-table", timeout_min=timeout_min, nodes=int(trainer.get("num_nodes", 1)),
        tasks_per_node=devices, gpus_per_node=devices if gpu else 0, cpus_per_task=8 if gpu else 2,
        slurm_partition=partition, slurm_signal_delay_s=120,
    )
    return executor


def run_submitit(
    runs: Sequence[Run], launcher: str, folder: Path, partition: str | None = None, timeout_min: int = 720
) -> dict[str, int]:
    """Submit the runs that are not complete as submitit jobs (one per run) and wait for them;
    returns counts of ``skipped``, ``finished`` and ``failed``."""
    import cloudpickle

    # the job class lives in this script, which a job's process cannot import: send it by value
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    todo = [r for r in runs if not is_done(r)]
    counts = {"skipped": len(runs) - len(todo), "finished": 0, "failed": 0}
    if not todo:
        return counts
    executor = submitit_executor(launcher, folder, todo[0], partition, timeout_min)
    if launcher == "slurm":
        with executor.batch():  # one job array; SLURM spreads it
            jobs = [(run, executor.submit(TableJob(run))) for run in todo]
        log.info("submitted %d jobs, job folders under %s", len(jobs), folder)
        pending = iter(jobs)
    else:  # this machine's cores are shared by all jobs: one at a time, as the local launcher
        pending = ((run, executor.submit(TableJob(run))) for run in todo)
    for run, job in pending:
        try:
            status = job.result()
        except Exception as err:  # noqa: BLE001  the job died outside train_run (killed, node lost)
            rec.write_failure(run.run_dir, err, f"submitit job {job.job_id}, logs in {folder}: {err}")
            status = "failed"
        counts[status] = counts.get(status, 0) + 1
        log.info("%s: %s (job %s)", run.label, status, job.job_id)
    return counts


def convergence_flags(spec: DictConfig, records):
    """The records with a ``converged`` column: whether each finished run's monitored validation
    metric levelled off by the table's ``convergence`` criterion
    (:func:`uplab.analysis.statistics.run_levelled_off`); the records as they are when the table
    states no criterion."""
    from uplab.analysis.statistics import run_levelled_off

    criterion = spec.get("convergence")
    if criterion is None or not len(records):
        return records
    tail, tolerance = float(criterion.tail), float(criterion.tolerance)
    return records.assign(
        converged=[
            run_levelled_off(d, tail, tolerance) if status == "finished" else None
            for d, status in zip(records["run_dir"], records["status"], strict=True)
        ]
    )


def task_tables(spec: DictConfig, records, which: str | None = None) -> dict[str, object]:
    """The summary of each task (:func:`uplab.analysis.tables.summarize`)."""
    which = which or spec.get("which", "final")
    records = convergence_flags(spec, records)
    out = {}
    for task, task_spec in spec.tasks.items():
        task_records = records[records["task"] == task] if len(records) else records
        out[str(task)] = tables.summarize(
            task_records, list(task_spec.metrics), list(row_overrides(task_spec.rows)),
            str(task_spec.baseline), which=which, scale=dict(task_spec.get("scale", {})),
        )
    return out


def statistics_note(spec: DictConfig) -> str:
    """How to read the toy table's Δ cells, bold marks and converged counts."""
    text = (
        "Δ: mean difference to the baseline row over the seeds both finished (runs of one seed are "
        "paired), with its 95% Student-t interval; ▲ better, ▼ worse where the interval excludes zero "
        "(with the metric's direction), unmarked otherwise; n= where fewer seeds paired. A best mean is "
        "bold only when it is significantly better than the runner-up's (the same paired interval)."
    )
    criterion = spec.get("convergence")
    if criterion is not None:
        text += (
            f" converged: runs whose monitored validation metric levelled off (the best value of the last "
            f"{float(criterion.tail):.0%} of the evaluations improves on the best before them by at most "
            f"{float(criterion.tolerance):.0%} of the run's whole improvement)."
        )
    return text


def render_claims(spec: DictConfig, summaries, fmt: str) -> str:
    """The papers' claims (``claims`` in the table's config) with their verdicts from the intervals."""
    frame = tables.check_claims(OmegaConf.to_container(spec.claims, resolve=True), summaries)
    body = tables.render_claims(frame, fmt)
    if fmt == "csv":
        return body
    intro = (
        "Each claim of the SAPA and FADE papers that the toy suite can test (and the control: the toy "
        "tasks reward upsampling), checked against the Δ intervals above: supported when every check's interval excludes zero in the claimed "
        "direction, not supported when one excludes zero the other way, inconclusive otherwise (an "
        "interval that includes zero cannot show that an effect is absent)."
    )
    if fmt == "markdown":
        return f"### The papers' claims\n\n{intro}\n\n{body}"
    return f"% the papers' claims\n{body}"


def render_table(spec: DictConfig, records, fmt: str) -> str:
    """All tasks of a toy table in one document (Markdown sections, one CSV, LaTeX tables), and
    the papers' claims checked (Markdown and LaTeX) where the table lists them."""
    import pandas as pd

    summaries = task_tables(spec, records)
    if fmt == "csv":
        frames = [s.reset_index().assign(task=t) for t, s in summaries.items()]
        return pd.concat(frames, ignore_index=True).to_csv(index=False)
    parts = []
    if fmt == "markdown":
        seeds = ", ".join(str(s) for s in spec.seeds)
        parts.append(f"{spec.get('description', '').strip()} Seeds: {seeds}. {statistics_note(spec)} "
                     "Params and FLOPs: the baseline's, then increments over it (FLOPs: multiply-accumulates "
                     "of one validation image).")
    for task, summary in summaries.items():
        metrics = list(spec.tasks[task].metrics)
        body = tables.render(summary, metrics, fmt)
        parts.append(f"### {task}\n\n{body}" if fmt == "markdown" else f"% {task}\n{body}")
    if spec.get("claims"):
        parts.append(render_claims(spec, summaries, fmt))
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
        if "recipe" in spec:
            from uplab import recipes

            recipe = recipes.load_recipe(recipes.recipes_dir() / f"{spec.recipe}.yaml")
            parts.append("Deviations from the released recipe:\n\n" + recipes.deviations_markdown([recipe]).strip())
    return "\n\n".join(parts) + "\n"


def write_outputs(spec: DictConfig, records, out_dir: Path) -> list[Path]:
    """``<out_dir>/<table>.{md,csv,tex}``, and ``<table>.claims.csv`` where the table lists the
    papers' claims."""
    out_dir.mkdir(parents=True, exist_ok=True)
    render = render_paper_table if "model" in spec else render_table
    written = []
    for fmt, suffix in (("markdown", "md"), ("csv", "csv"), ("latex", "tex")):
        path = out_dir / f"{spec.name}.{suffix}"
        path.write_text(render(spec, records, fmt))
        written.append(path)
    if "model" not in spec and spec.get("claims"):
        path = out_dir / f"{spec.name}.claims.csv"
        path.write_text(render_claims(spec, task_tables(spec, records), "csv"))
        written.append(path)
    return written


# What the cost table is counted from (uplab-cost counts on the CPU, so the CUDA path is left
# out): the counting code, the code that builds a row's model from its composed config, the
# configs themselves and the published numbers. Git pathspecs, relative to the repository root.
COST_INPUTS = (
    "src/uplab/analysis/cost.py",
    "src/uplab/analysis/flops.py",
    "src/uplab/models",
    "src/uplab/upsamplers",
    "src/uplab/ops",
    ":(exclude)src/uplab/ops/cuda",
    "src/uplab/tasks",
    "conf/train.yaml",
    "conf/task",
    "conf/experiment/paper",
    "conf/upsampler",
    "conf/backbone",
    "conf/decoder",
    "reference/paper_results.yaml",
)
COST_FILES = ("cost.md", "cost.inputs", "cost.timing.md")


def cost_input_files(root: Path = ROOT) -> list[str]:
    """The tracked files of :data:`COST_INPUTS` (``git ls-files``), as paths relative to
    ``root``; outside a git checkout (an unpacked archive), the ``.py`` and ``.yaml`` files
    under the same paths."""

    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--", *COST_INPUTS], cwd=root, capture_output=True, check=True
        ).stdout.decode()
        return sorted(f for f in listed.split("\0") if f)
    except (OSError, subprocess.CalledProcessError):
        files = []
        excluded = tuple(e.split(")", 1)[1] for e in COST_INPUTS if e.startswith(":(exclude)"))
        for entry in (e for e in COST_INPUTS if not e.startswith(":")):
            path = root / entry
            found = [f for ext in ("py", "yaml") for f in path.rglob(f"*.{ext}")] if path.is_dir() else [path]
            files += [f.relative_to(root).as_posix() for f in found]
        return sorted(f for f in set(files) if not any(f == e or f.startswith(f"{e}/") for e in excluded))


def cost_inputs_digest(root: Path = ROOT) -> str:
    """A digest of the tracked content the cost table is counted from (:data:`COST_INPUTS`):
    relative paths and file contents with line endings normalised, so every clone of a commit
    (any location, any ``core.autocrlf``, untracked files or not) gets the same digest and an
    unchanged cost table is not counted again."""
    import hashlib

    digest = hashlib.sha256()
    for name in cost_input_files(root):
        digest.update(name.encode() + b"\0")
        digest.update((root / name).read_bytes().replace(b"\r\n", b"\n") + b"\0")
    return digest.hexdigest()[:16]


def cost_table_is_current(directory: Path, digest: str) -> bool:
    """Whether ``directory`` holds a cost table counted from inputs with this digest."""
    stamp = directory / "cost.inputs"
    return (directory / "cost.md").is_file() and stamp.is_file() and stamp.read_text().strip() == digest


def write_cost_table(out_dir: Path, published_dir: Path = PUBLISHED_RESULTS / "tables", force: bool = False) -> Path:
    """The cost table (``uplab-cost``: the papers' models, ours beside the published): the
    committed ``results/tables/cost.md`` when its inputs are unchanged, else the one in
    ``out_dir`` when that is current, else counted again into ``out_dir`` (``force`` always
    counts)."""
    from uplab.analysis.cost import cost_table, render

    digest = cost_inputs_digest()
    for directory in (published_dir, out_dir):
        if not force and cost_table_is_current(directory, digest):
            return directory / "cost.md"
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    path = out_dir / "cost.md"
    path.write_text(render(cost_table(progress=True)) + "\n")
    (out_dir / "cost.inputs").write_text(digest + "\n")
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


def write_timing(path: Path, table: str, counts: dict[str, int], seconds: float, launcher: str = "local") -> Path:
    """``<tables dir>/<table>.timing.md``: how long the whole command took (grid, tables,
    figures, cost table), on what machine."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    path.write_text(
        f"`make reproduce-table TABLE={table}{'' if launcher == 'local' else f' LAUNCHER={launcher}'}`: "
        f"{counts.get('finished', 0)} runs trained, "
        f"{counts.get('skipped', 0)} skipped as complete, "
        f"{sum(n for k, n in counts.items() if k not in ('skipped', 'finished'))} not finished, in "
        f"{seconds / 60:.1f} min on {machine()}, load average {load:.1f} at the end.\n"
    )
    return path


def write_figures(spec: DictConfig, records, out_dir: Path) -> list[Path]:
    """``<out_dir>/<table>_*.png``: accuracy against added FLOPs per task and the qualitative grid."""
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


def unfinished_runs(runs: Sequence[Run]) -> list[tuple[Run, str, str]]:
    """``(run, status, reason)`` of every run of the grid that did not finish (failed, diverged,
    not evaluated, interrupted, never started), the reason in one line."""
    out = []
    for run in runs:
        row = rec.record_row(run.run_dir) if run.run_dir.exists() else {"status": "unfinished", "error": None}
        if row["status"] != "finished":
            out.append((run, row["status"], row["error"] or ("no results.json" if row["status"] == "unfinished" else "")))
    return out


def replace_between(text: str, name: str, body: str) -> str | None:
    """``text`` with the part between ``<!-- name:begin -->`` and ``<!-- name:end -->`` replaced,
    or None when the markers are absent."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if begin not in text or end not in text:
        return None
    head, rest = text.split(begin, 1)
    return head + f"{begin}\n{body.strip()}\n{end}" + rest.split(end, 1)[1]


def update_readme(readme: Path, blocks: dict[str, str]) -> list[str]:
    """Replace the README's generated blocks (``<!-- <name>:begin/end -->``) that it still has;
    returns the names replaced. A README without markers is left as it is."""
    if not readme.is_file():
        return []
    text, replaced = readme.read_text(), []
    for name, body in blocks.items():
        new = replace_between(text, name, body)
        if new is not None:
            text, replaced = new, [*replaced, name]
    if replaced:
        readme.write_text(text)
    return replaced


def publish(
    table: str, out_dir: Path = OUTPUT_RESULTS, published: Path = PUBLISHED_RESULTS, readme: Path | None = README
) -> list[Path]:
    """``make publish-tables``: copy a table's files (``<table>.{md,csv,tex,timing.md}``, its
    figures) and a current cost table from ``out_dir`` (what ``make reproduce-table`` wrote) to
    the committed ``published`` directory, and refresh the README's generated blocks
    (``<table>-table``, ``cost-table``) where the README still has their markers."""
    import shutil

    source = out_dir / "tables" / f"{table}.md"
    if not source.is_file():
        raise ValueError(
            f"nothing to publish for table {table!r}: expected {source}; run `make reproduce-table TABLE={table}` first"
        )
    files = [out_dir / "tables" / f"{table}.{s}" for s in ("md", "csv", "claims.csv", "tex", "timing.md")]
    files += sorted((out_dir / "figures").glob(f"{table}_*.png"))
    if cost_table_is_current(out_dir / "tables", cost_inputs_digest()):
        files += [out_dir / "tables" / name for name in COST_FILES]
    written = []
    for file in (f for f in files if f.is_file()):
        target = published / file.relative_to(out_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, target)
        written.append(target)
    if readme is not None:
        tables_dir = published / "tables"
        regen = f"Regenerate with `make reproduce-table TABLE={table}`, then `make publish-tables TABLE={table}`."

        def text(*names: str) -> str:
            return "\n\n".join((tables_dir / n).read_text().strip() for n in names if (tables_dir / n).is_file())

        cost_regen = ("Counted again by `make reproduce-table` when its inputs change; "
                      "`make publish-tables` copies it here.")
        blocks = {
            f"{table}-table": f"{text(f'{table}.md', f'{table}.timing.md')}\n\n{regen}",
            "cost-table": f"{text('cost.md', 'cost.timing.md')}\n\n{cost_regen}",
        }
        if update_readme(readme, blocks):
            written.append(readme)
    return written


def report_unfinished(unfinished: Sequence[tuple[Run, str, str]]) -> None:
    """One line per run that did not finish, with its root cause, on standard error."""
    for run, status, reason in unfinished:
        print(f"{status}: {run.label}: {reason} ({run.run_dir})", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", default="toy", help=f"one of {', '.join(available_tables())}")
    parser.add_argument("--tasks", help="comma-separated subset of the table's tasks")
    parser.add_argument("--all-rows", action="store_true",
                        help="add each task's extra_rows (left out of the default grid for time) to its rows")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "outputs" / "tables", help="where runs live")
    parser.add_argument("--results-dir", type=Path, default=OUTPUT_RESULTS,
                        help="tables/ and figures/ go here (default outputs/results; --publish copies them to results/)")
    parser.add_argument("--launcher", choices=("local", "submitit-local", "slurm"), default="local",
                        help="local: in this process; submitit-local: a submitit job per run on this machine; "
                             "slurm: a submitit job per run on the cluster")
    parser.add_argument("--slurm-partition", help="the SLURM partition of --launcher slurm")
    parser.add_argument("--timeout-min", type=int, default=720, help="a submitit job's time limit (minutes)")
    parser.add_argument("--render-only", action="store_true", help="write the table from existing runs")
    parser.add_argument("--publish", action="store_true",
                        help="copy the table, its figures and the cost table from --results-dir to results/, "
                             "and refresh the README's generated blocks if it has their markers")
    parser.add_argument("--no-cost", action="store_true", help="skip the cost table")
    parser.add_argument("--recount-cost", action="store_true", help="recount the cost table even if its inputs are unchanged")
    parser.add_argument("--no-figures", action="store_true", help="skip the figures")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Returns 0 when every run of the table finished, else 1 (each unfinished run printed)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    try:
        spec = load_table(args.table)
        if args.all_rows:
            spec = with_extra_rows(spec)
        runs = plan_runs(spec, args.runs_dir, args.tasks.split(",") if args.tasks else None)
    except ValueError as err:
        parser.error(str(err))
    if args.publish:
        try:
            for path in publish(str(spec.name), args.results_dir):
                log.info("published %s", path)
        except ValueError as err:
            parser.error(str(err))
        return 0
    missing = missing_experiments(runs)
    if missing and not args.render_only:
        parser.error(
            f"table {spec.name} needs experiment configs that do not exist yet: "
            + ", ".join(f"conf/experiment/{m}.yaml" for m in missing)
        )
    start = time.perf_counter()
    tables_dir = args.results_dir / "tables"
    if not args.render_only:
        if args.launcher == "local":
            counts = run_local(runs, not args.no_progress)
        else:
            folder = args.runs_dir / spec.name / ".submitit"
            counts = run_submitit(runs, args.launcher, folder, args.slurm_partition, args.timeout_min)
        log.info("grid: %s in %.0f s", counts, time.perf_counter() - start)
    table_runs = args.runs_dir / spec.name
    records = rec.load_records(table_runs) if table_runs.exists() else rec.load_records([])
    unfinished = unfinished_runs(runs)
    if len(unfinished) == len(runs):
        report_unfinished(unfinished)
        print(f"no run of table {spec.name} finished: no table written", file=sys.stderr)
        return 1
    tables_dir.mkdir(parents=True, exist_ok=True)
    for path in write_outputs(spec, records, tables_dir):
        log.info("wrote %s", path)
    if not args.no_figures and "model" not in spec:
        for path in write_figures(spec, records, args.results_dir / "figures"):
            log.info("wrote %s", path)
    if not args.no_cost:
        log.info("cost table: %s", write_cost_table(tables_dir, force=args.recount_cost))
    log.info("total %.0f s", time.perf_counter() - start)
    if not args.render_only and counts["skipped"] < len(runs):
        write_timing(tables_dir / f"{spec.name}.timing.md", spec.name, counts, time.perf_counter() - start, args.launcher)
    if unfinished:
        report_unfinished(unfinished)
        print(f"{len(unfinished)} of {len(runs)} runs of table {spec.name} did not finish (shown as such in "
              f"{tables_dir / spec.name}.md)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
