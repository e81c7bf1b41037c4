"""A run's prediction on its first validation sample, kept for the qualitative figures.

:class:`SavePredictions` is a Lightning callback: at the end of training it runs the task's
``predict_for_figure`` on the first validation batch and stores the task's figure panels (input,
prediction, ground truth) as ``predictions.npz`` in the run directory, so a figure of many runs
needs no checkpoint. Add it to a run with
``+callbacks.predictions={_target_:uplab.analysis.predictions.SavePredictions}``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

PREDICTIONS_FILE = "predictions.npz"
PANELS = ("input", "prediction", "ground_truth")


def _panel_key(title: str) -> str | None:
    """The stored name of one of the task's panel titles (``prediction (score > 0.5)`` ->
    ``prediction``), or None for panels the grid does not show."""
    title = title.lower()
    return next((key for key in PANELS if title.startswith(key.replace("_", " "))), None)


class SavePredictions(Callback):
    """Store the figure panels of the first validation sample as ``predictions.npz``.

    Args:
        output_dir: where to write (default: the trainer's ``default_root_dir``, the run directory).
    """

    def __init__(self, output_dir: str | Path | None = None):
        self.output_dir = None if output_dir is None else Path(output_dir)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.datamodule is None:
            return
        batch = next(iter(trainer.datamodule.val_dataloader()))
        batch = pl.utilities.move_data_to_device(batch, pl_module.device)
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad():
                panels = pl_module.figure_panels(batch, pl_module.predict_for_figure(batch))
        finally:
            pl_module.train(was_training)
        arrays = {}
        for title, panel in panels.items():
            key = _panel_key(title)
            if key is not None:
                value = panel.detach().cpu().numpy() if isinstance(panel, torch.Tensor) else np.asarray(panel)
                arrays[key] = value
        directory = self.output_dir or Path(trainer.default_root_dir)
        directory.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(directory / PREDICTIONS_FILE, **arrays)


def load_predictions(run_dir: str | Path) -> dict[str, np.ndarray] | None:
    """The panels stored by :class:`SavePredictions` in ``run_dir``, or None if there are none."""
    path = Path(run_dir) / PREDICTIONS_FILE
    if not path.is_file():
        return None
    with np.load(path) as data:
        return {key: data[key] for key in data.files}
