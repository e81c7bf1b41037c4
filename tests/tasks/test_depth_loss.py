"""BTS's scale-invariant log loss (silog, variance focus 0.85) against a hand computation."""

import math

import pytest
import torch

from uplab.tasks.depth import silog_loss


def test_silog_with_variance_focus_085_by_hand():
    # Valid pixels only (the third is masked out): d = log(pred / gt) = [log 2, 0].
    # mean(d^2) = (log 2)^2 / 2, mean(d)^2 = (log 2)^2 / 4,
    # loss = 10 * sqrt((log 2)^2 / 2 - 0.85 (log 2)^2 / 4) = 10 log 2 * sqrt(0.2875).
    pred = torch.tensor([2.0, 3.0, 9.0])
    gt = torch.tensor([1.0, 3.0, 1.0])
    valid = torch.tensor([True, True, False])
    expected = 10 * math.log(2) * math.sqrt(0.5 - 0.85 / 4)
    assert silog_loss(pred, gt, valid).item() == pytest.approx(expected, rel=1e-6)
