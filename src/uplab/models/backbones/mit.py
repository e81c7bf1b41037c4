"""Mix Transformer (MiT), the hierarchical encoder of SegFormer (Xie et al., NeurIPS 2021, Sec. 3.1).

Four stages at strides 4, 8, 16 and 32. Each stage embeds overlapping patches with a strided
convolution (Eq. 1's "overlapped patch merging"), then runs transformer blocks whose attention
shortens the key/value sequence by a reduction ratio ``R`` (efficient self-attention, Eq. 2) and
whose feed-forward network carries a 3x3 depth-wise convolution instead of positional encodings
(Mix-FFN, Eq. 3). timm has no MiT, so it is written here; :func:`load_nvlabs_state_dict` maps the
key names of the released ImageNet checkpoints (``mit_b1.pth`` of NVlabs/SegFormer) onto it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["MIT_VARIANTS", "MixTransformer", "MiTVariant", "convert_nvlabs_state_dict"]


@dataclass(frozen=True)
class MiTVariant:
    """Sizes of one MiT model (Table 6 of the SegFormer paper)."""

    embed_dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int] = (1, 2, 5, 8)
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    mlp_ratio: int = 4


MIT_VARIANTS: dict[str, MiTVariant] = {
    "mit_b0": MiTVariant((32, 64, 160, 256), (2, 2, 2, 2)),
    "mit_b1": MiTVariant((64, 128, 320, 512), (2, 2, 2, 2)),
    "mit_b2": MiTVariant((64, 128, 320, 512), (3, 4, 6, 3)),
    "mit_b3": MiTVariant((64, 128, 320, 512), (3, 4, 18, 3)),
    "mit_b4": MiTVariant((64, 128, 320, 512), (3, 8, 27, 3)),
    "mit_b5": MiTVariant((64, 128, 320, 512), (3, 6, 40, 3)),
}

_LN_EPS = 1e-6  # the released MiT models use LayerNorm(eps=1e-6) throughout


class OverlapPatchEmbed(nn.Module):
    """Strided convolution over overlapping patches, then LayerNorm over channels (Eq. 1)."""

    def __init__(self, in_channels: int, embed_dim: int, patch_size: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, patch_size, stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(embed_dim, eps=_LN_EPS)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class EfficientSelfAttention(nn.Module):
    """Multi-head attention whose keys and values come from the sequence shortened by ``sr_ratio``
    in each direction (a strided convolution + LayerNorm), Eq. 2."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.reduce = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
            self.reduce_norm = nn.LayerNorm(dim, eps=_LN_EPS)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        heads = self.num_heads
        q = self.q(x).reshape(b, n, heads, c // heads).transpose(1, 2)
        source = x
        if self.sr_ratio > 1:
            reduced = self.reduce(x.transpose(1, 2).reshape(b, c, h, w))
            source = self.reduce_norm(reduced.flatten(2).transpose(1, 2))
        kv = self.kv(source).reshape(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
        attn = (q @ kv[0].transpose(-2, -1)) * self.scale
        out = attn.softmax(dim=-1) @ kv[1]
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class MixFFN(nn.Module):
    """``fc2(GELU(dwconv3x3(fc1(x))))``, Eq. 3."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = self.fc1(x)
        b, n, c = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
        return self.fc2(self.act(x))


class MiTBlock(nn.Module):
    """Pre-norm transformer block: attention then Mix-FFN, each residual, with stochastic depth."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, mlp_ratio: int, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.mlp = MixFFN(dim, dim * mlp_ratio)
        self.drop_path = drop_path

    def _residual(self, branch: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_path == 0.0:
            return branch
        keep = 1.0 - self.drop_path
        mask = branch.new_empty(branch.shape[0], 1, 1).bernoulli_(keep)
        return branch * mask / keep

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self._residual(self.attn(self.norm1(x), h, w))
        return x + self._residual(self.mlp(self.norm2(x), h, w))


class MiTStage(nn.Module):
    """Patch embedding, blocks, and a closing LayerNorm; returns an NCHW feature."""

    def __init__(self, in_channels, dim, depth, num_heads, sr_ratio, mlp_ratio, patch, stride, dpr):
        super().__init__()
        self.embed = OverlapPatchEmbed(in_channels, dim, patch, stride)
        self.blocks = nn.ModuleList(
            MiTBlock(dim, num_heads, sr_ratio, mlp_ratio, dpr[i]) for i in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=_LN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, h, w = self.embed(x)
        for block in self.blocks:
            x = block(x, h, w)
        return self.norm(x).transpose(1, 2).reshape(x.shape[0], -1, h, w)


class MixTransformer(nn.Module):
    """MiT encoder with the backbone interface of :class:`uplab.models.TimmBackbone`.

    Args:
        variant: ``"mit_b0"`` ... ``"mit_b5"`` (:data:`MIT_VARIANTS`).
        in_chans: input channels.
        drop_path_rate: stochastic depth, rising linearly over all blocks (0.1 in SegFormer).
        checkpoint: path of a released ImageNet checkpoint (NVlabs ``mit_bX.pth``) to load.

    Attributes:
        channels: channels of the four outputs, ``variant.embed_dims``.
        reductions: their strides, ``[4, 8, 16, 32]``.

    Example:
        >>> enc = MixTransformer("mit_b0")
        >>> [tuple(f.shape) for f in enc(torch.zeros(1, 3, 64, 64))]
        [(1, 32, 16, 16), (1, 64, 8, 8), (1, 160, 4, 4), (1, 256, 2, 2)]
    """

    def __init__(
        self,
        variant: str = "mit_b1",
        in_chans: int = 3,
        drop_path_rate: float = 0.1,
        checkpoint: str | None = None,
    ):
        super().__init__()
        if variant not in MIT_VARIANTS:
            raise ValueError(f"unknown MiT variant {variant!r}; choose one of {sorted(MIT_VARIANTS)}")
        v = MIT_VARIANTS[variant]
        self.variant = variant
        self.in_chans = in_chans
        dpr = torch.linspace(0, drop_path_rate, sum(v.depths)).tolist()
        stages, prev, start = [], in_chans, 0
        for i in range(4):
            patch, stride = (7, 4) if i == 0 else (3, 2)
            stage_dpr = dpr[start : start + v.depths[i]]
            stages.append(
                MiTStage(prev, v.embed_dims[i], v.depths[i], v.num_heads[i], v.sr_ratios[i],
                         v.mlp_ratio, patch, stride, stage_dpr)
            )
            prev, start = v.embed_dims[i], start + v.depths[i]
        self.stages = nn.ModuleList(stages)
        self.channels: list[int] = list(v.embed_dims)
        self.reductions: list[int] = [4, 8, 16, 32]
        self.apply(_init_weights)
        if checkpoint is not None:
            self.load_nvlabs(torch.load(checkpoint, map_location="cpu", weights_only=True))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"{type(self).__name__}: expected input [B, {self.in_chans}, H, W], got {tuple(x.shape)}"
            )
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features

    def load_nvlabs(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load a state dict with NVlabs/SegFormer's ``MixVisionTransformer`` key names, strictly
        (the ImageNet classifier ``head.*`` is dropped); a checkpoint wrapped as
        ``{"state_dict": ...}`` is unwrapped."""
        if "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
            state_dict = state_dict["state_dict"]
        self.load_state_dict(convert_nvlabs_state_dict(state_dict), strict=True)


def _init_weights(m: nn.Module) -> None:
    # SegFormer's initialisation: truncated normal linears, fan-out normal convolutions.
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
        nn.init.zeros_(m.bias)


# NVlabs name (after ``{stage}`` / ``{block}`` indices) -> this module's name
_NVLABS_RULES: Sequence[tuple[str, str]] = (
    (r"^patch_embed(\d)\.(proj|norm)\.", "stages.{s}.embed.{2}."),
    (r"^block(\d)\.(\d+)\.attn\.sr\.", "stages.{s}.blocks.{2}.attn.reduce."),
    (r"^block(\d)\.(\d+)\.attn\.norm\.", "stages.{s}.blocks.{2}.attn.reduce_norm."),
    (r"^block(\d)\.(\d+)\.mlp\.dwconv\.dwconv\.", "stages.{s}.blocks.{2}.mlp.dwconv."),
    (r"^block(\d)\.(\d+)\.", "stages.{s}.blocks.{2}."),
    (r"^norm(\d)\.", "stages.{s}.norm."),
)


def convert_nvlabs_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename NVlabs ``MixVisionTransformer`` keys (``patch_embed1.proj.weight``,
    ``block2.0.attn.sr.weight``, ``norm4.bias``, ...) to :class:`MixTransformer`'s.

    The ImageNet classifier (``head.*``) has no counterpart and is dropped; any other key that
    matches no rule raises ``ValueError``, so a wrong checkpoint fails loudly.
    """
    converted = {}
    for key, value in state_dict.items():
        if key.startswith("head."):
            continue
        for pattern, template in _NVLABS_RULES:
            match = re.match(pattern, key)
            if match:
                groups = match.groups()
                new_prefix = template.format(None, *groups, s=int(groups[0]) - 1)
                converted[new_prefix + key[match.end():]] = value
                break
        else:
            raise ValueError(
                f"key {key!r} is not a MixVisionTransformer key of NVlabs/SegFormer "
                "(expected patch_embedN.*, blockN.M.*, normN.* or head.*)"
            )
    return converted
