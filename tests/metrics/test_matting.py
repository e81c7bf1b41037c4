"""Matting errors vs the released MATLAB evaluation (golden) and vs hand-computed values."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from uplab.metrics import NothingToEvaluate
from uplab.metrics.matting import (
    QUANTIZATIONS,
    MattingMetrics,
    connectivity_error,
    gaussian_derivative_filters,
    gradient_error,
    matting_errors,
    mse_error,
    sad_error,
)

FIXTURES = Path(__file__).parents[1] / "fixtures"


def _golden_cases():
    arrays = np.load(FIXTURES / "matting_metrics.npz")
    expected = json.loads((FIXTURES / "matting_metrics.json").read_text())
    return [
        (arrays[f"pred{i}"], arrays[f"gt{i}"], arrays[f"trimap{i}"], expected[i])
        for i in sorted(expected)
    ]


@pytest.mark.parametrize("case", range(4))
def test_matches_released_matlab_evaluation(case):
    pred, gt, trimap, expected = _golden_cases()[case]
    errors = matting_errors(pred, gt, trimap)
    assert set(errors) == {"sad", "mse", "grad", "conn"}
    for key, value in expected.items():
        assert errors[key] == pytest.approx(value, rel=1e-6), key


def test_sad_and_mse_by_hand():
    # Unknown region: the two pixels of the top row. |255-0|/255 + |51-0|/255 = 1 + 0.2 = 1.2,
    # SAD/1000 = 1.2e-3; squares: 1 + 0.04 over 2 pixels -> MSE 0.52. The bottom row is known.
    pred = np.array([[255, 51], [200, 0]], np.uint8)
    gt = np.array([[0, 0], [0, 0]], np.uint8)
    trimap = np.array([[128, 128], [0, 255]], np.uint8)
    assert sad_error(pred, gt, trimap) == pytest.approx(1.2e-3, rel=1e-6)
    assert mse_error(pred, gt, trimap) == pytest.approx(0.52, rel=1e-6)


def test_mse_of_empty_unknown_region_is_nothing_to_evaluate():
    a = np.zeros((3, 3), np.uint8)
    with pytest.raises(NothingToEvaluate, match="no unknown pixel"):
        mse_error(a, a + 1, np.zeros((3, 3), np.uint8))


def test_gradient_filter_is_the_9x9_unit_norm_derivative_of_gaussian():
    # halfsize = ceil(1.4 * sqrt(-2 ln(sqrt(2 pi) * 1.4 * 0.01))) = ceil(1.4 * 2.588) = ceil(3.62) = 4;
    # the derivative is odd along x, even along y, and the filter has unit L2 norm.
    hx, hy = gaussian_derivative_filters(1.4)
    assert hx.shape == (9, 9)
    np.testing.assert_allclose(hy, hx.T)
    assert np.sum(hx**2) == pytest.approx(1.0)
    np.testing.assert_allclose(hx[:, ::-1], -hx)
    np.testing.assert_allclose(hx[::-1, :], hx)
    assert hx[4, 3] > 0  # -x g(x) is positive left of the centre


def test_gradient_error_is_zero_for_equal_mattes_and_for_a_scaled_copy():
    # mat2gray removes any affine rescaling, so a matte and its half-intensity copy agree.
    rng = np.random.default_rng(0)
    gt = (2 * rng.integers(0, 128, (12, 12))).astype(np.uint8)
    gt[0, 0], gt[0, 1] = 0, 254  # so mat2gray divides both by their max: 254 and 127
    trimap = np.full((12, 12), 128, np.uint8)
    assert gradient_error(gt, gt, trimap) == 0.0
    assert gradient_error(gt // 2, gt, trimap) == pytest.approx(0.0, abs=1e-9)


def test_connectivity_by_hand():
    # gt is fully opaque (every threshold's component is the whole image only where pred also
    # passes). pred = [[255, 0]]: at t = 0.1 the largest component of pred & gt is the left pixel,
    # so the right pixel gets level l = 0 and the left keeps l = 1 (never leaves).
    # Right pixel: pred d = 0 - 0 = 0 < 0.15 -> phi = 1; gt d = 1 - 0 = 1 -> phi = 0; |1 - 0| = 1.
    # Left pixel: d = 1 - 1 = 0 for both -> phi equal. Conn = 1 / 1000.
    pred = np.array([[255, 0]], np.uint8)
    gt = np.array([[255, 255]], np.uint8)
    trimap = np.full((1, 2), 128, np.uint8)
    assert connectivity_error(pred, gt, trimap) == pytest.approx(1e-3, rel=1e-6)


def test_connectivity_where_prediction_and_truth_never_both_reach_a_threshold():
    # 4x4, all unknown, prediction 204 (0.8), truth 51 (0.2): from t = 0.3 on no pixel is >= t in
    # both, the release's component is empty and every pixel's level is 0.2, so
    # phi_pred = 1 - 0.6, phi_gt = 1 and Conn = 16 * 0.6 / 1000 (compute_connectivity_error.m).
    pred = np.full((4, 4), 204, np.uint8)
    gt = np.full((4, 4), 51, np.uint8)
    trimap = np.full((4, 4), 128, np.uint8)
    assert connectivity_error(pred, gt, trimap) == pytest.approx(0.0096, rel=1e-5)


def test_connectivity_tie_picks_first_component_in_column_major_order():
    # pred has two one-pixel components, A = (0, 2) (first in row-major order) and B = (1, 0)
    # (first in MATLAB's column-major order); A has pred 255, gt 64 (0.251), B has 255 in both.
    # At t = 0.1 both pass and tie in size; MATLAB keeps B, so A gets level 0 and B stays to the
    # end (level 1). A: pred d = 1 -> phi 0; gt d = 0.251 -> phi 0.749; B: no error.
    # Conn = (1 - 64/255) / 1000. Keeping A instead would give A level 0.2 (phi_pred 0.2,
    # phi_gt 1) and B level 0 (phi 0 in both): 0.8 / 1000.
    pred = np.array([[0, 0, 255], [255, 0, 0]], np.uint8)
    gt = np.array([[0, 0, 64], [255, 0, 0]], np.uint8)
    trimap = np.full(pred.shape, 128, np.uint8)
    assert connectivity_error(pred, gt, trimap) == pytest.approx((1 - 64 / 255) / 1000, rel=1e-6)


def test_rejects_non_uint8_and_mismatched_shapes():
    a = np.zeros((4, 4), np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        matting_errors(a.astype(np.float32), a, a)
    with pytest.raises(ValueError, match="shape"):
        matting_errors(a, np.zeros((4, 5), np.uint8), a)


def test_metric_averages_per_image_errors():
    # Image 1: alpha 1 vs 0 on a fully unknown 2x2 -> SAD 4/1000, MSE 1. Image 2: exact -> 0.
    # Mean over the two images: SAD 2e-3, MSE 0.5.
    pred = torch.stack([torch.ones(1, 2, 2), torch.zeros(1, 2, 2)])
    alpha = torch.zeros(2, 1, 2, 2)
    trimap = torch.full((2, 1, 2, 2), 0.5)
    metric = MattingMetrics()
    metric.update(pred, alpha, trimap)
    result = metric.compute()
    assert result["sad"].item() == pytest.approx(2e-3)
    assert result["mse"].item() == pytest.approx(0.5)


def test_non_finite_predictions_are_refused_with_their_count():
    pred = torch.full((1, 1, 2, 2), 0.5)
    pred[0, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="MattingMetrics: 1 of 4 values of the predicted alpha"):
        MattingMetrics().update(pred, torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 0.5))


def test_a_set_without_an_unknown_region_is_nothing_to_evaluate():
    metric = MattingMetrics()
    known = torch.tensor([0.0, 1.0, 1.0, 0.0]).view(1, 1, 2, 2)
    metric.update(torch.full((1, 1, 2, 2), 0.5), known, known)
    with pytest.raises(NothingToEvaluate, match="no trimap of the set has an unknown pixel"):
        metric.compute()


def test_an_image_without_an_unknown_region_is_left_out_of_the_mean():
    # image 1: one unknown pixel, |pred - gt| = 255/255 -> SAD 1/1000; image 2: trimap all known
    metric = MattingMetrics()
    pred = torch.zeros(2, 1, 2, 2)
    alpha = torch.zeros(2, 1, 2, 2)
    alpha[0, 0, 0, 0] = 1.0
    trimap = torch.zeros(2, 1, 2, 2)
    trimap[0, 0, 0, 0] = 0.5
    metric.update(pred, alpha, trimap)
    assert metric.compute()["sad"].item() == pytest.approx(1e-3)


def test_floor_quantization_truncates_as_the_a2u_release_saves_its_pngs():
    gt = torch.full((1, 1, 2, 2), 100 / 255)
    pred = torch.full((1, 1, 2, 2), 100.7 / 255)  # 101 rounded, 100 truncated
    trimap = torch.full((1, 1, 2, 2), 0.5)
    errors = {}
    for quantization in QUANTIZATIONS:
        metric = MattingMetrics(quantization=quantization)
        metric.update(pred, gt, trimap)
        errors[quantization] = float(metric.compute()["sad"])
    assert errors == {"round": pytest.approx(4 / 255 / 1000), "floor": 0.0}
    with pytest.raises(ValueError, match=r"quantization must be one of \('round', 'floor'\)"):
        MattingMetrics(quantization="ceil")
