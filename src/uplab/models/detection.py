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
from torchvision.models.detection._utils import Matcher
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
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
INITS = ("torchvision", "mmdetection")


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


class ValidAnchorRegionProposalNetwork(RegionProposalNetwork):
    """torchvision's RPN that can leave out, in training, the anchors on a batch's padding, as
    mmdetection 2.x's valid flags do (``AnchorHead.get_anchors``: only the anchors whose grid
    point lies inside the image's own padded shape, ``pad_shape``, take part in the targets).

    torchvision pads every image of a batch to the batch's largest, rounded up to
    ``size_divisible``, and assigns targets to every anchor of that tensor, so an image smaller
    than its batch gets negatives sampled from plain padding. With ``pad_divisor`` set, an anchor
    whose centre lies at or beyond the image's size rounded up to ``pad_divisor`` (mmdetection's
    per-image ``Pad(size_divisor=32)``) is ignored (label -1: never sampled). None (the class
    default) keeps torchvision's behaviour.
    """

    pad_divisor: int | None = None

    def forward(self, images: ImageList, features: dict[str, torch.Tensor], targets=None):
        self._image_sizes = images.image_sizes  # read by assign_targets_to_anchors
        return super().forward(images, features, targets)

    def assign_targets_to_anchors(
        self, anchors: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        labels, matched_gt_boxes = super().assign_targets_to_anchors(anchors, targets)
        if self.pad_divisor is None:
            return labels, matched_gt_boxes
        d = self.pad_divisor
        for image_labels, image_anchors, (height, width) in zip(
            labels, anchors, self._image_sizes, strict=True
        ):
            centres = (image_anchors[:, :2] + image_anchors[:, 2:]) / 2
            padded = image_anchors.new_tensor([-(-width // d) * d, -(-height // d) * d])
            image_labels[(centres >= padded).any(dim=1)] = -1.0
        return labels, matched_gt_boxes


class L1RegionProposalNetwork(ValidAnchorRegionProposalNetwork):
    """torchvision's RPN with mmdetection 2.x's box loss: L1 (``loss_bbox=dict(type='L1Loss')``)
    on the positive anchors' deltas, summed and divided by the number of sampled anchors (the
    avg_factor of mmdetection's sampled RPN), in place of smooth L1 with beta 1/9. It ignores the
    padding's anchors when ``pad_divisor`` is set (:class:`ValidAnchorRegionProposalNetwork`)."""

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


class StridedAnchorGenerator(AnchorGenerator):
    """torchvision's ``AnchorGenerator`` with mmdetection 2.x's ``AnchorGenerator(scales=[8],
    ratios=[0.5, 1.0, 2.0], strides=[4, 8, 16, 32, 64])`` geometry.

    Two things differ from torchvision's: the anchors of each level lie ``stride`` pixels apart
    as configured, where torchvision infers the stride as ``padded image size // feature size``
    (61 instead of 64 on the max-pool level of an 800-pixel-high image, whose 25-row stride-32
    map pools to 13 rows), and the base anchors keep their exact size (``base_size * sqrt(1 /
    ratio)`` wide and ``base_size * sqrt(ratio)`` high, ``ratio = h / w``, centred on the grid
    point), where torchvision rounds their corners to whole pixels.

    Args:
        sizes: one base size per level (mmdetection: ``stride * scale``).
        aspect_ratios: one tuple of height / width ratios per level.
        strides: one stride per level, in image pixels.
        round_anchors: round the base anchors' corners as torchvision does.
    """

    def __init__(
        self,
        sizes: Sequence[Sequence[int]],
        aspect_ratios: Sequence[Sequence[float]],
        strides: Sequence[int],
        round_anchors: bool = False,
    ):
        if len(strides) != len(sizes):
            raise ValueError(
                f"one anchor stride per level: got {len(strides)} strides {list(strides)} for "
                f"{len(sizes)} anchor sizes; give as many strides as anchor_sizes"
            )
        self.round_anchors = round_anchors  # read by generate_anchors, which the parent calls
        super().__init__(tuple(tuple(s) for s in sizes), tuple(tuple(a) for a in aspect_ratios))
        self.strides = tuple(int(s) for s in strides)

    def generate_anchors(
        self,
        scales: list[int],
        aspect_ratios: list[float],
        dtype: torch.dtype = torch.float32,
        device: torch.device | None = None,
    ) -> torch.Tensor:
        scales = torch.as_tensor(scales, dtype=dtype, device=device)
        h_ratios = torch.sqrt(torch.as_tensor(aspect_ratios, dtype=dtype, device=device))
        ws = (scales[None, :] / h_ratios[:, None]).reshape(-1)
        hs = (scales[None, :] * h_ratios[:, None]).reshape(-1)
        anchors = torch.stack([-ws, -hs, ws, hs], dim=1) / 2
        return anchors.round() if self.round_anchors else anchors

    def forward(self, image_list: ImageList, feature_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(feature_maps) != len(self.strides):
            raise ValueError(
                f"{len(feature_maps)} feature maps for {len(self.strides)} anchor strides "
                f"{list(self.strides)}; give one stride per FPN level"
            )
        device = feature_maps[0].device
        grid_sizes = [list(f.shape[-2:]) for f in feature_maps]
        strides = [[torch.tensor(s, dtype=torch.int64, device=device)] * 2 for s in self.strides]
        self.set_cell_anchors(feature_maps[0].dtype, device)
        anchors = torch.cat(self.grid_anchors(grid_sizes, strides))
        return [anchors for _ in image_list.image_sizes]


class MaxIoUMatcher(Matcher):
    """mmdetection 2.x's ``MaxIoUAssigner(pos_iou_thr, neg_iou_thr, min_pos_iou,
    match_low_quality=True)`` (``gt_max_assign_all=True``) as a torchvision ``Matcher``.

    Thresholds as torchvision's: IoU >= ``high`` matches, below ``low`` is background, between is
    ignored. The low-quality rule is mmdetection's: for each ground-truth box whose best IoU is at
    least ``min_pos_iou``, every anchor reaching that best IoU is matched to that box (a later box
    overrides an earlier one, as mmdetection's loop over boxes does). torchvision's
    ``allow_low_quality_matches`` has no ``min_pos_iou`` (a box's best anchor matches at any IoU)
    and matches such an anchor to its own best box rather than to the box it is best for.
    """

    def __init__(self, high_threshold: float, low_threshold: float, min_pos_iou: float):
        super().__init__(high_threshold, low_threshold, allow_low_quality_matches=False)
        self.min_pos_iou = min_pos_iou

    def __call__(self, match_quality_matrix: torch.Tensor) -> torch.Tensor:
        matches = super().__call__(match_quality_matrix)
        best_per_box = match_quality_matrix.max(dim=1, keepdim=True).values
        reaches = (match_quality_matrix == best_per_box) & (best_per_box >= self.min_pos_iou)
        box_number = torch.arange(1, len(match_quality_matrix) + 1, device=matches.device)
        last_box = (reaches * box_number[:, None]).max(dim=0).values  # 0: best for no box
        low_quality = last_box > 0
        matches[low_quality] = last_box[low_quality] - 1
        return matches


def init_as_mmdetection(model: FasterRCNN) -> None:
    """mmdetection 2.x's initialisation of the parts that do not come pretrained: the FPN's
    lateral and output convolutions Xavier-uniform with zero bias (``FPN(init_cfg=dict(
    type='Xavier', layer='Conv2d', distribution='uniform'))``), the box head's shared fully
    connected layers Xavier-uniform with zero bias (``ConvFCBBoxHead``), the classifier normal
    with std 0.01 and the box regressor normal with std 0.001, zero bias (``BBoxHead``), and
    the RPN head's convolutions normal with std 0.01, zero bias (``RPNHead``; torchvision's
    own). The upsamplers keep their own initialisation."""
    fpn = model.backbone.fpn
    for block in (*fpn.inner_blocks, *fpn.layer_blocks):
        for conv in (m for m in block.modules() if isinstance(m, nn.Conv2d)):
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)
    for fc in (m for m in model.roi_heads.box_head.modules() if isinstance(m, nn.Linear)):
        nn.init.xavier_uniform_(fc.weight)
        nn.init.zeros_(fc.bias)
    predictor = model.roi_heads.box_predictor
    for layer, std in ((predictor.cls_score, 0.01), (predictor.bbox_pred, 0.001)):
        nn.init.normal_(layer.weight, std=std)
        nn.init.zeros_(layer.bias)
    for conv in (m for m in model.rpn.head.modules() if isinstance(m, nn.Conv2d)):
        nn.init.normal_(conv.weight, std=0.01)
        nn.init.zeros_(conv.bias)


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
    anchor_aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    anchor_strides: Sequence[int] | None = None,
    representation_size: int | None = None,
    box_loss: str = "smooth_l1",
    box_roi_align: Mapping[str, Any] | None = None,
    rpn_min_pos_iou: float | None = None,
    rpn_ignore_padding: bool = False,
    init: str = "torchvision",
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
        anchor_aspect_ratios: the height / width ratios of the anchors at every level.
        anchor_strides: one stride per FPN level: the anchors follow mmdetection's geometry
            (:class:`StridedAnchorGenerator`: these strides, unrounded base anchors); None keeps
            torchvision's (strides inferred from the feature sizes, rounded base anchors).
        representation_size: width of the box head's two fully connected layers (torchvision:
            1024); a smaller one makes the box head cheap for small images.
        box_loss: ``"smooth_l1"`` (torchvision's, beta 1/9) or ``"l1"`` (mmdetection 2.x's
            ``L1Loss`` in the RPN and the box head: :class:`L1RegionProposalNetwork`,
            :class:`L1RoIHeads`).
        box_roi_align: ``{"sampling_ratio": int, "aligned": bool}`` of the box RoIAlign (torchvision:
            2, False; mmdetection 2.x: 0, True); None keeps torchvision's.
        rpn_min_pos_iou: match the RPN's anchors with mmdetection's ``MaxIoUAssigner``
            (:class:`MaxIoUMatcher`, low-quality matches from this IoU on; mmdetection's Faster
            R-CNN: 0.3); None keeps torchvision's ``Matcher(allow_low_quality_matches=True)``.
        rpn_ignore_padding: in training, ignore the anchors beyond each image's size padded to
            ``size_divisible`` (:class:`ValidAnchorRegionProposalNetwork`; mmdetection's valid
            flags); False keeps torchvision's targets on the whole padded batch.
        init: ``"torchvision"`` (its modules' defaults) or ``"mmdetection"``
            (:func:`init_as_mmdetection`: the FPN, box head and RPN head as mmdetection 2.x
            initialises them).
        **detector_kwargs: passed to torchvision's ``FasterRCNN`` (``min_size``, ``max_size``,
            ``rpn_*``, ``box_*``).

    Example:
        >>> from functools import partial
        >>> from uplab.upsamplers import build
        >>> det = build_faster_rcnn(TimmBackbone("resnet18"), UpsamplingFPN, partial(build, "nearest"), 91)
    """
    if box_loss not in BOX_LOSSES:
        raise ValueError(f"box_loss must be one of {BOX_LOSSES}, got {box_loss!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
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
    if anchor_strides is not None and anchor_sizes is None:
        raise ValueError(
            f"anchor_strides {list(anchor_strides)} need anchor_sizes (one per stride); give both"
        )
    if anchor_sizes is not None:
        sizes = tuple((int(s),) for s in anchor_sizes)
        ratios = (tuple(float(r) for r in anchor_aspect_ratios),) * len(sizes)
        detector_kwargs["rpn_anchor_generator"] = (
            AnchorGenerator(sizes=sizes, aspect_ratios=ratios)
            if anchor_strides is None
            else StridedAnchorGenerator(sizes, ratios, anchor_strides)
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
    if rpn_ignore_padding:
        if not isinstance(model.rpn, ValidAnchorRegionProposalNetwork):
            model.rpn.__class__ = ValidAnchorRegionProposalNetwork
        model.rpn.pad_divisor = model.transform.size_divisible
    if rpn_min_pos_iou is not None:
        matcher = model.rpn.proposal_matcher
        model.rpn.proposal_matcher = MaxIoUMatcher(
            matcher.high_threshold, matcher.low_threshold, rpn_min_pos_iou
        )
    if init == "mmdetection":
        init_as_mmdetection(model)
    return model
