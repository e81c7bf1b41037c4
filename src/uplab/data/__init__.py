"""Datasets of the four tasks (toy suite and the real datasets' loaders), transforms, DataModule."""

from uplab.data.datamodule import DataModule
from uplab.data.toy import ensure_toy

__all__ = ["DataModule", "ensure_toy"]
