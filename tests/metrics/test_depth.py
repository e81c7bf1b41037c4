"""NYUv2 depth errors against hand-computed values."""

import math

import pytest
import torch

from uplab.metrics import NothingToEvaluate
from uplab.metrics.depth import DepthMetrics, depth_errors


def test_two_pixels_by_hand():
    # gt [1, 2], pred [2, 2]: ratios [2, 1] -> d1 = d2 = d3 = 1/2 (2 > 1.25^3 = 1.95).
    # abs_rel = (1/1 + 0)/2 = 0.5; sq_rel = (1/1 + 0)/2 = 0.5; rmse = sqrt(1/2);
    # rmse_log = sqrt((ln 2)^2 / 2) = ln 2 / sqrt 2; log10 = log10(2) / 2.
    gt = torch.tensor([1.0, 2.0])
    pred = torch.tensor([2.0, 2.0])
    errors = depth_errors(pred, gt, torch.tensor([True, True]))
    expected = {
        "d1": 0.5,
        "d2": 0.5,
        "d3": 0.5,
        "abs_rel": 0.5,
        "sq_rel": 0.5,
        "rmse": math.sqrt(0.5),
        "rmse_log": math.log(2) / math.sqrt(2),
        "log10": math.log10(2) / 2,
    }
    assert errors == pytest.approx(expected)


def test_threshold_boundaries_are_strict():
    # ratio 1.25 exactly is not < 1.25 but is < 1.25^2.
    errors = depth_errors(torch.tensor([1.25]), torch.tensor([1.0]), torch.tensor([True]))
    assert (errors["d1"], errors["d2"]) == (0.0, 1.0)


def test_metric_averages_per_image_clamps_and_skips_invalid():
    # Image 1: gt [1, 0 (invalid)], pred [2, 5] -> only the first pixel: abs_rel 1, d1 0.
    # Image 2: gt [4, 4], pred [20 (clamped to max 10), 4]: abs_rel (6/4 + 0)/2 = 0.75, d1 0.5.
    # Means: abs_rel (1 + 0.75) / 2 = 0.875; d1 (0 + 0.5) / 2 = 0.25.
    gt = torch.tensor([[1.0, 0.0], [4.0, 4.0]]).view(2, 1, 1, 2)
    pred = torch.tensor([[2.0, 5.0], [20.0, 4.0]]).view(2, 1, 1, 2)
    metric = DepthMetrics(min_depth=1e-3, max_depth=10.0)
    metric.update(pred, gt)
    result = metric.compute()
    assert result["abs_rel"].item() == pytest.approx(0.875)
    assert result["d1"].item() == pytest.approx(0.25)


def test_rejects_empty_mask_and_bad_shapes():
    with pytest.raises(ValueError, match="no pixel"):
        depth_errors(torch.ones(2), torch.ones(2), torch.zeros(2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        DepthMetrics().update(torch.ones(1, 2, 2), torch.ones(1, 2, 2))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_predictions_are_refused_with_their_count(bad):
    # nan_to_num would give an all-NaN prediction finite errors
    pred = torch.full((2, 1, 1, 2), 2.0)
    pred[0, 0, 0, 1] = pred[1, 0, 0, 0] = bad
    with pytest.raises(
        ValueError, match="DepthMetrics: 2 of 4 values of the predicted depth are not finite"
    ):
        DepthMetrics().update(pred, torch.ones(2, 1, 1, 2))


def test_a_set_without_a_valid_depth_pixel_is_nothing_to_evaluate():
    metric = DepthMetrics(min_depth=1e-3, max_depth=10.0)
    metric.update(torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2))  # gt 0: no measurement
    with pytest.raises(NothingToEvaluate, match="no image of the set has a pixel"):
        metric.compute()
    assert issubclass(NothingToEvaluate, ValueError)


def test_depth_errors_refuses_a_nan_prediction_inside_the_mask():
    with pytest.raises(ValueError, match="depth_errors: 1 of 2 values"):
        depth_errors(
            torch.tensor([1.0, float("nan")]), torch.ones(2), torch.ones(2, dtype=torch.bool)
        )
