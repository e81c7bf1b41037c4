"""Matting errors of the Composition-1k evaluation: SAD, MSE, Grad and Conn.

A port of the MATLAB scripts released with Deep Image Matting (Xu et al., CVPR 2017) and reused
unchanged by IndexNet (Lu et al., ICCV 2019) and A2U (Dai et al., CVPR 2021):
``compute_sad_loss.m``, ``compute_mse_loss.m``, ``compute_gradient_loss.m`` (with
``gaussgradient.m``) and ``compute_connectivity_error.m``. Errors are taken over the trimap's
unknown region (``trimap == 128``) and returned in the scaling the papers print: SAD / 1000,
MSE as is, Grad / 1000, Conn / 1000. The MATLAB code accumulates in single precision; this port
does the same where it changes the result beyond 1e-7 relative.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage
from torchmetrics import Metric

from uplab.metrics.errors import NothingToEvaluate, require_finite

UNKNOWN = 128
GRAD_SIGMA = 1.4
CONN_STEP = 0.1


def _check_uint8(name: str, array: np.ndarray, shape: tuple[int, ...] | None) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D uint8 array (values 0..255); got dtype {array.dtype}, "
            f"shape {array.shape}"
        )
    if shape is not None and array.shape != shape:
        raise ValueError(f"{name} has shape {array.shape}, expected {shape} like pred")
    return array


def _unknown_region(trimap: np.ndarray) -> np.ndarray:
    return (trimap == UNKNOWN).astype(np.float32)


def sad_error(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray) -> float:
    """Sum of absolute differences over the unknown region, in thousands (``compute_sad_loss.m``)."""
    error = np.abs(pred.astype(np.float32) - gt.astype(np.float32)) / np.float32(255)
    return float(np.sum(error * _unknown_region(trimap), dtype=np.float32)) / 1000.0


def mse_error(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray) -> float:
    """Mean squared error over the unknown region (``compute_mse_loss.m``); an empty region is
    :class:`~uplab.metrics.NothingToEvaluate` (the MATLAB script divides 0 by 0)."""
    unknown = _unknown_region(trimap)
    count = float(unknown.sum(dtype=np.float64))
    if count == 0:
        raise NothingToEvaluate(f"mse_error: the trimap has no unknown pixel (value {UNKNOWN})")
    error = (pred.astype(np.float32) - gt.astype(np.float32)) / np.float32(255)
    return float(np.sum(error**2 * unknown, dtype=np.float32)) / count


def gaussian_derivative_filters(sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """The x- and y-derivative-of-Gaussian filters of ``gaussgradient.m``.

    The half size is ``ceil(sigma * sqrt(-2 log(sqrt(2 pi) sigma eps)))`` with ``eps = 1e-2``
    (4 for sigma 1.4: a 9x9 filter); ``hx[i, j] = g(i) g'(j)`` normalised to unit L2 norm, and
    ``hy = hx^T``.
    """
    half = math.ceil(sigma * math.sqrt(-2.0 * math.log(math.sqrt(2.0 * math.pi) * sigma * 1e-2)))
    offsets = np.arange(-half, half + 1, dtype=np.float64)
    gauss = np.exp(-(offsets**2) / (2.0 * sigma**2)) / (sigma * math.sqrt(2.0 * math.pi))
    dgauss = -offsets * gauss / sigma**2
    hx = np.outer(gauss, dgauss)
    hx /= math.sqrt(np.sum(hx * hx))
    return hx, hx.T.copy()


def _mat2gray(image: np.ndarray) -> np.ndarray:
    image = image.astype(np.float64)
    low, high = image.min(), image.max()
    if high == low:
        return np.zeros_like(image)
    return (image - low) / (high - low)


def _gradient_magnitude(image: np.ndarray, sigma: float) -> np.ndarray:
    hx, hy = gaussian_derivative_filters(sigma)
    # MATLAB imfilter(..., 'replicate', 'conv') is a true convolution with edge replication.
    gx = ndimage.convolve(image, hx, mode="nearest")
    gy = ndimage.convolve(image, hy, mode="nearest")
    return np.sqrt(gx**2 + gy**2)


def gradient_error(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray) -> float:
    """Gradient error in thousands (``compute_gradient_loss.m``, Rhemann et al. CVPR 2009).

    Both mattes are ``mat2gray``-normalised (min-max to [0, 1]) and differentiated with
    derivative-of-Gaussian filters (sigma 1.4); the squared difference of the gradient magnitudes
    is summed over the unknown region.
    """
    pred_amp = _gradient_magnitude(_mat2gray(pred), GRAD_SIGMA).astype(np.float32)
    gt_amp = _gradient_magnitude(_mat2gray(gt), GRAD_SIGMA).astype(np.float32)
    error = (pred_amp - gt_amp) ** 2
    return float(np.sum(error * _unknown_region(trimap), dtype=np.float32)) / 1000.0


def _largest_component(mask: np.ndarray) -> np.ndarray | None:
    # Label the transpose so labels follow MATLAB's column-major order: on a tie in size,
    # bwconncomp + max pick the component whose first pixel comes first in that order.
    labels, count = ndimage.label(mask.T, structure=ndimage.generate_binary_structure(2, 1))
    if count == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    return (labels == int(np.argmax(sizes)) + 1).T


def connectivity_error(
    pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray, step: float = CONN_STEP
) -> float:
    """Connectivity error in thousands (``compute_connectivity_error.m``, Rhemann et al. 2009).

    For each threshold ``t`` in ``step, 2 step, ..., 1`` the largest 4-connected component of
    ``(pred >= t) & (gt >= t)`` is found; a pixel's level ``l`` is the last threshold before it
    leaves that component (1 if it never does); where no pixel reaches ``t`` in both mattes the
    component is empty, as in the release. With ``d = alpha - l``,
    ``phi = 1 - d * [d >= 0.15]`` and the error sums ``|phi_pred - phi_gt|`` over the unknown
    region.
    """
    pred_f = pred.astype(np.float32) / np.float32(255)
    gt_f = gt.astype(np.float32) / np.float32(255)
    count = int(round(1.0 / step)) + 1
    # MATLAB's colon operator computes the first half from the start and the second half from
    # the end, so e.g. 0.7 is 1 - 3 * 0.1 rather than 7 * 0.1.
    thresholds = [k * step if 2 * k < count else 1.0 - (count - 1 - k) * step for k in range(count)]
    level = np.full(pred.shape, -1.0)
    for previous, threshold in zip(thresholds[:-1], thresholds[1:], strict=True):
        omega = _largest_component((pred_f >= threshold) & (gt_f >= threshold))
        if omega is None:
            # The release indexes bwconncomp's component list with max([]) = []: an empty
            # omega, so every pixel still at level -1 takes the previous threshold.
            omega = np.zeros(pred.shape, bool)
        level[(level == -1) & ~omega] = previous
    level[level == -1] = 1.0
    level_f = level.astype(np.float32)
    pred_d = pred_f - level_f
    gt_d = gt_f - level_f
    pred_phi = 1 - pred_d * (pred_d >= 0.15).astype(np.float32)
    gt_phi = 1 - gt_d * (gt_d >= 0.15).astype(np.float32)
    error = np.abs(pred_phi - gt_phi) * _unknown_region(trimap)
    return float(np.sum(error, dtype=np.float32)) / 1000.0


def matting_errors(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray) -> dict[str, float]:
    """SAD, MSE, Grad and Conn of one predicted matte, as the Composition-1k evaluation gives them.

    Args:
        pred: predicted alpha matte, uint8 ``[H, W]`` (0..255).
        gt: ground-truth alpha matte, uint8 ``[H, W]``.
        trimap: uint8 ``[H, W]`` with 0 (background), 128 (unknown) and 255 (foreground); errors
            are taken where it is 128.

    Returns:
        ``{"sad": SAD/1000, "mse": MSE, "grad": Grad/1000, "conn": Conn/1000}``.

    Raises:
        NothingToEvaluate: the trimap has no unknown pixel.

    Example:
        >>> import numpy as np
        >>> a = np.zeros((8, 8), np.uint8); t = np.full((8, 8), 128, np.uint8)
        >>> matting_errors(a, a, t)["sad"]
        0.0
    """
    pred = _check_uint8("pred", pred, None)
    gt = _check_uint8("gt", gt, pred.shape)
    trimap = _check_uint8("trimap", trimap, pred.shape)
    if not (trimap == UNKNOWN).any():
        raise NothingToEvaluate(
            f"matting_errors: the trimap has no unknown pixel (value {UNKNOWN}): nothing to evaluate"
        )
    return {
        "sad": sad_error(pred, gt, trimap),
        "mse": mse_error(pred, gt, trimap),
        "grad": gradient_error(pred, gt, trimap),
        "conn": connectivity_error(pred, gt, trimap),
    }


QUANTIZATIONS = ("round", "floor")


def to_uint8_matte(alpha: torch.Tensor | np.ndarray, quantization: str = "round") -> np.ndarray:
    """An alpha matte in [0, 1] (``[H, W]`` or ``[1, H, W]``) as a uint8 image, as saved PNGs are:
    ``clip(alpha, 0, 1) * 255`` rounded (``"round"``) or truncated (``"floor"``: the A2U release's
    ``test.py`` saves ``alpha.astype(np.uint8)``, dongdong93/a2u_matting ``scripts/test.py``)."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}; got {quantization!r}")
    if isinstance(alpha, torch.Tensor):
        alpha = alpha.detach().float().cpu().numpy()
    alpha = np.asarray(alpha, dtype=np.float64)
    if alpha.ndim == 3 and alpha.shape[0] == 1:
        alpha = alpha[0]
    if alpha.ndim != 2:
        raise ValueError(f"expected an alpha matte [H, W] or [1, H, W]; got shape {alpha.shape}")
    scaled = np.clip(alpha, 0.0, 1.0) * 255.0
    return (np.round(scaled) if quantization == "round" else np.floor(scaled)).astype(np.uint8)


def to_uint8_trimap(trimap: torch.Tensor | np.ndarray) -> np.ndarray:
    """Map a trimap in {0, 0.5, 1} (``[H, W]`` or ``[1, H, W]``) to the 0/128/255 image encoding."""
    values = to_uint8_matte(trimap)
    out = np.full(values.shape, UNKNOWN, np.uint8)
    out[values == 0] = 0
    out[values == 255] = 255
    return out


class MattingMetrics(Metric):
    """Composition-1k errors averaged over images, as ``hleval.m`` does (mean of per-image errors).

    ``update(pred, alpha, trimap)`` takes batches ``[B, 1, H, W]``: predicted and true alpha in
    [0, 1] and the trimap in {0, 0.5, 1}. Predictions are clamped and quantised to uint8 like the
    PNGs the MATLAB script reads (``quantization``: ``"round"``, or ``"floor"`` as the A2U
    release's ``test.py`` saves them; see :func:`to_uint8_matte`); the true alpha is rounded
    (exact for alphas read from 8-bit PNGs). Known regions are not
    overwritten here: the task decides whether to paste the trimap's known values into the
    prediction, as the released test scripts do.

    A non-finite prediction is a ValueError (clamping would hide it). An image whose trimap has no
    unknown pixel has no error to average and is skipped; ``compute()`` raises
    :class:`~uplab.metrics.NothingToEvaluate` when no image of the set had one.
    """

    full_state_update = False

    def __init__(self, quantization: str = "round", **kwargs) -> None:
        super().__init__(**kwargs)
        if quantization not in QUANTIZATIONS:
            raise ValueError(
                f"MattingMetrics: quantization must be one of {QUANTIZATIONS}; got {quantization!r}"
            )
        self.quantization = quantization
        for name in ("sad", "mse", "grad", "conn"):
            self.add_state(
                name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
            )
        self.add_state("images", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, alpha: torch.Tensor, trimap: torch.Tensor) -> None:
        if (
            pred.shape != alpha.shape
            or pred.shape != trimap.shape
            or pred.ndim != 4
            or pred.shape[1] != 1
        ):
            raise ValueError(
                "expected pred, alpha and trimap of one shape [B, 1, H, W]; got "
                f"{tuple(pred.shape)}, {tuple(alpha.shape)}, {tuple(trimap.shape)}"
            )
        require_finite(type(self).__name__, "the predicted alpha", pred.detach())
        for p, a, t in zip(pred, alpha, trimap, strict=True):
            trimap_u8 = to_uint8_trimap(t)
            if not (trimap_u8 == UNKNOWN).any():
                continue
            errors = matting_errors(
                to_uint8_matte(p, self.quantization), to_uint8_matte(a), trimap_u8
            )
            for name, value in errors.items():
                setattr(self, name, getattr(self, name) + value)
            self.images += 1

    def compute(self) -> dict[str, torch.Tensor]:
        if int(self.images) == 0:
            raise NothingToEvaluate(
                f"{type(self).__name__}: no trimap of the set has an unknown pixel (0.5): there is "
                "no SAD, MSE, Grad or Conn to report"
            )
        count = self.images.to(torch.float64)
        return {name: getattr(self, name) / count for name in ("sad", "mse", "grad", "conn")}
