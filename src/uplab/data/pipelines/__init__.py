"""The papers' training and test pipelines, one module per release.

Each builder returns a :class:`uplab.data.transforms.Compose`; ``conf/data/<dataset>.yaml`` names
them (``train_pipeline`` / ``eval_pipeline``) and the DataModule hands them to the dataset, whose
CPU workers run them with a generator seeded by (seed, epoch, index).
"""

from uplab.data.pipelines.a2u_matting import a2u_matting_test, a2u_matting_train
from uplab.data.pipelines.bts import bts_nyu_test, bts_nyu_train
from uplab.data.pipelines.mmdet import mmdet_test, mmdet_train
from uplab.data.pipelines.segformer import segformer_test, segformer_train

__all__ = [
    "a2u_matting_test",
    "a2u_matting_train",
    "bts_nyu_test",
    "bts_nyu_train",
    "mmdet_test",
    "mmdet_train",
    "segformer_test",
    "segformer_train",
]
