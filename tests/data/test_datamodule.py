"""The DataModule from the toy configs: batches of every task, num_classes, seeded shuffling."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from uplab.data import DataModule

CONF = Path(__file__).parents[2] / "conf" / "data"


@pytest.mark.parametrize(
    "config, num_classes",
    [("toy_seg", 6), ("toy_depth", None), ("toy_matting", None), ("toy_det", 4)],
)
def test_config_builds_a_datamodule_with_batches(config, num_classes, tmp_path, tiny):
    cfg = OmegaConf.merge(
        {"paths": {"data_dir": str(tmp_path)}}, {"data": OmegaConf.load(CONF / f"{config}.yaml")}
    )
    cfg.data.toy = tiny
    cfg.data.batch_size = 2
    dm = instantiate(cfg.data)
    assert dm.num_classes == num_classes
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    val = next(iter(dm.val_dataloader()))
    if dm.task == "detection":
        images, targets = batch
        assert len(images) == 2 and isinstance(targets[0], dict)
        assert len(val[0]) == 2
        return
    assert batch["image"].shape == (2, 3, 32, 32)
    dense = {"segmentation": "mask", "depth": "depth", "matting": "alpha"}[dm.task]
    assert batch[dense].shape[0] == 2 and val[dense].shape[-2:] == (32, 32)
    assert (dm.ignore_index == 255) == (dm.task == "segmentation")


def test_shuffle_and_augmentation_are_functions_of_seed_and_epoch(toy_root):
    def first_batch(epoch, seed=0):
        dm = DataModule(
            "segmentation", toy_root / "segmentation", seed=seed, batch_size=3, crop_size=24
        )
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return next(iter(loader))

    a, b = first_batch(1), first_batch(1)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert not torch.equal(a["image"], first_batch(2)["image"])


def test_rejects_unknown_task(tmp_path):
    with pytest.raises(ValueError, match="task must be one of"):
        DataModule("optical_flow", tmp_path)
