"""DySample: upsampling by learned point sampling (Liu et al., "Learning to Upsample by Learning
to Sample", ICCV 2023), as released in ``tiny-smart/dysample``: unguided, no reassembly kernels,
one ``grid_sample`` over offsets predicted from the decoder feature.

Registers ``dysample`` and the converter for ``dysample.DySample``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from uplab.upsamplers.base import Upsampler, require_positive_int
from uplab.upsamplers.official import load_mapped, register_official
from uplab.upsamplers.registry import register

STATIC_SCOPE = 0.25  # "static scope factor": keeps neighbouring sampling points from overlapping
DYNAMIC_SCOPE = 0.5  # "dynamic scope factor": 0.5 * sigmoid(scope), a range of [0, 0.5]
STYLES = ("lp", "pl")


@register("dysample")
class DySample(Upsampler):
    """DySample (Liu et al., ICCV 2023): each output point bilinearly samples ``x`` at its own
    position, ``out = grid_sample(x, S)`` with ``S = G + O``: ``G`` the positions bilinear
    interpolation samples, ``O`` offsets from a 1x1 convolution of ``x``.

    - ``style="lp"`` (linear, then pixel shuffle): ``O = pixel_shuffle(offset(x))``, the
      convolution predicting ``2 * groups * s**2`` channels at low resolution.
    - ``style="pl"`` (pixel shuffle, then linear): ``O = offset(pixel_shuffle(x))``, the
      convolution seeing ``C / s**2`` channels at high resolution (``C`` divisible by ``s**2``).
    - ``dyscope=False``: static scope factor, ``O = 0.25 * offset``;
      ``dyscope=True``: dynamic scope, ``O = 0.5 * sigmoid(scope) * offset``.
    - ``groups``: channel groups, each with its own sampling positions.

    Sampling is ``grid_sample(..., mode="bilinear", align_corners=False, padding_mode="border")``,
    so with all offsets zero DySample is exactly bilinear interpolation with
    ``align_corners=False``. Same layers, names and initialisation as the release (offsets
    ``normal(std=0.001)``, scope zero, the initial positions as the ``init_pos`` buffer), so its
    checkpoints load with identical keys.

    Departure from the release, same numbers: the sampling grid is pixel-shuffled with one
    permute instead of ``pixel_shuffle`` on a 5-D tensor, whose backward fails on current PyTorch
    ("Unsupported memory format").

    ``init_pos`` holds ``(j - (s - 1) / 2) / s``, exact in binary only for power-of-two ``s``:
    for float64 work build the module under float64 default dtype (converting a float32 build
    afterwards leaves an error of about 1e-8 at ``s = 3``).

    Args:
        in_channels: channels ``C`` of ``x``.
        scale: integer ratio ``s`` (any ``s >= 1``).
        style: ``"lp"`` or ``"pl"``.
        groups: channel groups (``C`` must be divisible by it).
        dyscope: dynamic (``True``) or static (``False``) scope factor.

    Example:
        >>> up = DySample(16, scale=2)
        >>> up(torch.randn(1, 16, 5, 7)).shape
        torch.Size([1, 16, 10, 14])
    """

    def __init__(
        self,
        in_channels: int,
        scale: int = 2,
        style: str = "lp",
        groups: int = 4,
        dyscope: bool = False,
    ):
        super().__init__(in_channels, scale)
        if style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {style!r}")
        require_positive_int("groups", groups)
        if in_channels % groups:
            raise ValueError(
                f"groups must be a positive divisor of in_channels ({in_channels}), got {groups!r}"
            )
        if style == "pl" and in_channels % scale**2:
            raise ValueError(
                f"style 'pl' pixel-shuffles x before predicting offsets, so in_channels must be "
                f"divisible by scale**2 = {scale**2}; got in_channels={in_channels}. Use style='lp'."
            )
        self.style = style
        self.groups = groups
        if style == "pl":
            offset_in, offset_out = in_channels // scale**2, 2 * groups
        else:
            offset_in, offset_out = in_channels, 2 * groups * scale**2
        self.offset = nn.Conv2d(offset_in, offset_out, 1)
        self.scope = nn.Conv2d(offset_in, offset_out, 1, bias=False) if dyscope else None
        self.register_buffer("init_pos", self._initial_positions())
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The release's initialisation: near-zero offsets, scope zero (sigmoid = 0.5)."""
        nn.init.normal_(self.offset.weight, std=0.001)
        nn.init.zeros_(self.offset.bias)
        if self.scope is not None:
            nn.init.zeros_(self.scope.weight)

    def _initial_positions(self) -> torch.Tensor:
        """Offsets ``[1, 2 * groups * s**2, 1, 1]`` (x block, then y block) from each
        low-resolution pixel centre to the centres of its ``s x s`` children, in input pixels:
        the positions bilinear interpolation would sample."""
        s = self.scale
        steps = (torch.arange(s, dtype=torch.get_default_dtype()) - (s - 1) / 2) / s
        dy, dx = torch.meshgrid(steps, steps, indexing="ij")
        return torch.stack([dx, dy]).repeat(1, self.groups, 1).reshape(1, -1, 1, 1)

    def offsets(self, x: torch.Tensor) -> torch.Tensor:
        """Sampling offsets ``[B, 2 * groups * s**2, H, W]`` relative to each pixel centre."""
        source = F.pixel_shuffle(x, self.scale) if self.style == "pl" else x
        if self.scope is None:
            raw = self.offset(source) * STATIC_SCOPE
        else:
            raw = self.offset(source) * self.scope(source).sigmoid() * DYNAMIC_SCOPE
        if self.style == "pl":
            raw = F.pixel_unshuffle(raw, self.scale)
        return raw + self.init_pos

    def sample(self, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Bilinearly sample each group of ``x`` at pixel centre + offset."""
        b, c, h, w = x.shape
        s, g = self.scale, self.groups
        offsets = offsets.view(b, 2, g * s * s, h, w)
        xs = torch.arange(w, dtype=x.dtype, device=x.device) + 0.5
        ys = torch.arange(h, dtype=x.dtype, device=x.device) + 0.5
        centres = torch.stack(torch.meshgrid(xs, ys, indexing="xy")).view(1, 2, 1, h, w)
        size = torch.tensor([w, h], dtype=x.dtype, device=x.device).view(1, 2, 1, 1, 1)
        grid = (2 * (centres + offsets) / size - 1).view(b, 2, g, s, s, h, w)
        # pixel shuffle of each group's s*s children into [B*G, sH, sW, (x, y)], as one permute
        grid = grid.permute(0, 2, 5, 3, 6, 4, 1).reshape(b * g, s * h, s * w, 2)
        out = F.grid_sample(
            x.reshape(b * g, c // g, h, w),
            grid,
            mode="bilinear",
            padding_mode="border",
            align_corners=False,
        )
        # border padding clamps a NaN coordinate onto the first pixel; a point whose offset is NaN
        # (a NaN in x reaches its offsets) has no defined sample, so it stays NaN. In place:
        # grid_sample's backward does not read its output, and a copy would cost another pass.
        out.masked_fill_(grid.isnan().any(dim=-1).unsqueeze(1), float("nan"))
        return out.view(b, c, s * h, s * w)

    def forward(self, x: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
        return self.sample(x, self.offsets(x))

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, style={self.style!r}, groups={self.groups}, "
            f"dyscope={self.scope is not None}"
        )


@register_official("dysample.DySample")
def _from_dysample(
    state_dict,
    in_channels: int,
    scale: int = 2,
    style: str = "lp",
    groups: int = 4,
    dyscope: bool = False,
):
    module = DySample(in_channels, scale, style=style, groups=groups, dyscope=dyscope)
    return load_mapped(module, state_dict, {})
