"""Checks of a composed run config that a user's command can fail, run before anything is built
or written: trainer argument types, a writable output directory, the dataset, the weights files
(and, for a paper row, that its encoder starts from released weights), and CUDA for a GPU
trainer. Each failure is a :class:`UsageError` whose message is one line that says what is
wrong and what to do; ``uplab-train`` prints it alone (``HYDRA_FULL_ERROR=1``
shows the traceback).

For a single run the Hydra callback :class:`Preflight` runs the checks before Hydra creates the
run directory; ``uplab.train.train`` runs them again for every job (multiruns, tests), and builds
its data from the checked DataModule.
"""

from __future__ import annotations

import inspect
import os
import sys
import tempfile
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from uplab import weights
from uplab.data.io import DatasetError

WEIGHT_KEYS = ("checkpoint", "weights", "pretrained")
GPU_ACCELERATORS = ("gpu", "cuda")


class UsageError(Exception):
    """A run cannot start as configured; the message is one line: what, and what to do."""


def one_line(error: BaseException) -> str:
    """``error``'s message on one line (multi-line messages are joined with ``; ``)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return "; ".join(lines) or type(error).__name__


def exit_with(error: BaseException) -> NoReturn:
    """Print ``error`` as one line on stderr and exit with status 2 (re-raise it instead when
    ``HYDRA_FULL_ERROR=1``, so the whole traceback shows)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise error
    print(f"uplab-train: error: {one_line(error)}", file=sys.stderr, flush=True)
    sys.exit(2)


def _accepts(value: Any, annotation: Any) -> bool:
    """Whether ``value`` (a plain config value) fits ``annotation``; types this check cannot
    judge (Lightning's own classes, callables) count as fitting."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or type(annotation).__name__ == "UnionType":
        return any(_accepts(value, arg) for arg in typing.get_args(annotation))
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, dict)
    return True


def _type_name(annotation: Any) -> str:
    """``Optional[int]`` as ``int or None``."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Union or type(annotation).__name__ == "UnionType":
        return " or ".join(_type_name(a) for a in args)
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def check_trainer_arguments(trainer_cfg: DictConfig) -> None:
    """Every ``trainer.<name>`` is an argument of ``pl.Trainer`` of the annotated type."""
    hints = typing.get_type_hints(pl.Trainer.__init__)
    params = inspect.signature(pl.Trainer.__init__).parameters
    for name, value in OmegaConf.to_container(trainer_cfg, resolve=True).items():
        if name.startswith("_"):
            continue
        if name not in params:
            raise UsageError(
                f"trainer.{name}: pytorch_lightning.Trainer has no argument {name!r}; "
                f"remove it (trainer arguments: {', '.join(p for p in params if p != 'self')})"
            )
        if name in hints and not _accepts(value, hints[name]):
            raise UsageError(
                f"trainer.{name}={value!r}: pytorch_lightning.Trainer expects {_type_name(hints[name])}; "
                f"fix the override trainer.{name}=..."
            )


def check_writable(run_dir: Path) -> None:
    """``run_dir`` exists and is writable, or can be created (its nearest existing parent is a
    writable directory)."""
    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:  # a probe file, not os.access: root passes access checks on read-only filesystems
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError:
        raise UsageError(
            f"output directory {run_dir} cannot be written ({existing} is not a writable "
            "directory); set paths.log_dir=<a writable directory> or UPLAB_ROOT"
        ) from None


def _weight_paths(cfg: DictConfig) -> Iterator[tuple[str, str]]:
    for group in ("backbone", "decoder", "upsampler"):
        node = cfg.get(group)
        if not isinstance(node, DictConfig):
            continue
        for key in WEIGHT_KEYS:
            value = node.get(key)
            if isinstance(value, str) and value:
                yield f"{group}.{key}", value


def check_weights(cfg: DictConfig) -> None:
    """Every weights file the model config names exists; for a file of the manifest
    (``${uplab.weights:<name>}``) the message names its URL and the command that fetches it."""
    for key, path in _weight_paths(cfg):
        if Path(path).is_file():
            continue
        released = weights.entry_for_path(path)
        if released is not None:
            raise UsageError(f"{key}: {weights.missing_message(released)}")
        raise UsageError(
            f"{key}={path}: no such weights file; download it as docs/datasets.md says "
            f"(or set {key}=null to start from random weights)"
        )


def check_initial_weights(cfg: DictConfig) -> None:
    """A paper row (``tags`` holds ``paper``) starts its encoder from released weights, unless
    ``scratch_encoder=true`` says otherwise: no published run trains its encoder from scratch."""
    if "paper" not in (cfg.get("tags") or []) or cfg.get("scratch_encoder"):
        return
    backbone = cfg.get("backbone")
    if isinstance(backbone, DictConfig) and (backbone.get("checkpoint") or backbone.get("pretrained")):
        return
    raise UsageError(
        "this paper row would train its encoder from random weights (backbone.checkpoint=null), "
        "which no published run does; keep the row's ${uplab.weights:<name>} "
        "(reference/weights.yaml), or add scratch_encoder=true for a smoke run"
    )


def check_accelerator(trainer_cfg: DictConfig) -> None:
    """A GPU trainer finds CUDA."""
    accelerator = str(trainer_cfg.get("accelerator", "cpu"))
    if accelerator in GPU_ACCELERATORS and not torch.cuda.is_available():
        raise UsageError(
            f"trainer.accelerator={accelerator}, but this machine has no CUDA device (torch "
            f"{torch.__version__}, CUDA build {torch.version.cuda}); use trainer=cpu, or run on a GPU machine"
        )


def load_data(cfg: DictConfig) -> pl.LightningDataModule:
    """The run's DataModule with its data prepared and its datasets opened."""
    try:
        datamodule = instantiate(cfg.data)
        datamodule.prepare_data()
        datamodule.setup("fit")
    except DatasetError as err:
        raise UsageError(one_line(err)) from err
    return datamodule


def preflight(cfg: DictConfig, run_dir: str | Path) -> pl.LightningDataModule:
    """Check ``cfg`` (see the module docstring) and return its DataModule, set up.

    Raises:
        UsageError: the first check that fails.
    """
    check_trainer_arguments(cfg.trainer)
    check_writable(Path(run_dir))
    datamodule = load_data(cfg)
    check_initial_weights(cfg)
    check_weights(cfg)
    check_accelerator(cfg.trainer)
    return datamodule


class Preflight(Callback):
    """Hydra callback: :func:`preflight` for a single run, before Hydra creates its directory."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        config = config.copy()
        HydraConfig.instance().set_config(config)
        run_dir = os.path.abspath(str(OmegaConf.select(config, "hydra.run.dir")))
        with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
            config.hydra.runtime.output_dir = run_dir
        HydraConfig.instance().set_config(config)
        try:
            preflight(config, run_dir)
        except UsageError as err:
            exit_with(err)
