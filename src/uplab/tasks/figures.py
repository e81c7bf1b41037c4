"""The figure logged for one validation batch: input, prediction, ground truth and one upsampled
feature map, side by side."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def denormalize(image: torch.Tensor) -> np.ndarray:
    """An ImageNet-normalised ``[3, H, W]`` image as ``[H, W, 3]`` in [0, 1]."""
    rgb = image[:3].detach().float().cpu() * IMAGENET_STD + IMAGENET_MEAN
    return rgb.clamp(0, 1).permute(1, 2, 0).numpy()


@contextlib.contextmanager
def feature_map_recorder(module: nn.Module | None) -> Iterator[list[np.ndarray]]:
    """Record, while active, the channel-wise L2 norm of the first sample of ``module``'s output
    (one map per call), so the figure can show what an upsampler produced."""
    recorded: list[np.ndarray] = []
    if module is None:
        yield recorded
        return

    def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        recorded.append(output[0].detach().float().norm(dim=0).cpu().numpy())

    handle = module.register_forward_hook(hook)
    try:
        yield recorded
    finally:
        handle.remove()


def validation_figure(panels: Mapping[str, np.ndarray | torch.Tensor]) -> np.ndarray:
    """Render named panels (``[H, W]`` maps or ``[H, W, 3]`` images) in one row; returns the
    figure as an ``[H, W, 3]`` uint8 array."""
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.2), squeeze=False)
    for ax, (name, panel) in zip(axes[0], panels.items(), strict=True):
        array = panel.detach().cpu().numpy() if isinstance(panel, torch.Tensor) else np.asarray(panel)
        ax.imshow(array, cmap=None if array.ndim == 3 else "viridis", interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image
