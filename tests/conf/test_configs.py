"""The config tree composes: every task with its data and decoder, every upsampler has a file,
the experiment and sweep files, the launchers."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import MissingConfigException

from uplab.train import config_dir
from uplab.upsamplers import available

CONF = Path(config_dir())
# the toy rows; the paper rows need their datasets and have their own test (test_paper_experiments)
EXPERIMENTS = sorted(f"toy/{p.stem}" for p in (CONF / "experiment" / "toy").glob("*.yaml"))


@pytest.fixture
def compose_train():
    def make(*overrides: str, hydra: bool = False):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose("train", overrides=list(overrides), return_hydra_config=hydra)

    yield make
    GlobalHydra.instance().clear()


@pytest.mark.parametrize(
    "task, data, decoder, target",
    [
        ("segmentation", "segmentation", "SegFormerHead", "SegmentationTask"),
        ("depth", "depth", "UNetDecoder", "DepthTask"),
        ("matting", "matting", "UNetDecoder", "MattingTask"),
        ("detection", "detection", "UpsamplingFPN", "DetectionTask"),
    ],
)
def test_a_task_alone_selects_its_data_and_decoder(compose_train, task, data, decoder, target):
    cfg = compose_train(f"task={task}")
    assert cfg.data.task == data
    assert cfg.decoder._target_.endswith(decoder)
    assert cfg.task._target_ == f"uplab.tasks.{target}"


def test_command_line_beats_the_tasks_choices(compose_train):
    cfg = compose_train("task=depth", "decoder=segformer_head", "data=toy_depth")
    assert cfg.decoder._target_.endswith("SegFormerHead")


def test_every_registered_upsampler_has_a_config_file():
    files = {p.stem for p in (CONF / "upsampler").glob("*.yaml")}
    assert files == set(available())


def test_unknown_upsampler_lists_the_available_ones(compose_train):
    with pytest.raises(MissingConfigException) as err:
        compose_train("upsampler=fadee")
    message = str(err.value)
    assert "upsampler/fadee" in message
    assert all(name in message for name in ("bilinear", "nearest", "deconv", "pixelshuffle"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiments_compose(compose_train, experiment):
    cfg = compose_train(f"experiment={experiment}")
    task, upsampler = cfg.tags[1], cfg.tags[2]
    assert cfg.data.task == task and cfg.upsampler.name == upsampler


def test_sweep_composes_with_optuna(compose_train):
    cfg = compose_train("hparams_search=toy_seg_upsampler", hydra=True)
    assert "OptunaSweeper" in cfg.hydra.sweeper._target_
    assert cfg.hydra.sweeper.direction == "maximize"
    assert set(cfg.hydra.sweeper.params) >= {"upsampler.kernel_size", "task.optimizer.lr"}
    assert cfg.upsampler.name == "fade"


@pytest.mark.parametrize("launcher, target", [("local", "BasicLauncher"), ("submitit_slurm", "SlurmLauncher")])
def test_launchers_compose(compose_train, launcher, target):
    cfg = compose_train(f"hydra/launcher={launcher}", "trainer=ddp", hydra=True)
    assert cfg.hydra.launcher._target_.endswith(target)
    if launcher == "submitit_slurm":
        assert cfg.hydra.launcher.tasks_per_node == cfg.trainer.devices


@pytest.mark.parametrize("trainer", ["cpu", "gpu", "ddp", "debug"])
@pytest.mark.parametrize("logger", ["wandb", "csv", "none"])
def test_trainers_and_loggers_compose(compose_train, trainer, logger):
    cfg = compose_train(f"trainer={trainer}", f"logger={logger}")
    assert cfg.trainer._target_ == "pytorch_lightning.Trainer"
    assert len(cfg.logger) == (0 if logger == "none" else 1)


def test_wandb_is_offline_unless_asked(compose_train, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert compose_train("logger=wandb").logger.wandb.mode == "offline"
    monkeypatch.setenv("WANDB_MODE", "online")
    assert compose_train("logger=wandb").logger.wandb.mode == "online"


def test_nyuv2_rows_evaluate_inside_the_eigen_crop(compose_train):
    # The pipeline the paper depth rows evaluate with, built from their config: depth outside
    # Eigen et al.'s crop (rows 45:471, columns 41:601 of 480x640) is invalid, inside it is kept.
    import numpy as np
    from hydra.utils import instantiate

    cfg = compose_train("experiment=paper/sapa_g_bts_r50_nyuv2")
    pipeline = instantiate(cfg.data.eval_pipeline)
    depth = np.full((480, 640), 2.0, np.float32)
    out = pipeline({"image": np.zeros((480, 640, 3), np.uint8), "depth": depth},
                   np.random.default_rng(0))["depth"]
    assert (out > 0).sum() == (471 - 45) * (601 - 41)
    assert out[45:471, 41:601].min() == 2.0
