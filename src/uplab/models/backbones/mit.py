"""Mix Transformer (MiT), the hierarchical encoder of SegFormer (Xie et al., NeurIPS 2021, Sec. 3.1).

Four stages at strides 4, 8, 16 and 32. Each stage embeds overlapping patches with a strided
convolution (Eq. 1's "overlapped patch merging"), then runs transformer blocks whose attention
shortens the key/value sequence by a reduction ratio ``R`` (efficient self-attention, Eq. 2) and
whose feed-forward network carries a 3x3 depth-wise convolution instead of positional encodings
(Mix-FFN, Eq. 3). timm has no MiT, so it is written here.

The ImageNet weights load in either of their two released forms, told apart by their key names
(:func:`checkpoint_format`): NVlabs/SegFormer's ``mit_b1.pth`` (:func:`convert_nvlabs_state_dict`)
or Hugging Face's ``nvidia/mit-b1`` (``model.safetensors`` or ``pytorch_model.bin`` of a
``transformers`` SegFormer, :func:`convert_hf_state_dict`). Both hold the same tensors; the Hugging
Face port only splits the fused key/value projection in two and uses LayerNorm eps 1e-5 where NVlabs
uses 1e-6 (:attr:`MiTVariant.norm_eps`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file as load_safetensors
from torch import nn

from uplab.weights import load_strict

__all__ = [
    "MIT_VARIANTS",
    "MixTransformer",
    "MiTVariant",
    "checkpoint_format",
    "convert_hf_state_dict",
    "convert_nvlabs_state_dict",
    "convert_state_dict",
]


@dataclass(frozen=True)
class MiTVariant:
    """Sizes of one MiT model (Table 6 of the SegFormer paper).

    ``norm_eps`` is the eps of the blocks' and stages' LayerNorms: 1e-6 in NVlabs' release, 1e-5 in
    the ``transformers`` port. The patch-embedding and key/value-reduction norms use PyTorch's
    default 1e-5 in both.
    """

    embed_dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int] = (1, 2, 5, 8)
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    mlp_ratio: int = 4
    norm_eps: float = 1e-6


MIT_VARIANTS: dict[str, MiTVariant] = {
    "mit_b0": MiTVariant((32, 64, 160, 256), (2, 2, 2, 2)),
    "mit_b1": MiTVariant((64, 128, 320, 512), (2, 2, 2, 2)),
    "mit_b2": MiTVariant((64, 128, 320, 512), (3, 4, 6, 3)),
    "mit_b3": MiTVariant((64, 128, 320, 512), (3, 4, 18, 3)),
    "mit_b4": MiTVariant((64, 128, 320, 512), (3, 8, 27, 3)),
    "mit_b5": MiTVariant((64, 128, 320, 512), (3, 6, 40, 3)),
}

class OverlapPatchEmbed(nn.Module):
    """Strided convolution over overlapping patches, then LayerNorm over channels (Eq. 1)."""

    def __init__(self, in_channels: int, embed_dim: int, patch_size: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, patch_size, stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(embed_dim)

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
            self.reduce_norm = nn.LayerNorm(dim)

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

    def __init__(
        self,
        dim: int,
        num_heads: int,
        sr_ratio: int,
        mlp_ratio: int,
        drop_path: float,
        norm_eps: float,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
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

    def __init__(
        self, in_channels, dim, depth, num_heads, sr_ratio, mlp_ratio, patch, stride, dpr, norm_eps
    ):
        super().__init__()
        self.embed = OverlapPatchEmbed(in_channels, dim, patch, stride)
        self.blocks = nn.ModuleList(
            MiTBlock(dim, num_heads, sr_ratio, mlp_ratio, dpr[i], norm_eps) for i in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, h, w = self.embed(x)
        for block in self.blocks:
            x = block(x, h, w)
        return self.norm(x).transpose(1, 2).reshape(x.shape[0], -1, h, w)


class MixTransformer(nn.Module):
    """MiT encoder with the backbone interface of :class:`uplab.models.TimmBackbone`.

    Args:
        variant: ``"mit_b0"`` ... ``"mit_b5"`` (:data:`MIT_VARIANTS`), or a :class:`MiTVariant`.
        in_chans: input channels.
        drop_path_rate: stochastic depth, rising linearly over all blocks (0.1 in SegFormer).
        checkpoint: path of released ImageNet weights to load (:meth:`load_pretrained`): NVlabs'
            ``mit_bX.pth``, or Hugging Face's ``model.safetensors`` / ``pytorch_model.bin``.

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
        variant: str | MiTVariant = "mit_b1",
        in_chans: int = 3,
        drop_path_rate: float = 0.1,
        checkpoint: str | os.PathLike | None = None,
    ):
        super().__init__()
        if isinstance(variant, MiTVariant):
            v = variant
        elif variant in MIT_VARIANTS:
            v = MIT_VARIANTS[variant]
        else:
            raise ValueError(
                f"unknown MiT variant {variant!r}; choose one of {sorted(MIT_VARIANTS)} "
                "or pass a MiTVariant"
            )
        self.variant = variant
        self.in_chans = in_chans
        dpr = torch.linspace(0, drop_path_rate, sum(v.depths), device="cpu").tolist()  # a number list, on any default device
        stages, prev, start = [], in_chans, 0
        for i in range(4):
            patch, stride = (7, 4) if i == 0 else (3, 2)
            stage_dpr = dpr[start : start + v.depths[i]]
            stages.append(
                MiTStage(prev, v.embed_dims[i], v.depths[i], v.num_heads[i], v.sr_ratios[i],
                         v.mlp_ratio, patch, stride, stage_dpr, v.norm_eps)
            )
            prev, start = v.embed_dims[i], start + v.depths[i]
        self.stages = nn.ModuleList(stages)
        self.channels: list[int] = list(v.embed_dims)
        self.reductions: list[int] = [4, 8, 16, 32]
        self.apply(_init_weights)
        if checkpoint is not None:
            self.load_pretrained(checkpoint)

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

    def load_pretrained(self, checkpoint: str | os.PathLike | Mapping[str, torch.Tensor]) -> None:
        """Load released weights strictly, NVlabs or Hugging Face key names alike
        (:func:`convert_state_dict`, then :func:`uplab.weights.load_strict`: every encoder tensor
        set, every checkpoint tensor but the ImageNet classifier used).

        Args:
            checkpoint: a state dict, or the path of one: ``*.safetensors`` is read with
                safetensors, anything else with ``torch.load(weights_only=True)``.
        """
        source = "the MiT checkpoint"
        if not isinstance(checkpoint, Mapping):
            source = str(checkpoint)
            checkpoint = _read_checkpoint(checkpoint)
        load_strict(self, convert_state_dict(checkpoint), source)

    def load_nvlabs(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load a state dict with NVlabs/SegFormer's ``MixVisionTransformer`` key names, strictly
        (the ImageNet classifier ``head.*`` is dropped); a checkpoint wrapped as
        ``{"state_dict": ...}`` is unwrapped."""
        load_strict(self, convert_nvlabs_state_dict(_unwrap(state_dict)), "the NVlabs MiT checkpoint")


def _read_checkpoint(path: str | os.PathLike) -> Mapping[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"MixTransformer: expected ImageNet MiT weights at {path}, which does not exist; "
            "fetch them with python scripts/fetch_weights.py mit_b1 (reference/weights.yaml), "
            "or point backbone.checkpoint at NVlabs' mit_b1.pth or Hugging Face's nvidia/mit-b1 file"
        )
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def _unwrap(state_dict: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    # mmcv / mmseg checkpoints keep the weights under "state_dict", beside "meta"
    if isinstance(state_dict, Mapping) and isinstance(state_dict.get("state_dict"), Mapping):
        return state_dict["state_dict"]
    return state_dict


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


# Where a tensor of transformers' SegFormer encoder sits: its stage, its block within the stage if
# any, and the kind of part. Hub checkpoints (and ``save_pretrained`` of every version) use the
# first form; the modules of transformers >= 5 name themselves the second way in memory.
_HF_LOCATIONS = (
    re.compile(
        r"encoder\.(?P<kind>patch_embeddings|block|layer_norm)\.(?P<stage>\d+)\.(?:(?P<block>\d+)\.)?"
    ),
    re.compile(
        r"stages\.(?P<stage>\d+)\.(?P<kind>patch_embeddings|blocks|layer_norm)\.(?:(?P<block>\d+)\.)?"
    ),
)
_HF_EMBED_MODULES = {"proj": "proj", "layer_norm": "norm"}
# module inside a block -> (this module's name, half of the fused key/value projection or None)
_HF_BLOCK_MODULES: Mapping[str, tuple[str, int | None]] = {
    "layer_norm_1": ("norm1", None),
    "attention.self.query": ("attn.q", None),
    "attention.self.key": ("attn.kv", 0),
    "attention.self.value": ("attn.kv", 1),
    "attention.self.sr": ("attn.reduce", None),
    "attention.self.layer_norm": ("attn.reduce_norm", None),
    "attention.output.dense": ("attn.proj", None),
    "layer_norm_2": ("norm2", None),
    "mlp.dense1": ("mlp.fc1", None),
    "mlp.dwconv.dwconv": ("mlp.dwconv", None),
    "mlp.dense2": ("mlp.fc2", None),
    # transformers >= 5
    "layernorm_before": ("norm1", None),
    "attention.q_proj": ("attn.q", None),
    "attention.k_proj": ("attn.kv", 0),
    "attention.v_proj": ("attn.kv", 1),
    "attention.sequence_reduction.sequence_reduction": ("attn.reduce", None),
    "attention.sequence_reduction.layer_norm": ("attn.reduce_norm", None),
    "attention.o_proj": ("attn.proj", None),
    "layernorm_after": ("norm2", None),
    "mlp.fc1": ("mlp.fc1", None),
    "mlp.fc2": ("mlp.fc2", None),
}
_HF_HEADS = ("classifier.", "decode_head.")


def _hf_target(key: str) -> tuple[str, int | None] | None:
    """This module's name for an encoder key of transformers (``segformer.`` prefix removed) and
    the key/value half it fills, or None when the key is no encoder tensor."""
    for location in _HF_LOCATIONS:
        match = location.match(key)
        if match:
            break
    else:
        return None
    module, _, param = key[match.end():].rpartition(".")
    if param not in ("weight", "bias"):
        return None
    stage, block, kind = int(match["stage"]), match["block"], match["kind"]
    if kind == "patch_embeddings" and block is None and module in _HF_EMBED_MODULES:
        return f"stages.{stage}.embed.{_HF_EMBED_MODULES[module]}.{param}", None
    if kind == "layer_norm" and block is None and not module:
        return f"stages.{stage}.norm.{param}", None
    if kind in ("block", "blocks") and block is not None and module in _HF_BLOCK_MODULES:
        name, half = _HF_BLOCK_MODULES[module]
        return f"stages.{stage}.blocks.{block}.{name}.{param}", half
    return None


def convert_hf_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the keys of a Hugging Face ``transformers`` SegFormer (``SegformerModel``,
    ``SegformerForImageClassification`` or ``SegformerForSemanticSegmentation``, e.g.
    ``nvidia/mit-b1``) to :class:`MixTransformer`'s.

    Accepts the names of the Hub checkpoints
    (``segformer.encoder.block.0.1.attention.self.query.weight``, ``encoder.layer_norm.3.bias``, ...),
    with or without the ``segformer.`` prefix, and the in-memory names of transformers >= 5
    (``stages.0.blocks.1.attention.q_proj.weight``, ...). The separate key and value projections
    are stacked, key first, into the fused ``attn.kv`` of NVlabs' layout. The classifier
    (``classifier.*``) and decode head (``decode_head.*``) are dropped; any other key raises
    ``ValueError``, as do a key projection without its value projection (or the reverse) and two
    keys for one tensor.
    """
    converted: dict[str, torch.Tensor] = {}
    halves: dict[str, list[torch.Tensor | None]] = {}
    seen: set[tuple[str, int | None]] = set()
    for key, value in state_dict.items():
        if key.startswith(_HF_HEADS):
            continue
        target = _hf_target(key.removeprefix("segformer."))
        if target is None:
            raise ValueError(
                f"key {key!r} is not a SegFormer encoder key of Hugging Face transformers "
                "(expected [segformer.]encoder.patch_embeddings.N.*, encoder.block.N.M.*, "
                "encoder.layer_norm.N.*, their transformers >= 5 names stages.N.*, "
                "or classifier.* / decode_head.*)"
            )
        if target in seen:
            raise ValueError(f"key {key!r} is a second tensor for {target[0]!r}")
        seen.add(target)
        name, half = target
        if half is None:
            converted[name] = value
        else:
            halves.setdefault(name, [None, None])[half] = value
    for name, (key_part, value_part) in halves.items():
        if key_part is None or value_part is None:
            missing = "key" if key_part is None else "value"
            raise ValueError(f"{name!r}: the checkpoint has no {missing} projection to stack")
        converted[name] = torch.cat([key_part, value_part])
    return converted


def checkpoint_format(state_dict: Mapping[str, torch.Tensor]) -> str:
    """``"nvlabs"`` or ``"hf"``: whose encoder key names a MiT state dict uses. A state dict with
    neither, or with both, raises ``ValueError``."""
    if not isinstance(state_dict, Mapping):
        raise ValueError(
            f"expected a state dict (names to tensors), got {type(state_dict).__name__}"
        )
    keys = list(state_dict)
    nvlabs = any(re.match(pattern, k) for k in keys for pattern, _ in _NVLABS_RULES)
    hf = any(_hf_target(k.removeprefix("segformer.")) is not None for k in keys)
    if nvlabs != hf:
        return "nvlabs" if nvlabs else "hf"
    problem = "mixed NVlabs and Hugging Face keys" if nvlabs else "not a MiT checkpoint"
    raise ValueError(
        f"{problem}: expected either NVlabs/SegFormer keys (patch_embed1.proj.weight, "
        "block1.0.attn.q.weight, norm1.weight, ...) or Hugging Face SegFormer keys "
        f"(segformer.encoder.patch_embeddings.0.proj.weight, ...); got {len(keys)} keys starting "
        f"{keys[:3]}"
    )


def convert_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a released MiT checkpoint to :class:`MixTransformer`'s keys, whichever of NVlabs'
    or Hugging Face's layouts it has (:func:`checkpoint_format`); ``{"state_dict": ...}`` is
    unwrapped first."""
    state_dict = _unwrap(state_dict)
    if checkpoint_format(state_dict) == "nvlabs":
        return convert_nvlabs_state_dict(state_dict)
    return convert_hf_state_dict(state_dict)
