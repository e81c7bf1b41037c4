"""Faster R-CNN (Ren et al., NeurIPS 2015) with an FPN (Lin et al., CVPR 2017) whose top-down ×2
steps are upsamplers, built on torchvision's detector so that its weights load."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from timm.layers import freeze_batch_norm_2d
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops.feature_pyramid_network import (
    ExtraFPNBlock,
    FeaturePyramidNetwork,
    LastLevelMaxPool,
)

from uplab.models.backbones import TimmBackbone
from uplab.models.decoders.pyramid import check_pyramid


class UpsamplingFPN(FeaturePyramidNetwork):
    """torchvision's ``FeaturePyramidNetwork`` with an upsampler in each top-down ×2 step.

    The top-down pathway of FPN (Lin et al., CVPR 2017, Sec. 3, Fig. 3) adds the upsampled coarser
    map to the lateral 1×1 projection of the finer level; torchvision hard-codes nearest
    interpolation there. Here the step is ``upsampler(top_down, guide=lateral)``, the guide being
    the lateral projection it is added to (as in the FADE and SAPA detection runs). Module names
    are torchvision's, and parameter-free upsamplers add no weights, so with ``nearest`` the
    weights of ``fasterrcnn_resnet50_fpn`` load strictly and the outputs are torchvision's.

    Args:
        in_channels: channels of the input levels, finest first; each level must be twice the
            size of the next.
        upsampler: factory ``upsampler(in_channels=, scale=2, guide_channels=)``.
        out_channels: FPN width (256).
        extra_blocks: torchvision's extra levels (default ``LastLevelMaxPool``, as in Faster R-CNN).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        upsampler: Callable[..., nn.Module],
        out_channels: int = 256,
        extra_blocks: ExtraFPNBlock | None = None,
    ):
        super().__init__(
            list(in_channels),
            out_channels,
            extra_blocks=LastLevelMaxPool() if extra_blocks is None else extra_blocks,
        )
        self.out_channels = out_channels
        self.upsamplers = nn.ModuleList(
            upsampler(in_channels=out_channels, scale=2, guide_channels=out_channels)
            for _ in range(len(in_channels) - 1)
        )

    def forward(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        names = list(x.keys())
        features = list(x.values())
        check_pyramid(type(self).__name__, features)
        last_inner = self.inner_blocks[-1](features[-1])
        results = [self.layer_blocks[-1](last_inner)]
        for idx in range(len(features) - 2, -1, -1):
            lateral = self.inner_blocks[idx](features[idx])
            last_inner = lateral + self.upsamplers[idx](last_inner, guide=lateral)
            results.insert(0, self.layer_blocks[idx](last_inner))
        if self.extra_blocks is not None:
            results, names = self.extra_blocks(results, features, names)
        return OrderedDict(zip(names, results, strict=True))


class FPNBackbone(nn.Module):
    """A feature extractor followed by an FPN, in torchvision's ``BackboneWithFPN`` layout
    (``body``, ``fpn``, ``out_channels``), so detector checkpoints keep their key names.

    Args:
        body: returns a list of features, finest first (a timm ``features_only`` model).
        fpn: the FPN over the levels ``in_index`` of that list.
        in_index: which levels the FPN reads (default: the last four, strides 4 to 32).
    """

    def __init__(self, body: nn.Module, fpn: nn.Module, in_index: Sequence[int] = (-4, -3, -2, -1)):
        super().__init__()
        self.body = body
        self.fpn = fpn
        self.in_index = tuple(in_index)
        self.out_channels = fpn.out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.body(x)
        return self.fpn(OrderedDict((str(i), features[j]) for i, j in enumerate(self.in_index)))


def build_faster_rcnn(
    backbone: nn.Module,
    decoder: Callable[..., nn.Module],
    upsampler: Callable[..., nn.Module],
    num_classes: int,
    in_index: Sequence[int] = (-4, -3, -2, -1),
    frozen_batch_norm: bool = False,
    anchor_sizes: Sequence[int] | None = None,
    representation_size: int | None = None,
    **detector_kwargs,
) -> FasterRCNN:
    """Faster R-CNN over ``backbone`` with the FPN ``decoder`` whose ×2 steps are ``upsampler``.

    Args:
        backbone: multi-scale feature extractor exposing ``channels`` (a :class:`TimmBackbone`
            contributes its timm model directly, so its keys are torchvision's ``backbone.body.*``).
        decoder: FPN factory ``decoder(in_channels=, upsampler=)``, e.g. :class:`UpsamplingFPN`.
        upsampler: upsampler factory for the top-down steps.
        num_classes: classes including the background (91 for torchvision's COCO weights).
        in_index: the backbone levels the FPN reads.
        frozen_batch_norm: replace BatchNorm by FrozenBatchNorm2d in the backbone, as torchvision
            does for pretrained backbones (its checkpoints hold no ``num_batches_tracked``).
        anchor_sizes: one anchor size per FPN level (five with the max-pool level); torchvision's
            default (32, 64, 128, 256, 512) fits COCO-sized images.
        representation_size: width of the box head's two fully connected layers (torchvision:
            1024); a smaller one makes the box head cheap for small images.
        **detector_kwargs: passed to torchvision's ``FasterRCNN`` (``min_size``, ``max_size``,
            ``rpn_*``, ``box_*``).

    Example:
        >>> from functools import partial
        >>> from uplab.upsamplers import build
        >>> det = build_faster_rcnn(TimmBackbone("resnet18"), UpsamplingFPN, partial(build, "nearest"), 91)
    """
    channels = list(backbone.channels)
    try:
        in_channels = [channels[i] for i in in_index]
    except IndexError:
        raise ValueError(
            f"in_index {tuple(in_index)} does not fit the backbone's {len(channels)} levels "
            f"with channels {channels}"
        ) from None
    # counted from the coarsest end, the levels are the same with or without a leading input level
    in_index = tuple(i if i < 0 else i - len(channels) for i in in_index)
    body = backbone
    if isinstance(backbone, TimmBackbone):
        if backbone.include_input and -len(channels) in in_index:
            raise ValueError("the FPN reads backbone features, not the input level (index 0)")
        body = backbone.model
    if frozen_batch_norm:
        body = freeze_batch_norm_2d(body)
    fpn = decoder(in_channels=in_channels, upsampler=upsampler)
    if anchor_sizes is not None:
        anchor_sizes = tuple((int(s),) for s in anchor_sizes)
        detector_kwargs["rpn_anchor_generator"] = AnchorGenerator(
            sizes=anchor_sizes, aspect_ratios=((0.5, 1.0, 2.0),) * len(anchor_sizes)
        )
    if representation_size is not None:
        resolution = 7  # torchvision's MultiScaleRoIAlign output size
        detector_kwargs["box_head"] = TwoMLPHead(fpn.out_channels * resolution**2, representation_size)
        detector_kwargs["box_predictor"] = FastRCNNPredictor(representation_size, num_classes)
        num_classes = None  # torchvision takes it from the predictor then
    return FasterRCNN(FPNBackbone(body, fpn, in_index), num_classes=num_classes, **detector_kwargs)
