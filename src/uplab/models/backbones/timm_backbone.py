"""Multi-scale feature extractors from timm (``features_only``)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import timm
import torch
from timm.layers import freeze_batch_norm_2d
from torch import nn

from uplab.weights import load_strict


class TimmBackbone(nn.Module):
    """A timm model as a feature pyramid: ``forward(x)`` returns one feature per level, finest first.

    Channels and reductions come from timm's ``feature_info``; nothing is hard-coded. As in
    segmentation_models_pytorch's encoders, the input itself can lead the list as the level of
    reduction 1 (``include_input=True``), so that a decoder which upsamples to full resolution has
    a guide there (the U-Net builds its full-resolution guide from it).

    Args:
        name: a timm model name (``resnet18``, ``resnet50``, ``test_resnet``, ...).
        pretrained: load timm's pretrained weights (needs them in the local cache or a network).
        in_chans: input channels (4 for matting: RGB and trimap).
        out_indices: which of timm's feature levels to return (default: all of them).
        include_input: put the input tensor first in the returned list.
        frozen_params: regular expressions (``re.search``) on the timm model's parameter names;
            the parameters that match do not train (``requires_grad=False``), e.g. BTS's fixed
            stem convolution and BatchNorm affine weights.
        checkpoint: path of a state dict in timm's key names for ``name``, loaded strictly
            (:meth:`load_checkpoint`): torchvision's ImageNet ResNet files name their tensors as
            timm's ResNet does (``reference/weights.yaml``, ``torchvision_resnet50``), and
            :mod:`uplab.shared_backbone` saves a probe table's shared backbone in these names.
        frozen: nothing in the backbone trains: every parameter has ``requires_grad=False`` and
            BatchNorm becomes ``FrozenBatchNorm2d`` (eval-mode statistics whatever the module's
            mode, also when a detector takes the timm model out of this wrapper). The frozen-
            backbone probe of the task-agnostic upsampler papers (FeatUp, LoftUp, JAFAR).

    Example:
        >>> bb = TimmBackbone("resnet18", out_indices=(1, 2, 3, 4))
        >>> bb.channels, bb.reductions
        ([64, 128, 256, 512], [4, 8, 16, 32])
    """

    def __init__(
        self,
        name: str,
        pretrained: bool = False,
        in_chans: int = 3,
        out_indices: Sequence[int] | None = None,
        include_input: bool = False,
        frozen_params: Sequence[str] = (),
        checkpoint: str | os.PathLike | None = None,
        frozen: bool = False,
    ):
        super().__init__()
        if pretrained and checkpoint is not None:
            raise ValueError(
                f"TimmBackbone({name!r}): pretrained=True and checkpoint={checkpoint} both name "
                "initial weights; keep one (set pretrained=false to load the checkpoint)"
            )
        kwargs = {"features_only": True, "pretrained": pretrained, "in_chans": in_chans}
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices)
        try:
            self.model = timm.create_model(name, **kwargs)
        except OSError as err:
            # one line: which weights, where they were looked for, how to get them
            raise RuntimeError(
                f"TimmBackbone({name!r}, pretrained=True) needs timm's weights {name!r} (Hugging "
                f"Face hub timm/{name}), which are not in the local cache ({type(err).__name__}); "
                f"fetch them once with network access: python -c \"import timm; "
                f"timm.create_model('{name}', pretrained=True)\" (same HF_HOME). "
                "backbone.pretrained=false trains the encoder from scratch, which no paper row does"
            ) from err
        self.name = name
        self.in_chans = in_chans
        self.include_input = include_input
        if checkpoint is not None:
            self.load_checkpoint(checkpoint)
        patterns = [re.compile(p) for p in frozen_params]
        for param_name, param in self.model.named_parameters():
            if any(p.search(param_name) for p in patterns):
                param.requires_grad_(False)
        if frozen:
            self.model = freeze_batch_norm_2d(self.model)
            self.model.requires_grad_(False)
        self.frozen = frozen
        channels = list(self.model.feature_info.channels())
        reductions = list(self.model.feature_info.reduction())
        if include_input:
            channels, reductions = [in_chans, *channels], [1, *reductions]
        self.channels: list[int] = channels
        self.reductions: list[int] = reductions

    def load_checkpoint(self, checkpoint: str | os.PathLike | Mapping[str, torch.Tensor]) -> None:
        """Load a state dict in timm's key names strictly (:func:`uplab.weights.load_strict`):
        every tensor of the feature extractor set, every tensor of the file used except those of
        the parts of the whole timm model that ``features_only`` does not build (the classifier
        ``fc``, the stages past the last ``out_indices``). torchvision's ResNet files qualify as
        they are: torchvision and timm name ResNet tensors alike.

        Args:
            checkpoint: a state dict (``{"state_dict": ...}`` is unwrapped), or the path of one.
        """
        source = "the checkpoint"
        if not isinstance(checkpoint, Mapping):
            source = str(checkpoint)
            if not Path(checkpoint).is_file():
                raise FileNotFoundError(
                    f"TimmBackbone({self.name!r}): no weights file at {checkpoint}; fetch the "
                    "released file (python scripts/fetch_weights.py --all, reference/weights.yaml), "
                    "train a probe table's shared backbone first (scripts/reproduce_table.py does), "
                    "or set backbone.checkpoint to its path"
                )
            checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if isinstance(checkpoint.get("state_dict"), Mapping):
            checkpoint = checkpoint["state_dict"]
        with torch.device("meta"):  # the whole architecture's key names, without memory
            whole = timm.create_model(self.name, in_chans=self.in_chans).state_dict()
        built = self.model.state_dict()
        load_strict(self.model, checkpoint, source, dropped=[k for k in whole if k not in built])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"{type(self).__name__}: expected input [B, {self.in_chans}, H, W], "
                f"got {tuple(x.shape)}"
            )
        features = self.model(x)
        return [x, *features] if self.include_input else list(features)
