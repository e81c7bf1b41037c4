"""SAPA: similarity-aware point affiliation (Lu et al., NeurIPS 2022).

Each high-resolution point gets a kernel over the ``K x K`` window around its low-resolution parent:
the softmax of the similarity between its encoder (``guide``) feature and the decoder (``x``)
features of that window; the kernel then reassembles the (un-normalised) decoder feature:

    ``out = carafe(x, softmax_K²(local_similarity(q(guide), k(x))))``

The variants differ in the similarity: inner product (SAPA-I, parameter-free), bilinear (SAPA-B:
linear embeddings after LayerNorm) and gated bilinear (SAPA-G: the query mixes encoder and decoder
embeddings with a decoder-dependent gate).

Registers ``sapa_i``, ``sapa_b``, ``sapa_g`` and the converters for ``SAPA-I``, ``SAPA.SAPA`` and
``SAPAExp.SAPAExp`` (poppinace/sapa).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from uplab.ops import carafe, local_similarity
from uplab.upsamplers.base import Upsampler, require_odd_int, require_positive_int
from uplab.upsamplers.official import load_mapped, register_official
from uplab.upsamplers.registry import register

QUERY_MODES = ("gate", "cat")


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 2, 3, 1)


def _channels_first(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 3, 1, 2).contiguous()


def _nearest_up_channels_last(t: torch.Tensor, scale: int) -> torch.Tensor:
    # integer repeats, exact for every scale (interpolate's float scale can round an index off)
    return t.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)


def _similarity_upsample(x, query, key, kernel_size, scale, backend):
    """``carafe(x, softmax(local_similarity(query, key)))``: the SAPA kernel and its application."""
    kernels = F.softmax(local_similarity(query, key, kernel_size, scale, backend=backend), dim=1)
    return carafe(x, kernels, kernel_size, scale, backend=backend)


@register("sapa_i")
class SAPAI(Upsampler):
    """SAPA-I: inner-product similarity between ``guide`` and ``x`` themselves, no parameters.

    ``out = carafe(x, softmax_K²(<guide[p], x[n]>))`` over the ``K x K`` neighbours ``n`` of each
    point's parent. The similarity needs ``guide`` and ``x`` in the same space, so their channels
    must agree.

    Args:
        in_channels: channels of ``x`` (and of ``guide``). ``None`` accepts any channel count (the
            released functional form, used to load the ``SAPA-I`` reference); the ops then check
            that ``x`` and ``guide`` fit each other.
        scale: integer ratio ``s``.
        guide_channels: must equal ``in_channels`` when given.
        kernel_size: odd window ``K`` (5 in the paper).
        backend: passed to the ops.

    Example:
        >>> up = SAPAI(16)
        >>> up(torch.randn(1, 16, 5, 7), guide=torch.randn(1, 16, 10, 14)).shape
        torch.Size([1, 16, 10, 14])
    """

    guided = True

    def __init__(
        self,
        in_channels: int | None,
        scale: int = 2,
        guide_channels: int | None = None,
        kernel_size: int = 5,
        backend: str = "auto",
    ):
        if in_channels is not None and guide_channels not in (None, in_channels):
            raise ValueError(
                f"SAPA-I compares guide and x directly, so guide_channels must equal in_channels "
                f"({in_channels}); got guide_channels={guide_channels}. Use sapa_b or sapa_g, "
                f"which embed both into a common space."
            )
        super().__init__(1 if in_channels is None else in_channels, scale)
        if in_channels is None:
            self.in_channels = self.guide_channels = self.out_channels = None
        require_odd_int("kernel_size", kernel_size)
        self.kernel_size = kernel_size
        self.backend = backend

    def check_inputs(self, x: torch.Tensor, guide: torch.Tensor | None) -> None:
        if self.in_channels is not None:
            super().check_inputs(x, guide)
            return
        if guide is None:
            raise ValueError(
                "SAPAI is a guided upsampler: forward(x, guide) needs the high-resolution "
                "encoder feature, got guide=None"
            )
        self.check_tensors(x, guide)

    def forward(self, x: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
        return _similarity_upsample(x, guide, x, self.kernel_size, self.scale, self.backend)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kernel_size={self.kernel_size}"


class _EmbeddedSAPA(Upsampler):
    """Shared body of SAPA-B and SAPA-G: LayerNorm on both inputs, a linear key embedding of the
    normalised ``x``, optionally a linear value embedding; subclasses define the query."""

    guided = True

    def __init__(
        self,
        in_channels: int,
        scale: int = 2,
        guide_channels: int | None = None,
        kernel_size: int = 5,
        embedding_dim: int = 64,
        qkv_bias: bool = True,
        norm: bool = True,
        value_embedding: bool = False,
        out_channels: int | None = None,
        backend: str = "auto",
    ):
        super().__init__(in_channels, scale, guide_channels)
        require_odd_int("kernel_size", kernel_size)
        require_positive_int("embedding_dim", embedding_dim)
        if out_channels is not None:
            require_positive_int("out_channels", out_channels)
        self.kernel_size = kernel_size
        self.embedding_dim = embedding_dim
        self.backend = backend
        self.out_channels = in_channels if out_channels is None else out_channels
        self.guide_norm = nn.LayerNorm(self.guide_channels) if norm else nn.Identity()
        self.x_norm = nn.LayerNorm(in_channels) if norm else nn.Identity()
        self.key = nn.Linear(in_channels, embedding_dim, bias=qkv_bias)
        # the released SAPAExp embeds values whenever asked to or when the width changes
        self.value = (
            nn.Linear(in_channels, self.out_channels, bias=qkv_bias)
            if value_embedding or self.out_channels != in_channels
            else None
        )

    def reset_parameters(self) -> None:
        """The released initialisation: truncated normal (std 0.02) linears, zero biases."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def query(self, guide_normed: torch.Tensor, x: torch.Tensor, x_normed: torch.Tensor):
        """Channels-last query ``[B, sH, sW, E]`` from the channels-last inputs."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
        x_cl = _channels_last(x)
        x_normed = self.x_norm(x_cl)
        query = self.query(self.guide_norm(_channels_last(guide)), x_cl, x_normed)
        key = self.key(x_normed)
        values = x if self.value is None else _channels_first(self.value(x_normed))
        return _similarity_upsample(
            values,
            _channels_first(query),
            _channels_first(key),
            self.kernel_size,
            self.scale,
            self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, guide_channels={self.guide_channels}, "
            f"kernel_size={self.kernel_size}, embedding_dim={self.embedding_dim}"
        )


@register("sapa_b")
class SAPAB(_EmbeddedSAPA):
    """SAPA-B: bilinear similarity ``<W_q LN(guide[p]), W_k LN(x[n])>`` (released ``SAPA.SAPA``).

    Values are the un-normalised ``x``. ``guide`` and ``x`` may have different channel counts: the
    query and key embeddings map both to ``embedding_dim``.

    Args:
        in_channels: channels of ``x`` (the released ``dim_x``).
        scale: integer ratio ``s`` (``up_factor``).
        guide_channels: channels of ``guide`` (``dim_y``; default ``in_channels``).
        kernel_size: odd window ``K`` (``up_kernel_size``, 5).
        embedding_dim: width of the query/key embedding. The released default is 64; the
            papers' SegFormer runs used 32 (see ``conf/upsampler/sapa_b.yaml``).
        qkv_bias: biases in the embeddings.
        norm: LayerNorm on both inputs before embedding (as released); ``False`` skips it.
        value_embedding: also embed the values linearly (``SAPAExp``'s ``v_embed``).
        out_channels: output channels (default ``in_channels``; another width embeds values).
        backend: passed to the ops.

    Example:
        >>> up = SAPAB(16, guide_channels=8, embedding_dim=32)
        >>> up(torch.randn(1, 16, 5, 7), guide=torch.randn(1, 8, 10, 14)).shape
        torch.Size([1, 16, 10, 14])
    """

    def __init__(self, in_channels: int, scale: int = 2, guide_channels: int | None = None, **kw):
        super().__init__(in_channels, scale, guide_channels, **kw)
        self.query_embedding = nn.Linear(
            self.guide_channels, self.embedding_dim, bias=self.key.bias is not None
        )
        self.reset_parameters()

    def query(self, guide_normed, x, x_normed):
        return self.query_embedding(guide_normed)


@register("sapa_g")
class SAPAG(_EmbeddedSAPA):
    """SAPA-G: gated bilinear similarity (released ``SAPAExp.SAPAExp``).

    With ``q_mode="gate"`` (SAPA-G) the query mixes an encoder and a decoder embedding,
    ``q = g * W_qy LN(guide) + (1 - g) * W_qx up(x)``, ``g = up(sigmoid(w_g LN(x)))`` with ``up``
    nearest upsampling; as released, the decoder query reads the un-normalised ``x``. With
    ``q_mode="cat"`` the query embeds the concatenation ``[LN(guide), up(x)]``. Keys and values are
    as in SAPA-B.

    Args:
        in_channels: channels of ``x`` (``dim_x``).
        scale: integer ratio ``s`` (``up_factor``).
        guide_channels: channels of ``guide`` (``dim_y``; default ``in_channels``).
        q_mode: ``"gate"`` (SAPA-G, default) or ``"cat"``.
        **kw: ``kernel_size``, ``embedding_dim`` (released default 64; the papers' SegFormer runs
            used 32), ``qkv_bias``, ``norm``, ``value_embedding``, ``out_channels``, ``backend``,
            as in :class:`SAPAB`.

    Example:
        >>> up = SAPAG(16, embedding_dim=32)
        >>> up(torch.randn(1, 16, 5, 7), guide=torch.randn(1, 16, 10, 14)).shape
        torch.Size([1, 16, 10, 14])
    """

    def __init__(
        self,
        in_channels: int,
        scale: int = 2,
        guide_channels: int | None = None,
        q_mode: str = "gate",
        **kw,
    ):
        super().__init__(in_channels, scale, guide_channels, **kw)
        if q_mode not in QUERY_MODES:
            raise ValueError(f"q_mode must be one of {QUERY_MODES}, got {q_mode!r}")
        self.q_mode = q_mode
        bias = self.key.bias is not None
        if q_mode == "gate":
            self.query_guide = nn.Linear(self.guide_channels, self.embedding_dim, bias=bias)
            self.query_x = nn.Linear(in_channels, self.embedding_dim, bias=bias)
            self.gate = nn.Linear(in_channels, 1, bias=bias)
        else:
            self.query_embedding = nn.Linear(
                self.guide_channels + in_channels, self.embedding_dim, bias=bias
            )
        self.reset_parameters()

    def query(self, guide_normed, x, x_normed):
        s = self.scale
        if self.q_mode == "cat":
            x_up = _nearest_up_channels_last(x, s)
            return self.query_embedding(torch.cat([guide_normed, x_up], dim=-1))
        # a linear map commutes with nearest upsampling, so the decoder terms run at low resolution
        gate = _nearest_up_channels_last(torch.sigmoid(self.gate(x_normed)), s)
        from_x = _nearest_up_channels_last(self.query_x(x), s)
        return gate * self.query_guide(guide_normed) + (1 - gate) * from_x

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, q_mode={self.q_mode!r}"


@register_official("SAPA-I")
def _from_sapa_i(state_dict, kernel_size: int = 5, scale_factor: int = 2, channels=None):
    return load_mapped(SAPAI(channels, scale_factor, kernel_size=kernel_size), state_dict, {})


def _released_norm(norm) -> bool:
    if norm is None or norm is False or norm is nn.Identity:
        return False
    if norm is True or norm is nn.LayerNorm:
        return True
    raise ValueError(f"norm must be nn.LayerNorm or None (no norm), got {norm!r}")


_SHARED_KEYS = {
    "norm_y.weight": "guide_norm.weight",
    "norm_y.bias": "guide_norm.bias",
    "norm_x.weight": "x_norm.weight",
    "norm_x.bias": "x_norm.bias",
    "k.weight": "key.weight",
    "k.bias": "key.bias",
    "v.weight": "value.weight",
    "v.bias": "value.bias",
    "q.weight": "query_embedding.weight",
    "q.bias": "query_embedding.bias",
    "qy.weight": "query_guide.weight",
    "qy.bias": "query_guide.bias",
    "qx.weight": "query_x.weight",
    "qx.bias": "query_x.bias",
}


def _released_options(up_factor, up_kernel_size, embedding_dim, qkv_bias, norm):
    return dict(
        scale=up_factor,
        kernel_size=up_kernel_size,
        embedding_dim=embedding_dim,
        qkv_bias=qkv_bias,
        norm=_released_norm(norm),
    )


@register_official("SAPA.SAPA")
def _from_sapa(
    state_dict,
    dim_y: int,
    dim_x: int | None = None,
    up_factor: int = 2,
    up_kernel_size: int = 5,
    embedding_dim: int = 64,
    qkv_bias: bool = True,
    norm=nn.LayerNorm,
):
    module = SAPAB(
        dim_y if dim_x is None else dim_x,
        guide_channels=dim_y,
        **_released_options(up_factor, up_kernel_size, embedding_dim, qkv_bias, norm),
    )
    return load_mapped(module, state_dict, _SHARED_KEYS)


@register_official("SAPAExp.SAPAExp")
def _from_sapa_exp(
    state_dict,
    dim_y: int,
    dim_x: int | None = None,
    out_dim: int | None = None,
    q_mode: str = "encoder_only",
    v_embed: bool = False,
    up_factor: int = 2,
    up_kernel_size: int = 5,
    embedding_dim: int = 64,
    qkv_bias: bool = True,
    norm=nn.LayerNorm,
):
    dim_x = dim_y if dim_x is None else dim_x
    options = _released_options(up_factor, up_kernel_size, embedding_dim, qkv_bias, norm)
    options.update(guide_channels=dim_y, value_embedding=v_embed, out_channels=out_dim)
    # 'encoder_only' is SAPA-B's query; the other modes are SAPA-G's
    if q_mode == "encoder_only":
        module = SAPAB(dim_x, **options)
    else:
        module = SAPAG(dim_x, q_mode=q_mode, **options)
    return load_mapped(module, state_dict, _SHARED_KEYS)
