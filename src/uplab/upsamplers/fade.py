"""FADE: fusing the assets of decoder and encoder (Lu et al., ECCV 2022; extended in IJCV 2024).

Kernels come from both features through semi-shift convolution; a decoder-dependent gate then
mixes the encoder feature with the reassembled decoder feature:

    ``out = g * guide + (1 - g) * carafe(x, softmax_K²(semi_shift(x, guide)))``

Registers ``fade``, ``fade_lite`` and ``semishift`` and the converters for the released
``FADE_L2H.FADE``, ``FADE_L2H.FADELite``, ``FADE_L2H.SemiShiftUp`` and ``FADE_H2L.FADE``
(poppinace/fade). Released limits removed here: the gate and the semi-shift hard-code ``x2``
nearest upsampling (any integer scale here), and the H2L formulation is square-only (the L2H
formulation used here computes the same kernels for any ``H x W``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from uplab.ops import carafe
from uplab.upsamplers.base import Upsampler, require_odd_int, require_positive_int
from uplab.upsamplers.official import load_mapped, register_official
from uplab.upsamplers.registry import register


def _nearest_up(t: torch.Tensor, scale: int) -> torch.Tensor:
    # integer repeats, exact for every scale (interpolate's float scale can round an index off)
    return t.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)


def _xavier_init(module: nn.Module) -> None:
    """The released initialisation (mmcv ``xavier_init(distribution='uniform')``)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class SemiShiftKernels(nn.Module):
    """Kernel logits by semi-shift convolution (Lu et al., FADE, ECCV 2022).

    The logits of a high-resolution point come from one set of ``k x k`` weights slid over two
    maps: the compressed encoder feature, around the point itself, and the compressed decoder
    feature, around the point's low-resolution parent (the decoder window moves once every ``s``
    points, hence "semi-shift"). Each term is an ordinary convolution at its own resolution:

        ``content_encoder(compress_guide(guide)) + up(content_encoder(compress_x(x)))``

    with ``up`` nearest upsampling; the shared ``content_encoder`` adds its bias in both terms, as
    released.

    Args:
        in_channels: channels of the decoder feature ``x``.
        guide_channels: channels of the encoder feature ``guide``.
        kernel_size: reassembly window ``K``; the encoder emits ``K*K`` logits.
        scale: integer ratio ``s``.
        embedding_dim: compressed channels (64 in FADE).
        encoder_kernel_size: odd size ``k`` of the content encoder (3).
        depthwise: FADE-Lite's depth-wise content encoder; needs ``embedding_dim == K*K``.
    """

    def __init__(
        self,
        in_channels: int,
        guide_channels: int,
        kernel_size: int,
        scale: int,
        embedding_dim: int = 64,
        encoder_kernel_size: int = 3,
        depthwise: bool = False,
    ):
        super().__init__()
        require_odd_int("encoder_kernel_size", encoder_kernel_size)
        require_positive_int("embedding_dim", embedding_dim)
        if depthwise and embedding_dim != kernel_size**2:
            raise ValueError(
                f"a depth-wise content encoder maps K*K = {kernel_size**2} channels to themselves, "
                f"so embedding_dim must be {kernel_size**2}; got {embedding_dim}"
            )
        self.scale = scale
        self.compressor_guide = nn.Conv2d(guide_channels, embedding_dim, 1)
        self.compressor_x = nn.Conv2d(in_channels, embedding_dim, 1, bias=False)
        self.content_encoder = nn.Conv2d(
            embedding_dim,
            kernel_size**2,
            encoder_kernel_size,
            padding=encoder_kernel_size // 2,
            groups=embedding_dim if depthwise else 1,
        )
        _xavier_init(self)

    def forward(self, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, K*K, sH, sW]`` (not normalised)."""
        from_guide = self.content_encoder(self.compressor_guide(guide))
        from_x = self.content_encoder(self.compressor_x(x))
        return from_guide + _nearest_up(from_x, self.scale)


class GateFromDecoder(nn.Module):
    """FADE's decoder-dependent gate ``g = sigmoid(up(conv1x1(x)))`` ``[B, 1, sH, sW]``: how
    much of the encoder feature passes at each point (Lu et al., FADE, ECCV 2022)."""

    def __init__(self, in_channels: int, scale: int):
        super().__init__()
        self.scale = scale
        self.conv = nn.Conv2d(in_channels, 1, 1)
        _xavier_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(_nearest_up(self.conv(x), self.scale))


@register("semishift")
class SemiShiftUp(Upsampler):
    """Semi-shift upsampling: FADE's kernels without the gate (released ``SemiShiftUp``).

    ``out = carafe(x, softmax_K²(semi_shift(x, guide)))``. ``guide`` may have any channel count.

    Args:
        in_channels: channels of ``x`` (the released ``in_channels_de``).
        scale: integer ratio ``s``.
        guide_channels: channels of ``guide`` (``in_channels_en``; default ``in_channels``).
        kernel_size: odd reassembly window ``K`` (``up_kernel_size``, 5).
        embedding_dim: compressed channels of the semi-shift convolution (default 64, or ``K*K``
            with the depth-wise encoder, which allows no other width).
        encoder_kernel_size: odd size of the content encoder (3).
        depthwise_encoder: FADE-Lite's depth-wise content encoder on ``K*K`` compressed channels.
        backend: passed to :func:`uplab.ops.carafe`.

    Example:
        >>> up = SemiShiftUp(16, guide_channels=8)
        >>> up(torch.randn(1, 16, 5, 7), guide=torch.randn(1, 8, 10, 14)).shape
        torch.Size([1, 16, 10, 14])
    """

    guided = True

    def __init__(
        self,
        in_channels: int,
        scale: int = 2,
        guide_channels: int | None = None,
        kernel_size: int = 5,
        embedding_dim: int | None = None,
        encoder_kernel_size: int = 3,
        depthwise_encoder: bool = False,
        backend: str = "auto",
    ):
        super().__init__(in_channels, scale, guide_channels)
        require_odd_int("kernel_size", kernel_size)
        self.kernel_size = kernel_size
        self.backend = backend
        if embedding_dim is None:
            embedding_dim = kernel_size**2 if depthwise_encoder else 64
        self.kernels = SemiShiftKernels(
            in_channels,
            self.guide_channels,
            kernel_size,
            scale,
            embedding_dim=embedding_dim,
            encoder_kernel_size=encoder_kernel_size,
            depthwise=depthwise_encoder,
        )

    def reassemble(self, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        """``carafe(x, softmax_K²(semi_shift(x, guide)))``."""
        kernels = F.softmax(self.kernels(x, guide), dim=1)
        return carafe(x, kernels, self.kernel_size, self.scale, backend=self.backend)

    def forward(self, x: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
        return self.reassemble(x, guide)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, guide_channels={self.guide_channels}, "
            f"kernel_size={self.kernel_size}"
        )


@register("fade")
class FADE(SemiShiftUp):
    """FADE (Lu et al., ECCV 2022 / IJCV 2024; released ``FADE_L2H.FADE``).

    ``out = g * guide + (1 - g) * carafe(x, softmax_K²(semi_shift(x, guide)))`` with
    ``g = sigmoid(up(conv1x1(x)))`` (:class:`GateFromDecoder`) and the kernels of
    :class:`SemiShiftKernels`.

    The ``g * guide`` term needs ``guide`` with ``in_channels`` channels. For an encoder of another
    width, ``align_guide=True`` adds a 1x1 convolution ``guide_channels -> in_channels`` (the
    released code has it commented out); it is off by default so parameter counts match the
    papers'.

    Args:
        in_channels: channels of ``x`` (``in_channels_de``).
        scale: integer ratio ``s`` (the released gate and semi-shift support 2 only).
        guide_channels: channels of ``guide`` (``in_channels_en``; default ``in_channels``).
        kernel_size: odd reassembly window ``K`` (5).
        embedding_dim: compressed channels of the semi-shift convolution (64).
        encoder_kernel_size: odd size of the content encoder (3).
        align_guide: add the 1x1 aligner for ``guide_channels != in_channels``.
        depthwise_encoder: FADE-Lite's encoder (prefer :class:`FADELite`).
        backend: passed to :func:`uplab.ops.carafe`.

    Example:
        >>> up = FADE(16, scale=3, guide_channels=8, align_guide=True)
        >>> up(torch.randn(1, 16, 5, 7), guide=torch.randn(1, 8, 15, 21)).shape
        torch.Size([1, 16, 15, 21])
    """

    def __init__(
        self,
        in_channels: int,
        scale: int = 2,
        guide_channels: int | None = None,
        align_guide: bool = False,
        **kw,
    ):
        super().__init__(in_channels, scale, guide_channels, **kw)
        if self.guide_channels != in_channels and not align_guide:
            raise ValueError(
                f"{type(self).__name__} passes the guide through its gate (g * guide), so guide "
                f"channels must equal in_channels ({in_channels}); got guide_channels="
                f"{self.guide_channels}. Pass align_guide=True to add a 1x1 aligner."
            )
        self.gate = GateFromDecoder(in_channels, scale)
        self.guide_aligner = nn.Conv2d(self.guide_channels, in_channels, 1) if align_guide else None
        if self.guide_aligner is not None:
            _xavier_init(self.guide_aligner)

    def forward(self, x: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
        gate = self.gate(x)
        passed = guide if self.guide_aligner is None else self.guide_aligner(guide)
        return gate * passed + (1 - gate) * self.reassemble(x, guide)


@register("fade_lite")
class FADELite(FADE):
    """FADE-Lite (IJCV 2024; released ``FADE_L2H.FADELite``): FADE with the semi-shift
    convolution's content encoder made depth-wise on ``K*K`` compressed channels.

    Args:
        in_channels, scale, guide_channels, kernel_size, encoder_kernel_size, align_guide,
        backend: as in :class:`FADE`.

    Example:
        >>> up = FADELite(16)
        >>> up(torch.randn(1, 16, 5, 7), guide=torch.randn(1, 16, 10, 14)).shape
        torch.Size([1, 16, 10, 14])
    """

    def __init__(self, in_channels: int, scale: int = 2, guide_channels: int | None = None, **kw):
        if "depthwise_encoder" in kw:
            raise ValueError(
                "FADELite's content encoder is always depth-wise; depthwise_encoder is not an "
                "option here (use fade for the full encoder)"
            )
        super().__init__(in_channels, scale, guide_channels, depthwise_encoder=True, **kw)


_L2H_KERNEL_KEYS = {
    "ker_generator.compressor_en.weight": "kernels.compressor_guide.weight",
    "ker_generator.compressor_en.bias": "kernels.compressor_guide.bias",
    "ker_generator.compressor_de.weight": "kernels.compressor_x.weight",
    "ker_generator.content_encoder.weight": "kernels.content_encoder.weight",
    "ker_generator.content_encoder.bias": "kernels.content_encoder.bias",
}
_H2L_KERNEL_KEYS = {
    "kernel_generator.conv1_en.weight": "kernels.compressor_guide.weight",
    "kernel_generator.conv1_en.bias": "kernels.compressor_guide.bias",
    "kernel_generator.conv1_de.weight": "kernels.compressor_x.weight",
    "kernel_generator.conv2_kernels": "kernels.content_encoder.weight",
    "kernel_generator.conv2_bias": "kernels.content_encoder.bias",
}
_GATE_KEYS = {
    "gate_generator.conv.weight": "gate.conv.weight",
    "gate_generator.conv.bias": "gate.conv.bias",
    "aligner.conv.weight": "guide_aligner.weight",
    "aligner.conv.bias": "guide_aligner.bias",
}


def _convert(
    cls, state_dict, key_map, encoder_key, in_channels_en, in_channels_de, scale, kernel_size
):
    """Build ``cls`` with the released constructor's settings; the compressed width and the
    encoder size are read off the weights, an aligner is added when the checkpoint has one."""
    encoder = state_dict[encoder_key]
    options = {"kernel_size": kernel_size, "encoder_kernel_size": encoder.shape[-1]}
    if cls is not FADELite:
        options["embedding_dim"] = encoder.shape[1]
    if cls is not SemiShiftUp:
        options["align_guide"] = "aligner.conv.weight" in state_dict
    in_channels = in_channels_en if in_channels_de is None else in_channels_de
    module = cls(in_channels, scale, guide_channels=in_channels_en, **options)
    return load_mapped(module, state_dict, key_map)


_L2H_ENCODER = "ker_generator.content_encoder.weight"
_H2L_ENCODER = "kernel_generator.conv2_kernels"

# released class -> (uplab class, key map, key of the content encoder's weight). The stride-2
# (high-to-low) formulation evaluates the same semi-shift convolution at each of the s*s sub-pixel
# phases, so its weights map one-to-one onto the L2H module.
_RELEASED = {
    "FADE_L2H.FADE": (FADE, {**_GATE_KEYS, **_L2H_KERNEL_KEYS}, _L2H_ENCODER),
    "FADE_L2H.FADELite": (FADELite, {**_GATE_KEYS, **_L2H_KERNEL_KEYS}, _L2H_ENCODER),
    "FADE_L2H.SemiShiftUp": (SemiShiftUp, _L2H_KERNEL_KEYS, _L2H_ENCODER),
    "FADE_H2L.FADE": (FADE, {**_GATE_KEYS, **_H2L_KERNEL_KEYS}, _H2L_ENCODER),
}


def _converter(official_class: str):
    cls, key_map, encoder_key = _RELEASED[official_class]

    def convert(state_dict, in_channels_en, in_channels_de=None, scale=2, up_kernel_size=5):
        return _convert(
            cls, state_dict, key_map, encoder_key, in_channels_en, in_channels_de, scale,
            up_kernel_size,
        )  # fmt: skip

    convert.__name__ = f"_from_{official_class.replace('.', '_')}"
    return convert


for _official_class in _RELEASED:
    register_official(_official_class)(_converter(_official_class))
