"""Compose the real config tree once per case, then shrink it for speed (tiny images, a tiny
timm ResNet, fast_dev_run, no logger), the lightning-hydra-template way."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from uplab.train import config_dir

# per task: data and decoder settings small enough for a fast_dev_run in about a second
TINY = {
    "segmentation": ["data.toy.image_size=32", "decoder.embed_dim=32"],
    "depth": ["data.toy.image_size=32", "decoder.channels=32"],
    "matting": ["data.toy.image_size=32", "decoder.channels=32"],
    "detection": ["data.toy.image_size=64", "decoder.out_channels=32"],
}
COMMON = [
    "backbone.name=test_resnet",
    "data.toy.num_train=8",
    "data.toy.num_val=4",
    "data.batch_size=4",
    "trainer=debug",
    "logger=none",
    "~callbacks.rich_progress_bar",
]


@pytest.fixture(scope="session")
def toy_data_dir(tmp_path_factory) -> str:
    """One data directory for the session, so each tiny toy set is generated once."""
    return str(tmp_path_factory.mktemp("data"))


@pytest.fixture
def compose_tiny(toy_data_dir, tmp_path) -> Callable[..., DictConfig]:
    """``compose_tiny(task, *overrides)``: the real config, shrunk, writing into ``tmp_path``."""

    def make(task: str, *overrides: str) -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose(
                "train",
                overrides=[f"task={task}", *COMMON, *TINY[task], f"paths.data_dir={toy_data_dir}", *overrides],
                return_hydra_config=True,
            )
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path)
            del cfg.hydra
        return cfg

    yield make
    GlobalHydra.instance().clear()
