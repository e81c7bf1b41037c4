"""SegmentationTask's loss reduction and evaluation resize against mmseg 0.11 (the SegFormer
setting's recipe names these tests)."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from uplab.models.decoders import SegFormerHead
from uplab.tasks import SegmentationTask
from uplab.upsamplers import build


class TinyPyramid(nn.Module):
    """Four levels at strides 4 to 32 from average pooling and a 1x1 conv."""

    channels = [4, 4, 4, 4]

    def __init__(self, in_chans: int = 3):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, 4, 1)

    def forward(self, x):
        return [self.proj(F.avg_pool2d(x, 4 * 2**i)) for i in range(4)]


def task(**kwargs) -> SegmentationTask:
    torch.manual_seed(0)
    return SegmentationTask(
        TinyPyramid,
        partial(SegFormerHead, embed_dim=8),
        partial(build, "bilinear"),
        num_classes=3,
        optimizer=torch.optim.SGD,
        **kwargs,
    ).eval()


def test_cross_entropy_averages_over_all_pixels_when_not_avg_non_ignore():
    logits = torch.randn(1, 3, 2, 2)
    mask = torch.tensor([[[0, 1], [255, 255]]])
    per_pixel = -logits.log_softmax(1)[0, mask[0, 0], 0, torch.arange(2)]
    # mmseg 0.11: (l0 + l1 + 0 + 0) / 4; avg_non_ignore: (l0 + l1) / 2
    assert task(avg_non_ignore=False).loss(logits, mask) == pytest.approx(
        float(per_pixel.sum() / 4)
    )
    assert task().loss(logits, mask) == pytest.approx(float(per_pixel.sum() / 2))


def test_evaluation_logits_reach_the_label_size_in_two_bilinear_steps():
    model = task()
    image = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        out = model(image, size=(50, 70))
        raw = model.model(image)
    to_input = F.interpolate(raw, size=(64, 96), mode="bilinear", align_corners=False)
    expected = F.interpolate(to_input, size=(50, 70), mode="bilinear", align_corners=False)
    assert out.shape == (1, 3, 50, 70)
    assert torch.allclose(out, expected, atol=1e-6)
    one_step = F.interpolate(raw, size=(50, 70), mode="bilinear", align_corners=False)
    assert not torch.allclose(out, one_step, atol=1e-4)
