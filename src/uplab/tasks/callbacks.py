"""Callbacks of a run: the history of validation metrics (for the run record), reseeding per
epoch (so a resumed run replays the epochs an uninterrupted run would), a stop at the first
non-finite training loss, and a clean stop at an epoch boundary (for splitting a run across
time-limited jobs)."""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback


class MetricHistory(Callback):
    """Records every validation's metrics with the global step; kept in checkpoints, so the
    history of a resumed run is the whole run's.

    Args:
        monitor: the metric that decides which validation is best.
        mode: ``"max"`` or ``"min"``.
    """

    def __init__(self, monitor: str, mode: str):
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.monitor = monitor
        self.mode = mode
        self.history: list[dict[str, Any]] = []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or getattr(pl_module, "not_evaluated", None):
            return
        metrics = {
            k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")
        }
        self.history.append({"step": trainer.global_step, "epoch": trainer.current_epoch, "metrics": metrics})

    def final(self) -> dict[str, Any] | None:
        """The last validation's record, or None before any."""
        return self.history[-1] if self.history else None

    def best(self) -> dict[str, Any] | None:
        """The record of the validation whose ``monitor`` is best (first of equals), or None;
        a validation whose ``monitor`` is missing or non-finite is never best."""
        scored = [
            r for r in self.history if math.isfinite(r["metrics"].get(self.monitor, math.nan))
        ]
        if not scored:
            return None
        pick = max if self.mode == "max" else min
        return pick(scored, key=lambda r: r["metrics"][self.monitor])

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict["history"])


class TrainingDiverged(RuntimeError):
    """The training loss became non-finite; ``step`` and ``last_finite_loss`` say where."""

    def __init__(self, step: int, loss: float, last_finite_loss: float | None):
        super().__init__(
            f"training loss is {loss} at step {step} (last finite loss: {last_finite_loss}); "
            "lower the learning rate or check the data"
        )
        self.step = step
        self.loss = loss
        self.last_finite_loss = last_finite_loss

    def record(self) -> dict[str, Any]:
        return {"step": self.step, "loss": self.loss, "last_finite_loss": self.last_finite_loss}


class StopOnNonFiniteLoss(Callback):
    """Ends training at the first training step whose loss is NaN or infinite, by raising
    :class:`TrainingDiverged` (which Lightning passes to every callback's ``on_exception`` and
    then re-raises), so no later validation or checkpoint comes from the diverged weights.

    Lightning has no such check for the training loss: ``EarlyStopping(check_finite=True)``
    looks only at its monitored metric, at validation time, when a diverged model's argmax
    predictions can still score a finite (and misleading) metric.
    """

    def __init__(self) -> None:
        self.last_finite_loss: float | None = None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        value = float(loss)
        # under DDP every rank must stop at the same step, or the others wait in the next all-reduce
        if trainer.strategy.reduce_boolean_decision(not math.isfinite(value), all=False):
            raise TrainingDiverged(trainer.global_step, value, self.last_finite_loss)
        self.last_finite_loss = value


class EpochSeed(Callback):
    """Reseeds torch, numpy and random from ``seed + epoch`` before each epoch's first training
    batch.

    Lightning's checkpoints do not hold the random state, so without this a run resumed from an
    epoch boundary draws other dropout masks than the uninterrupted run. The seed is set at the
    first batch rather than at the epoch's start because creating the DataLoader iterator draws
    from the global generator, and a resumed run creates it at another moment.
    """

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx == 0:
            pl.seed_everything(self.seed + trainer.current_epoch, workers=True, verbose=False)


class StopAtEpoch(Callback):
    """Stops training cleanly after ``epochs`` epochs, keeping the schedule of the full run
    (``trainer.max_epochs`` still sets the learning-rate horizon); resume continues from there.

    Args:
        epochs: number of epochs to run in this job.
    """

    def __init__(self, epochs: int):
        if epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {epochs}")
        self.epochs = epochs
        self.stopped = False
        """Whether this callback ended training (the run is then unfinished, not finished)."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.epochs and trainer.current_epoch + 1 < (trainer.max_epochs or 0):
            trainer.should_stop = True
            self.stopped = True
