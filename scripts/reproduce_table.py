"""Reproduce a results table: run its grid of training runs, then write the table.

``make reproduce-table`` (``TABLE=toy``, the default) trains the toy grid (conf/table/toy.yaml:
the four toy tasks x the papers' upsampler rows x seeds), one Hydra-composed run per worker
process (``--jobs auto``: one worker per core, each on one thread, for CPU runs, which measured
faster than one run at a time on all cores: docs/benchmarks.md; one at a time in this process for
GPU runs or ``--jobs 1``), printing one line per finished run with the time left, and writes the table
(``<table>.{md,csv,tex}``), its timing, the cost table and the figures under the git-ignored
``outputs/results/{tables,figures}/``. The committed copies in ``results/`` change only through
``make publish-tables`` (``--publish``). ``TABLE=quick`` is a three-minute subset;
``TABLE=paper-*`` are the real-data grids of the papers' experiment configs, rendered beside the
published numbers. ``--dry-run`` (``make reproduce-table DRY_RUN=1``) prints the plan instead:
the runs, which are done, their schedules, the datasets on disk, checkpoint sizes and GPU-hours
where a step time was measured (reference/step_times.yaml).

Each run lives in ``<runs-dir>/<table>/<task>/<row>/seed<seed>``. A re-run skips every run whose
``results.json`` is complete and whose overrides (``run.json``) match the table's, and redoes the
others (an interrupted grid resumes; a changed schedule reruns). A run that raises is recorded in
``failed.json``; every run that did not finish is printed with its root cause in one line, shown
as such in the table, and makes the command exit with status 1. With no finished run at all, no
table is written. Ctrl-C stops the grid: no new run starts, the runs in progress are recorded as
interrupted, and the command exits with status 130; run it again to resume.

``--launcher submitit-local`` and ``--launcher slurm`` run the grid as submitit jobs (one per
run, each in its own process; ``slurm`` submits them to the cluster and waits). A job that is
preempted or about to time out (submitit's signal) checkpoints and is requeued with
``resume=true``, so it continues from the run's ``last.ckpt``.

Examples::

    python scripts/reproduce_table.py --table toy
    python scripts/reproduce_table.py --table toy --jobs 1            # one run at a time on all cores
    python scripts/reproduce_table.py --table paper-segformer --dry-run   # runs, disk, GPU-hours
    python scripts/reproduce_table.py --table quick --publish          # copy outputs/results -> results/
    python scripts/reproduce_table.py --table paper-segformer --launcher slurm --slurm-partition gpu
    python scripts/reproduce_table.py --table toy --render-only     # tables from existing runs
    python scripts/reproduce_table.py --table toy --all-rows        # with the rows beyond the papers' defaults
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from omegaconf import DictConfig, ListConfig, OmegaConf  # noqa: E402

from uplab import shared_backbone  # noqa: E402
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


# the signals a scheduler stops a run with: submitit's preemption/timeout signal (USR2; its
# handler requeues the job and exits), Lightning's SLURM requeue (USR1), and TERM
DEFERRED_SIGNALS = {signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM}


@contextmanager
def signals_deferred(signals=DEFERRED_SIGNALS):
    """Hold :data:`DEFERRED_SIGNALS` back until the block ends, then hand each one that came to
    the handler it had. A handler that exits (submitit's requeue) in the middle of composing a
    config leaves OmegaConf's nodes half built, and the error that follows would be recorded as
    the run's failure instead of the requeue the signal asked for. (Python runs handlers in the
    main thread whichever thread the signal reached, so the handlers are swapped, not masked.)"""
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers can only be set from the main thread, the only one they run in
        return
    pending: list[int] = []
    previous = {s: signal.getsignal(s) for s in signals}
    for s in signals:
        signal.signal(s, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for signum in pending:
            handler = previous[signum]
            if callable(handler):
                handler(signum, None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)


def train_run(run: Run, resume: bool = False) -> str:
    """Train one run in this process; returns its status: ``finished``, ``failed`` (the error
    goes to ``failed.json``) or what its record says instead (``diverged``, ``not_evaluated``).
    ``KeyboardInterrupt`` propagates: the grid stops and resumes later."""
    from uplab.train import train

    quiet_training_logs()
    run.run_dir.mkdir(parents=True, exist_ok=True)
    rec.clear_failure(run.run_dir)
    rec.write_run_key(
        run.run_dir,
        {"table": run.table, "task": run.task, "row": run.row, "seed": run.seed, "overrides": list(run.overrides)},
    )
    try:
        with signals_deferred():
            cfg = compose_run(run, resume)
            (run.run_dir / ".hydra").mkdir(exist_ok=True)
            OmegaConf.save(cfg, run.run_dir / ".hydra" / "config.yaml")
        train(cfg)
    except Exception as err:  # noqa: BLE001  a failed run is a table cell, not the end of the grid
        rec.write_failure(run.run_dir, err, traceback.format_exc())
        log.debug("run %s failed", run.label, exc_info=True)
        return "failed"
    return rec.record_row(run.run_dir)["status"]


def train_shared_backbones(
    table: str, stages: Sequence[shared_backbone.BackboneRun], jobs: str | int = 1, progress: bool = True
) -> list[str]:
    """Stage 0 of a table with a ``shared_backbone`` section (:func:`uplab.shared_backbone.plan`):
    train each task's backbone that is not there yet, ``jobs`` at a time as the grid's runs
    (:func:`run_local`); returns one line per task whose backbone could not be trained (its rows
    cannot run)."""
    runs = [
        Run(table=f"{table}-backbones", task=stage.task, row="shared backbone", seed=stage.seed,
            overrides=stage.overrides, run_dir=stage.run_dir)
        for stage in stages
    ]
    for run, stage in zip(runs, stages, strict=True):
        if is_done(run) and not stage.checkpoint.is_file():  # a record without its backbone: redo
            (run.run_dir / rec.RESULTS_FILE).unlink()
    if any(not is_done(r) for r in runs):
        log.info("stage 0: training the shared backbones of %s", ", ".join(r.task for r in runs if not is_done(r)))
        run_local(runs, progress, jobs)
    return [
        f"{rec.record_row(run.run_dir)['status']}: shared backbone of {stage.task}: "
        f"{rec.record_row(run.run_dir)['error']}"
        for run, stage in zip(runs, stages, strict=True)
        if not (is_done(run) and stage.checkpoint.is_file())
    ]


def quiet_training_logs() -> None:
    """One progress line per run of the grid instead of Lightning's chatter for every run."""
    import pytorch_lightning  # noqa: F401  its import sets its loggers to INFO: quiet them after

    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric", "uplab.train"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="pytorch_lightning")
    warnings.filterwarnings("ignore", module="lightning_fabric")
    warnings.filterwarnings("ignore", category=UserWarning, message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", category=UserWarning, message="boxes doesn't contain any box")


# Measured on this project's 2-core machine (docs/benchmarks.md, "Table runner"): the toy grid's
# runs in one worker process per core, each on one thread, finish sooner than the same runs one
# after another on all cores. `--jobs auto` therefore uses one worker per core for CPU runs.
PARALLEL_RUNS_ARE_FASTER = True


def usable_cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def runs_on_gpu(run: Run) -> bool:
    """Whether the run's trainer asks for a GPU (one GPU is not shared by parallel runs)."""
    return str(compose_run(run).trainer.get("accelerator", "cpu")) in ("gpu", "cuda")


def resolve_jobs(jobs: str, todo: Sequence[Run]) -> int:
    """The number of worker processes for ``--jobs``: a positive number as given, or ``auto``:
    one per core for CPU runs when that measured faster (:data:`PARALLEL_RUNS_ARE_FASTER`), one
    for GPU runs; never more than the runs to do."""
    if jobs == "auto":
        parallel = PARALLEL_RUNS_ARE_FASTER and bool(todo) and not runs_on_gpu(todo[0])
        n = usable_cores() if parallel else 1
    elif jobs.isdigit() and int(jobs) > 0:
        n = int(jobs)
    else:
        raise ValueError(f"--jobs: expected a positive number of worker processes or 'auto', got {jobs!r}")
    return max(1, min(n, len(todo)))


def format_duration(seconds: float) -> str:
    """``12.3 s`` under a minute, ``4 min 10 s`` under an hour, ``2 h 05 min`` above; ``? s``
    for a run whose time is unknown (its worker died)."""
    if not math.isfinite(seconds):
        return "? s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def progress_line(
    done: int, total: int, run: Run, outcome: str, seconds: float, mean_seconds: float, jobs: int
) -> str:
    """One finished run: ``[k/N] task · row · seed s  <outcome>  12.3 s  ~ 4 min 10 s left``;
    the time left is the mean run time so far × the runs left / the parallel jobs."""
    left = mean_seconds * (total - done) / jobs
    tail = f"  ~ {format_duration(left)} left" if done < total else ""
    return f"[{done}/{total}] {run.label}  {outcome}  {format_duration(seconds)}{tail}"


def run_outcome(run: Run, status: str, metric: str | None) -> str:
    """What a finished run shows in its progress line: its final ``metric``, or its status and
    one-line reason."""
    row = rec.record_row(run.run_dir)
    if status != "finished":
        return f"{status}: {row['error']}"
    value = row.get(f"final/{metric}") if metric else None
    return f"{metric} {value:.4g}" if isinstance(value, int | float) else status


def timed_train(train: Callable[[Run], str], run: Run) -> tuple[str, float]:
    """``train(run)`` and its wall time in seconds, without the run's own report on standard
    output (its record holds the same; the grid prints one line per run); a run the grid was
    stopped before is not started (``cancelled``)."""
    if _STOP is not None and _STOP.is_set():
        return "cancelled", 0.0
    start = time.perf_counter()
    with open(os.devnull, "w") as quiet, redirect_stdout(quiet):
        status = train(run)
    return status, time.perf_counter() - start


_STOP = None  # in a worker process: the grid's stop event (init_worker)


def init_worker(threads: int, stop) -> None:
    """A worker process of the grid: Ctrl-C goes to the parent, which stops the workers (so a
    run in progress is recorded as interrupted, not torn mid-write), and torch runs on
    ``threads`` threads (OMP_NUM_THREADS was set before torch loaded: :func:`thread_environment`)."""
    import signal

    import torch

    global _STOP
    _STOP = stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)


@contextmanager
def thread_environment(threads: int):
    """OMP_NUM_THREADS and MKL_NUM_THREADS set to ``threads`` while the worker processes start
    (they inherit the environment and read it when torch loads), restored after."""
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update({name: str(threads) for name in names})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_in_workers(
    todo: Sequence[Run], jobs: int, train: Callable[[Run], str]
) -> Iterator[tuple[Run, str, float]]:
    """Train the runs in ``jobs`` worker processes (spawned: no state of this process is
    inherited), each on ``cores // jobs`` threads; yields ``(run, status, seconds)`` as they
    finish. A run's directory belongs to the one worker training it, and its records are written
    atomically, so a grid stopped at any point resumes. On Ctrl-C no new run starts, the workers
    are sent SIGTERM (Lightning ends a run in progress after its current batch and it is recorded
    as ``interrupted``), and ``KeyboardInterrupt`` propagates once they exited."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawned workers unpickle this module's functions by name, with this process's sys.path
    # (where this script's folder is missing when it was imported from elsewhere, e.g. by a test)
    if str(Path(__file__).resolve().parent) not in sys.path:
        sys.path.append(str(Path(__file__).resolve().parent))
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    threads = max(1, usable_cores() // jobs)
    pool = ProcessPoolExecutor(jobs, mp_context=context, initializer=init_worker, initargs=(threads, stop))
    try:
        with thread_environment(threads):  # workers start as runs are submitted
            futures = {pool.submit(timed_train, train, run): run for run in todo}
        for future in as_completed(futures):
            run = futures[future]
            try:
                status, seconds = future.result()
            except SystemExit:  # the worker was sent SIGTERM: the run recorded itself as interrupted
                status, seconds = rec.record_row(run.run_dir)["status"], math.nan
            except Exception as err:  # noqa: BLE001  raised outside train_run, or the worker died (killed, out of memory)
                remote = err.__cause__  # the worker's traceback, as text
                err.__cause__ = None
                run.run_dir.mkdir(parents=True, exist_ok=True)
                rec.write_failure(run.run_dir, err, f"in a worker process of the grid: {remote or traceback.format_exc()}")
                status, seconds = "failed", math.nan
            yield run, status, seconds
    except BaseException:
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
        for worker in multiprocessing.active_children():
            worker.terminate()
        raise
    finally:
        pool.shutdown(wait=True)


def run_local(
    runs: Sequence[Run],
    progress: bool = True,
    jobs: str | int = 1,
    metrics: Mapping[str, str] | None = None,
    train: Callable[[Run], str] | None = None,
) -> dict[str, int]:
    """Train the runs that are not complete, in this process (``jobs`` 1) or in worker
    processes (:func:`run_in_workers`), printing one line per finished run with the time left;
    returns counts of ``skipped``, ``finished``, ``failed`` and of any other status a run ended
    with.

    Args:
        runs: the grid (:func:`plan_runs`).
        progress: print the progress lines (standard error).
        jobs: worker processes, or ``auto`` (:func:`resolve_jobs`).
        metrics: per task, the metric a finished run shows in its progress line.
        train: trains one run and returns its status (:func:`train_run`); with worker processes
            it must be importable by name (the workers are spawned).
    """
    train = train or train_run
    todo = [r for r in runs if not is_done(r)]
    counts = {"skipped": len(runs) - len(todo), "finished": 0, "failed": 0}
    n_jobs = resolve_jobs(str(jobs), todo)
    if counts["skipped"] and progress:
        print(f"resuming: {counts['skipped']} of {len(runs)} runs are complete and skipped", file=sys.stderr)
    if todo and progress:
        threads = max(1, usable_cores() // n_jobs) if n_jobs > 1 else torch_threads()
        print(f"training {len(todo)} runs: {n_jobs} at a time, {threads} thread{'s' * (threads > 1)} each",
              file=sys.stderr)
    if n_jobs == 1:
        finished = ((run, *timed_train(train, run)) for run in todo)
    else:
        finished = run_in_workers(todo, n_jobs, train)
    seconds_so_far = []
    with closing(finished):  # on Ctrl-C, the workers stop before this returns
        for run, status, seconds in finished:
            counts[status] = counts.get(status, 0) + 1
            seconds_so_far.append(seconds)
            if progress:
                measured = [s for s in seconds_so_far if math.isfinite(s)] or [0.0]
                outcome = run_outcome(run, status, (metrics or {}).get(run.task))
                print(
                    progress_line(len(seconds_so_far), len(todo), run, outcome, seconds,
                                  sum(measured) / len(measured), n_jobs),
                    file=sys.stderr, flush=True,
                )
    return counts


def torch_threads() -> int:
    """The threads torch uses in this process."""
    import torch

    return torch.get_num_threads()


class TableJob:
    """One run of the grid as a submitit job: trains it in the job's process (:func:`train_run`)
    and, when submitit's preemption or timeout signal arrives, requeues itself with
    ``resume=true`` (submitit calls :meth:`checkpoint`; the requeued job continues from the
    run's ``last.ckpt``, or starts over where the table's schedule keeps no checkpoint)."""

    def __init__(self, run: Run, resume: bool = False) -> None:
        self.run, self.resume = run, resume

    def __call__(self) -> str:
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


def write_timing(
    path: Path, table: str, counts: dict[str, int], seconds: float, launcher: str = "local", jobs: int = 1
) -> Path:
    """``<tables dir>/<table>.timing.md``: how long the whole command took (grid, tables,
    figures, cost table), on what machine, with how many runs at a time (``jobs``)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    command = f"TABLE={table}" + ("" if launcher == "local" else f" LAUNCHER={launcher}") + (
        f" JOBS={jobs}" if launcher == "local" else "")
    path.write_text(
        f"`make reproduce-table {command}`: "
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


STEP_TIMES = ROOT / "reference" / "step_times.yaml"
# optimizer state kept per parameter, in parameters (Adam's two moments, SGD's momentum buffer)
OPTIMIZER_STATE = {"Adam": 2, "AdamW": 2, "SGD": 1}


@dataclass(frozen=True)
class RunCost:
    """What one run of the grid takes, from its composed config (:func:`run_cost`).

    Attributes:
        schedule: its length as configured (``160000 steps × batch 16``).
        steps: optimizer steps, where the config fixes them (``max_steps``, or epochs of
            ``limit_train_batches`` batches), else ``None`` (epochs of a dataset's length).
        gpu: whether the trainer asks for a GPU.
        data_root: the dataset's directory.
        generated_data: whether the data is the toy suite's, generated on first use.
        checkpoint_bytes: the size of its ``last.ckpt`` (float32 parameters and optimizer state),
            0 where the run writes no checkpoint, ``None`` where it could not be counted.
        checkpoint_note: how the size was counted, or why not.
    """

    schedule: str
    steps: int | None
    gpu: bool
    data_root: Path
    generated_data: bool
    checkpoint_bytes: int | None
    checkpoint_note: str


def schedule_of(cfg: DictConfig) -> tuple[str, int | None]:
    """A run's schedule in words and its number of optimizer steps (``None`` where it is a
    number of epochs over the whole dataset)."""
    trainer, batch = cfg.trainer, cfg.data.get("batch_size")
    max_steps = int(trainer.get("max_steps", -1) or -1)
    if max_steps > 0:
        return f"{max_steps} steps × batch {batch}", max_steps
    epochs, batches = int(trainer.get("max_epochs", 1)), trainer.get("limit_train_batches")
    if isinstance(batches, int) and not isinstance(batches, bool):
        return f"{epochs} epochs × {batches} batches × batch {batch}", epochs * batches
    return f"{epochs} epochs × batch {batch} (steps per epoch: the dataset's size / {batch})", None


def optimizer_state_per_param(optimizer: DictConfig) -> tuple[str, int | None]:
    """The optimizer a task config names (inside ``uplab.tasks.optim.param_groups`` too) and how
    many values of state it keeps per parameter (:data:`OPTIMIZER_STATE`; ``None`` if unknown)."""
    target = optimizer.get("optimizer", optimizer)._target_
    name = str(target).rsplit(".", 1)[-1]
    per_param = OPTIMIZER_STATE.get(name)
    if name == "SGD" and not float(optimizer.get("optimizer", optimizer).get("momentum", 0) or 0):
        per_param = 0
    return name, per_param


def writes_checkpoint(cfg: DictConfig) -> bool:
    return cfg.get("callbacks", {}).get("model_checkpoint") is not None and bool(
        cfg.trainer.get("enable_checkpointing", True)
    )


def checkpoint_size(spec: DictConfig, run: Run, cfg: DictConfig) -> tuple[int | None, str]:
    """``last.ckpt``'s size: parameters × 4 bytes × (1 + the optimizer's state per parameter),
    the model built with its parameters on the meta device (:func:`uplab.analysis.cost.build_model`,
    no memory, no weights loaded). A paper table's model takes the dataset's attributes from
    :data:`uplab.analysis.cost.PAPER_MODELS`; other tables write no checkpoint."""
    from uplab.analysis.cost import PAPER_MODELS, build_model

    if not writes_checkpoint(cfg):
        return 0, "no checkpoint (checkpointing off)"
    name, per_param = optimizer_state_per_param(cfg.task.optimizer)
    setting = PAPER_MODELS.get(str(spec.get("model")))
    if setting is None or per_param is None:
        why = f"optimizer {name} not in OPTIMIZER_STATE" if per_param is None else "no paper model to count"
        return None, f"checkpoint not estimated ({why})"
    weightless = Run(run.table, run.task, run.row, run.seed, (*run.overrides, *setting.no_weights), run.run_dir)
    model = build_model(compose_run(weightless), setting.data, empty=True)
    params = sum(p.numel() for p in model.parameters())
    return params * 4 * (1 + per_param), f"{params / 1e6:.1f} M params × 4 B × (1 + {per_param} of {name}'s state)"


def run_cost(spec: DictConfig, run: Run) -> RunCost:
    """What ``run`` takes (:class:`RunCost`), from its composed config."""
    cfg = compose_run(run)
    schedule, steps = schedule_of(cfg)
    size, note = checkpoint_size(spec, run, cfg)
    gpu = str(cfg.trainer.get("accelerator", "cpu")) in ("gpu", "cuda")
    return RunCost(schedule, steps, gpu, Path(str(cfg.data.root)), cfg.data.get("toy") is not None, size, note)


def disk_usage(path: Path) -> int | None:
    """Bytes of the files under ``path`` (``du``), or None when it does not exist."""
    if not path.exists():
        return None
    if path.is_file():
        return path.stat().st_size
    return sum(
        (Path(d) / f).stat().st_size for d, _, files in os.walk(path) for f in files if not (Path(d) / f).is_symlink()
    )


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def load_step_times(path: Path) -> dict:
    """``reference/step_times.yaml``: per table, measured seconds per training step (one value,
    or one per row) with the device and the measurement's source."""
    import yaml

    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def step_seconds(entry: Mapping | None, row: str) -> float | None:
    """A row's measured step time from a table's entry in the step-times file."""
    if not entry:
        return None
    measured = entry.get("step_s")
    return float(measured) if isinstance(measured, int | float) else (
        float(measured[row]) if isinstance(measured, Mapping) and row in measured else None
    )


def measured_cpu_time(table: str, results_dir: Path) -> tuple[float, str] | None:
    """Minutes per trained run of the last measured grid (``<table>.timing.md`` in
    ``results_dir`` or in the committed ``results/``) and that file's line."""
    import re

    for directory in (results_dir / "tables", PUBLISHED_RESULTS / "tables"):
        path = directory / f"{table}.timing.md"
        if path.is_file():
            text = path.read_text().strip()
            found = re.search(r"(\d+) runs trained.*? in ([\d.]+) min", text)
            if found and int(found[1]):
                return float(found[2]) / int(found[1]), f"{path.relative_to(path.parents[2])}: {text}"
    return None


def dry_run(spec: DictConfig, runs: Sequence[Run], results_dir: Path, step_times: Mapping) -> str:
    """The plan of ``make reproduce-table TABLE=<table> DRY_RUN=1``: every run (done or to do),
    its overrides beyond the table's and task's, schedule and checkpoint size, the datasets on
    disk, and the time: GPU-hours from measured step times (``reference/step_times.yaml``;
    "not measured" without one), or for CPU tables the pace of the last measured grid. Writes
    nothing."""
    table = str(spec.name)
    costs, by_key = [], {}
    for run in runs:  # seeds share everything the plan shows: compose each row once
        key = run.overrides[:-1]
        if key not in by_key:
            by_key[key] = run_cost(spec, run)
        costs.append(by_key[key])
    done = [is_done(r) for r in runs]
    n_todo = len(runs) - sum(done)
    lines = [f"table {table}: {len(runs)} runs, {sum(done)} done, {n_todo} to do"]
    if spec.get("overrides"):
        lines.append(f"every run: {' '.join(map(str, spec.overrides))}")
    for task, task_spec in spec.tasks.items():
        if task_spec.get("overrides") and any(r.task == task for r in runs):
            lines.append(f"every {task} run: {' '.join(map(str, task_spec.overrides))}")
    entry = step_times.get(table)
    gpu_hours, counted, not_measured, no_steps = 0.0, 0, set(), set()
    for run, cost, is_complete in zip(runs, costs, done, strict=True):
        shared = len(spec.get("overrides", [])) + len(spec.tasks[run.task].get("overrides", []))
        size = cost.checkpoint_note if not cost.checkpoint_bytes else (
            f"checkpoint {format_bytes(cost.checkpoint_bytes)} ({cost.checkpoint_note})")
        detail = f"{cost.schedule}, {size}"
        step = step_seconds(entry, run.row)
        if cost.gpu and step is not None and cost.steps is not None:
            hours = cost.steps * step / 3600
            detail += f", {hours:.1f} GPU-h"
            if not is_complete:
                gpu_hours, counted = gpu_hours + hours, counted + 1
        elif cost.gpu and not is_complete:
            (not_measured if step is None else no_steps).add(run.row)
        lines.append(f"  {'done ' if is_complete else 'to do'}  {run.label}: {' '.join(run.overrides[shared:])}; {detail}")
    for root, generated in sorted({(c.data_root, c.generated_data) for c in costs}):
        used = disk_usage(root)
        absent = "absent (generated on first use)" if generated else "absent"
        lines.append(f"data: {root}: {absent if used is None else format_bytes(used)}")
    sizes = [c.checkpoint_bytes for c, d in zip(costs, done, strict=True) if c.checkpoint_bytes and not d]
    if sizes:
        lines.append(
            f"checkpoint disk: up to {format_bytes(max(sizes))} per run while it trains (last.ckpt, deleted when "
            f"the run ends unless keep_checkpoint=true; {format_bytes(sum(sizes))} for the runs to do if all kept)"
        )
    if any(c.gpu for c in costs):
        if counted:
            lines.append(
                f"GPU-hours: {gpu_hours:.1f} for {counted} of the {n_todo} runs to do (steps × measured step "
                f"time; {entry.get('device', 'device not named')}; {entry.get('source', 'source not named')})"
            )
        if not_measured:
            plural = "s" if len(not_measured) > 1 else ""
            rows = "" if entry is None else f" of row{plural} {', '.join(sorted(not_measured))}"
            lines.append(f"GPU-hours: not measured (no step time for {table}{rows})")
        if no_steps:
            lines.append(f"GPU-hours: not counted for {', '.join(sorted(no_steps))} (epochs of the dataset: "
                         "steps unknown without it)")
    else:
        pace = measured_cpu_time(table, results_dir)
        lines.append("GPU-hours: none (CPU runs)")
        lines.append(
            f"time: about {format_duration(pace[0] * 60 * n_todo)} for the {n_todo} runs to do at the last measured grid's "
            f"pace ({pace[1]})" if pace else f"time: not measured (no {table}.timing.md)"
        )
    return "\n".join(lines)


def report_unfinished(unfinished: Sequence[tuple[Run, str, str]]) -> None:
    """One line per run that did not finish, with its root cause, on standard error."""
    for run, status, reason in unfinished:
        print(f"{status}: {run.label}: {reason} ({run.run_dir})", file=sys.stderr)


def jobs_argument(text: str) -> str:
    """``--jobs``: ``auto`` or a positive number."""
    if text == "auto" or (text.isdigit() and int(text) > 0):
        return text
    raise argparse.ArgumentTypeError(f"expected a positive number of worker processes or 'auto', got {text!r}")


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
    parser.add_argument("--jobs", default="auto", type=jobs_argument,
                        help="runs trained at once in worker processes (each on cores/jobs threads), or auto: "
                             "one per core for CPU runs (measured faster, docs/benchmarks.md), one for GPU runs")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the planned runs, their schedules, disk and GPU-hours; train and write nothing")
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
        tasks = args.tasks.split(",") if args.tasks else None
        stages = shared_backbone.plan(spec, args.runs_dir, tasks)
        spec = shared_backbone.freeze_rows(spec, args.runs_dir)
        runs = plan_runs(spec, args.runs_dir, tasks)
    except ValueError as err:
        parser.error(str(err))
    if args.publish:
        try:
            for path in publish(str(spec.name), args.results_dir):
                log.info("published %s", path)
        except ValueError as err:
            parser.error(str(err))
        return 0
    if args.dry_run:
        print(dry_run(spec, runs, args.results_dir, load_step_times(STEP_TIMES)))
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
        failed = train_shared_backbones(str(spec.name), stages, args.jobs if args.launcher == "local" else 1,
                                        not args.no_progress)
        if failed:
            print("\n".join(failed), file=sys.stderr)
            return 1
        try:
            jobs = 1
            if args.launcher == "local":
                metrics = {str(t): str(s.metrics[0]) for t, s in spec.tasks.items()}
                jobs = resolve_jobs(args.jobs, [r for r in runs if not is_done(r)])
                counts = run_local(runs, not args.no_progress, jobs, metrics)
            else:
                folder = args.runs_dir / spec.name / ".submitit"
                counts = run_submitit(runs, args.launcher, folder, args.slurm_partition, args.timeout_min)
        except KeyboardInterrupt:
            print(f"stopped: the finished runs are kept, a run in progress is recorded as interrupted; "
                  f"the same command resumes table {spec.name}", file=sys.stderr)
            return 130
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
        write_timing(tables_dir / f"{spec.name}.timing.md", spec.name, counts, time.perf_counter() - start,
                     args.launcher, jobs)
    if unfinished:
        report_unfinished(unfinished)
        print(f"{len(unfinished)} of {len(runs)} runs of table {spec.name} did not finish (shown as such in "
              f"{tables_dir / spec.name}.md)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
