"""What the four task modules share: optimizers and schedulers from Hydra partials, metric
logging, and the figure of one validation batch."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger
from torch import nn
from torchmetrics import Metric

from uplab.metrics import NothingToEvaluate
from uplab.tasks.figures import feature_map_recorder, validation_figure
from uplab.upsamplers.base import Upsampler

log = logging.getLogger(__name__)


def _call_scheduler(
    scheduler: Callable[..., Any], optimizer: torch.optim.Optimizer, total_steps: int
) -> Any:
    """Build ``scheduler(optimizer, ...)``, passing the run's length under the name the scheduler
    uses for it (``total_iters`` for PolynomialLR/LinearLR, ``total_steps`` for OneCycleLR,
    ``T_max`` for CosineAnnealingLR) unless the config set it."""
    target = getattr(scheduler, "func", scheduler)
    params = inspect.signature(target).parameters
    given = getattr(scheduler, "keywords", {})
    for name in ("total_iters", "total_steps", "T_max"):
        if name in params and name not in given:
            return scheduler(optimizer, **{name: total_steps})
    return scheduler(optimizer)


class TaskModule(pl.LightningModule):
    """Base of the task modules.

    Subclasses build ``self.model`` and ``self.val_metrics`` (a torchmetrics ``Metric`` whose
    ``compute()`` returns a dict), and implement ``training_step``, ``validation_step`` (which
    returns the model output used for the figure), ``example_input`` and ``figure_panels``.

    Args:
        optimizer: Hydra partial ``optimizer(params)``.
        scheduler: Hydra partial ``scheduler(optimizer, ...)`` stepped every iteration, or None;
            its length argument is filled with the run's number of optimizer steps.
    """

    data_task: ClassVar[str]
    """The ``task`` of the DataModule this module trains on."""
    monitor: ClassVar[str]
    """The validation metric that ranks checkpoints and sweeps (``val/<name>``)."""
    monitor_mode: ClassVar[str]
    """``"max"`` or ``"min"``: which direction of ``monitor`` is better."""

    def __init__(
        self,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
    ):
        super().__init__()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.val_metrics: Metric
        self.model: nn.Module
        self._figure_batch: Any = None
        self.not_evaluated: str | None = None
        """Why the last validation logged no metrics (None when it did)."""

    def configure_optimizers(self):
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params=named)  # names let uplab.tasks.optim.param_groups match keys
        if self.scheduler_factory is None:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = _call_scheduler(self.scheduler_factory, optimizer, max(total, 1))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def first_upsampler(self) -> Upsampler | None:
        """The first upsampler module of the model, whose output the figure shows."""
        return next((m for m in self.model.modules() if isinstance(m, Upsampler)), None)

    def on_validation_epoch_start(self) -> None:
        self._figure_batch = None

    def on_validation_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx == 0 and self.trainer.is_global_zero:
            self._figure_batch = batch

    def on_validation_epoch_end(self) -> None:
        try:
            values = self.val_metrics.compute()
        except NothingToEvaluate as err:
            self.not_evaluated = str(err)
            log.warning("validation at step %d logged no metrics: %s", self.global_step, err)
            return
        finally:
            self.val_metrics.reset()
        self.not_evaluated = None
        values = {f"val/{k}": v.float() for k, v in values.items()}
        monitored = values.pop(self.monitor, None)
        self.log_dict(values, sync_dist=False)
        if monitored is not None:  # the progress bar shows what ranks the run
            self.log(self.monitor, monitored, prog_bar=True, sync_dist=False)
        self._log_figure()

    def _log_figure(self) -> None:
        wandb_loggers = [lg for lg in self.loggers if isinstance(lg, WandbLogger)]
        if not wandb_loggers or self._figure_batch is None or self.trainer.sanity_checking:
            return
        upsampler = self.first_upsampler()
        with torch.no_grad(), feature_map_recorder(upsampler) as recorded:
            output = self.predict_for_figure(self._figure_batch)
        panels = self.figure_panels(self._figure_batch, output)
        if recorded:
            panels["upsampled feature"] = recorded[0]
        image = validation_figure(panels)
        for logger in wandb_loggers:
            logger.log_image("val/figure", [image], step=self.global_step, caption=[self.monitor])

    def predict_for_figure(self, batch: Any) -> Any:
        """The model output for ``batch`` as ``figure_panels`` reads it."""
        raise NotImplementedError

    def figure_panels(self, batch: Any, output: Any) -> dict[str, Any]:
        """Named images of the first sample: input, prediction, ground truth."""
        raise NotImplementedError

    def example_input(self, batch: Any) -> tuple:
        """Positional inputs of ``self.model`` for one sample of ``batch`` (for FLOP counts)."""
        raise NotImplementedError
