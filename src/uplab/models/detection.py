"""Faster R-CNN (Ren et al., NeurIPS 2015) with an FPN (Lin et al., CVPR 2017) whose top-down ×2
steps are upsamplers, built on torchvision's detector so that its weights load."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import freeze_batch_norm_2d
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.feature_pyramid_network import (
    ExtraFPNBlock,
    FeaturePyramidNetwork,
    LastLevelMaxPool,
)
from torchvision.ops.poolers import _setup_scales  # the parent's own scale set-up

from uplab.models.backbones import TimmBackbone
from uplab.models.decoders.pyramid import check_pyramid

BOX_LOSSES = ("smooth_l1", "l1")


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
        top_down: keep the top-down pathway. ``False`` is the control with no upsampling: each
            level is its own lateral projection and output conv, blind to the coarser levels
            (the "bottom-up pyramid" ablation of Lin et al., Table 1 (d)); no upsampler is built.
        coarse_output: run the top-down pathway at the coarsest level's resolution: the finer
            laterals are area-pooled down to it instead of the coarser map being upsampled, so
            every output level has the backbone's coarsest stride and no upsampler is built. A
            control without upsampling, for checking that a task rewards it; not in the papers.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        upsampler: Callable[..., nn.Module],
        out_channels: int = 256,
        extra_blocks: ExtraFPNBlock | None = None,
        top_down: bool = True,
        coarse_output: bool = False,
    ):
        if coarse_output and not top_down:
            raise ValueError(
                "UpsamplingFPN: coarse_output=True runs the top-down pathway at the coarsest "
                "resolution, so it needs top_down=True; got top_down=False (choose one control)"
            )
        super().__init__(
            list(in_channels),
            out_channels,
            extra_blocks=LastLevelMaxPool() if extra_blocks is None else extra_blocks,
        )
        self.out_channels = out_channels
        self.top_down = top_down
        self.coarse_output = coarse_output
        self.upsamplers = nn.ModuleList(
            upsampler(in_channels=out_channels, scale=2, guide_channels=out_channels)
            for _ in range(len(in_channels) - 1 if top_down and not coarse_output else 0)
        )

    def forward(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        names = list(x.keys())
        features = list(x.values())
        check_pyramid(type(self).__name__, features)
        last_inner = self.inner_blocks[-1](features[-1])
        results = [self.layer_blocks[-1](last_inner)]
        for idx in range(len(features) - 2, -1, -1):
            lateral = self.inner_blocks[idx](features[idx])
            if self.coarse_output:
                last_inner = F.adaptive_avg_pool2d(lateral, last_inner.shape[-2:]) + last_inner
            elif self.top_down:
                last_inner = lateral + self.upsamplers[idx](last_inner, guide=lateral)
            else:
                last_inner = lateral
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
        norm_eval: keep the body's BatchNorm layers in eval mode while training (their running
            statistics stay as loaded; their affine weights still train unless frozen), as
            mmdetection's ``ResNet(norm_eval=True)``.
    """

    def __init__(
        self,
        body: nn.Module,
        fpn: nn.Module,
        in_index: Sequence[int] = (-4, -3, -2, -1),
        norm_eval: bool = False,
    ):
        super().__init__()
        self.body = body
        self.fpn = fpn
        self.in_index = tuple(in_index)
        self.out_channels = fpn.out_channels
        self.norm_eval = norm_eval

    def train(self, mode: bool = True) -> FPNBackbone:
        super().train(mode)
        if mode and self.norm_eval:
            for module in self.body.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.body(x)
        return self.fpn(OrderedDict((str(i), features[j]) for i, j in enumerate(self.in_index)))


class AlignedMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's ``MultiScaleRoIAlign`` with the half-pixel-aligned RoIAlign (``aligned=True``,
    Detectron2's correction) that mmdetection 2.x uses (``RoIAlign(output_size=7,
    sampling_ratio=0, aligned=True)`` in ``configs/_base_/models/faster_rcnn_r50_fpn.py``).
    The level of each box follows torchvision's ``LevelMapper``, which is mmdetection's
    ``finest_scale=56`` rule: level ``floor(log2(sqrt(area) / 56))`` clamped to the pyramid."""

    def forward(
        self, x: dict[str, torch.Tensor], boxes: list[torch.Tensor], image_shapes: list[tuple[int, int]]
    ) -> torch.Tensor:
        features = [v for k, v in x.items() if k in self.featmap_names]
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(
                features, image_shapes, self.canonical_scale, self.canonical_level
            )
        rois = torch.cat(
            [torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)]
        )
        levels = self.map_levels(boxes)
        result = features[0].new_zeros((len(rois), features[0].shape[1], *self.output_size))
        for level, (feature, scale) in enumerate(zip(features, self.scales, strict=True)):
            index = torch.where(levels == level)[0]
            result[index] = roi_align(
                feature, rois[index], self.output_size, scale, self.sampling_ratio, aligned=True
            ).to(result.dtype)
        return result


class L1RegionProposalNetwork(RegionProposalNetwork):
    """torchvision's RPN with mmdetection 2.x's box loss: L1 (``loss_bbox=dict(type='L1Loss')``)
    on the positive anchors' deltas, summed and divided by the number of sampled anchors (the
    avg_factor of mmdetection's sampled RPN), in place of smooth L1 with beta 1/9."""

    def compute_loss(
        self,
        objectness: torch.Tensor,
        pred_bbox_deltas: torch.Tensor,
        labels: list[torch.Tensor],
        regression_targets: list[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        positive, negative = self.fg_bg_sampler(labels)
        positive = torch.where(torch.cat(positive))[0]
        sampled = torch.cat([positive, torch.where(torch.cat(negative))[0]])
        targets = torch.cat(regression_targets)
        box_loss = F.l1_loss(pred_bbox_deltas[positive], targets[positive], reduction="sum")
        objectness_loss = F.binary_cross_entropy_with_logits(
            objectness.flatten()[sampled], torch.cat(labels)[sampled]
        )
        return objectness_loss, box_loss / sampled.numel()


class L1RoIHeads(RoIHeads):
    """torchvision's box RoI heads with mmdetection 2.x's box loss: L1 on the class-specific
    deltas of the positive RoIs, divided by the number of sampled RoIs (``BBoxHead.loss`` with
    ``avg_factor=bbox_targets.size(0)``). Inference is torchvision's."""

    def forward(self, features, proposals, image_shapes, targets=None):
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        if self.has_mask() or self.has_keypoint():
            raise ValueError("L1RoIHeads computes box losses only; it has no mask or keypoint head")
        proposals, _, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        labels, regression_targets = torch.cat(labels), torch.cat(regression_targets)
        positive = torch.where(labels > 0)[0]
        deltas = box_regression.reshape(len(labels), -1, 4)[positive, labels[positive]]
        box_loss = F.l1_loss(deltas, regression_targets[positive], reduction="sum") / labels.numel()
        return [], {"loss_classifier": F.cross_entropy(class_logits, labels), "loss_box_reg": box_loss}


def freeze_stages(body: nn.Module, frozen_stages: int) -> None:
    """mmdetection's ``ResNet(frozen_stages=k)``: the stem (``conv1``, ``bn1``) and ``layer1`` to
    ``layer<k>`` stop training (``requires_grad=False``); -1 freezes nothing."""
    if frozen_stages < 0:
        return
    names = ["conv1", "bn1", *(f"layer{i}" for i in range(1, frozen_stages + 1))]
    children = dict(body.named_children())
    missing = [n for n in names if n not in children]
    if missing:
        raise ValueError(
            f"frozen_stages={frozen_stages} needs a ResNet body with {names}; the backbone has "
            f"no {missing} (children: {list(children)}); use frozen_stages=-1 for other backbones"
        )
    for name in names:
        children[name].requires_grad_(False)


def build_faster_rcnn(
    backbone: nn.Module,
    decoder: Callable[..., nn.Module],
    upsampler: Callable[..., nn.Module],
    num_classes: int,
    in_index: Sequence[int] = (-4, -3, -2, -1),
    frozen_batch_norm: bool = False,
    frozen_stages: int = -1,
    norm_eval: bool = False,
    anchor_sizes: Sequence[int] | None = None,
    representation_size: int | None = None,
    box_loss: str = "smooth_l1",
    box_roi_align: Mapping[str, Any] | None = None,
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
        frozen_stages: the stem and the first ``frozen_stages`` ResNet layers do not train
            (:func:`freeze_stages`; mmdetection's Faster R-CNN: 1); -1 trains everything.
        norm_eval: the backbone's BatchNorm stays in eval mode while training
            (mmdetection's ``norm_eval=True``); its affine weights train outside frozen stages.
        anchor_sizes: one anchor size per FPN level (five with the max-pool level); torchvision's
            default (32, 64, 128, 256, 512) fits COCO-sized images.
        representation_size: width of the box head's two fully connected layers (torchvision:
            1024); a smaller one makes the box head cheap for small images.
        box_loss: ``"smooth_l1"`` (torchvision's, beta 1/9) or ``"l1"`` (mmdetection 2.x's
            ``L1Loss`` in the RPN and the box head: :class:`L1RegionProposalNetwork`,
            :class:`L1RoIHeads`).
        box_roi_align: ``{"sampling_ratio": int, "aligned": bool}`` of the box RoIAlign (torchvision:
            2, False; mmdetection 2.x: 0, True); None keeps torchvision's.
        **detector_kwargs: passed to torchvision's ``FasterRCNN`` (``min_size``, ``max_size``,
            ``rpn_*``, ``box_*``).

    Example:
        >>> from functools import partial
        >>> from uplab.upsamplers import build
        >>> det = build_faster_rcnn(TimmBackbone("resnet18"), UpsamplingFPN, partial(build, "nearest"), 91)
    """
    if box_loss not in BOX_LOSSES:
        raise ValueError(f"box_loss must be one of {BOX_LOSSES}, got {box_loss!r}")
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
    freeze_stages(body, frozen_stages)
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
    if box_roi_align is not None:
        options = {"sampling_ratio": 2, "aligned": False, **box_roi_align}
        pool = AlignedMultiScaleRoIAlign if options.pop("aligned") else MultiScaleRoIAlign
        detector_kwargs["box_roi_pool"] = pool(["0", "1", "2", "3"], 7, **options)
    model = FasterRCNN(
        FPNBackbone(body, fpn, in_index, norm_eval=norm_eval), num_classes=num_classes, **detector_kwargs
    )
    if box_loss == "l1":
        # the subclasses hold no state of their own, only the loss: torchvision's constructor
        # (with its defaults and the rpn_*/box_* arguments) stays the one place they are set
        model.rpn.__class__ = L1RegionProposalNetwork
        model.roi_heads.__class__ = L1RoIHeads
    return model
