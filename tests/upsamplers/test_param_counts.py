"""Parameter increments of the SegFormer-B1 head setting: six upsamplers at 256 channels, scale 2,
built from the configs in conf/upsampler/ (the papers' settings) and counted on the real modules.

The published increments (SAPA NeurIPS 2022 and FADE ECCV 2022 / IJCV 2024, SegFormer-B1 on
ADE20K; the tables print them rounded, e.g. CARAFE +0.44M, FADE +0.29M, FADE-Lite +80K).
"""

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

CONF = Path(__file__).parents[2] / "conf" / "upsampler"
STAGES, CHANNELS = 6, 256

PUBLISHED = {
    "carafe": 444_888,
    "fade": 285_084,
    "fade_lite": 79_992,
    "sapa_b": 104_832,  # embedding_dim 32
    "sapa_g": 155_718,  # embedding_dim 32
    "sapa_i": 0,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_segformer_b1_increment(name):
    factory = instantiate(OmegaConf.load(CONF / f"{name}.yaml"))
    stages = [factory(in_channels=CHANNELS, scale=2) for _ in range(STAGES)]
    assert sum(p.numel() for up in stages for p in up.parameters()) == PUBLISHED[name]
