from functools import partial

import pytest
import torch
from torchvision.models import resnet50
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork
from torchvision.ops.misc import FrozenBatchNorm2d

from uplab.models import TimmBackbone
from uplab.models.detection import UpsamplingFPN, build_faster_rcnn
from uplab.upsamplers import build


def fpn_inputs(channels=(8, 16, 32, 64), size=32):
    return {str(i): torch.randn(1, c, size >> i, size >> i) for i, c in enumerate(channels)}


def test_nearest_fpn_is_torchvisions_fpn():
    ours = UpsamplingFPN([8, 16, 32, 64], partial(build, "nearest"), out_channels=16)
    ref = FeaturePyramidNetwork([8, 16, 32, 64], 16, extra_blocks=ours.extra_blocks)
    ref.load_state_dict(ours.state_dict(), strict=True)
    x = fpn_inputs()
    out = ours(x)
    for (name, a), (ref_name, b) in zip(out.items(), ref(x).items(), strict=True):
        assert name == ref_name and torch.allclose(a, b)
    # mmdetection's FPN(num_outs=5) extra level: F.max_pool2d(P5, 1, stride=2)
    assert torch.equal(out["pool"], out["3"][..., ::2, ::2])


def test_top_down_steps_are_guided_by_the_lateral():
    calls = []

    class Recorder(torch.nn.Module):
        guided = True

        def __init__(self, in_channels, scale=2, guide_channels=None):
            super().__init__()
            self.out_channels = in_channels

        def forward(self, x, guide=None):
            calls.append((x.shape[-1], guide.shape[-1], guide.shape[1]))
            return torch.nn.functional.interpolate(x, scale_factor=2)

    fpn = UpsamplingFPN([8, 16, 32, 64], Recorder, out_channels=16)
    fpn(fpn_inputs())
    assert calls == [(4, 8, 16), (8, 16, 16), (16, 32, 16)]


def test_torchvision_faster_rcnn_weights_load_strictly_with_nearest():
    """fasterrcnn_resnet50_fpn's layout (frozen BN, resnet50 body, FPN, RPN, RoI heads)."""
    reference = FasterRCNN(_resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), 3), 91)
    ours = build_faster_rcnn(
        TimmBackbone("resnet50", include_input=True),
        UpsamplingFPN,
        partial(build, "nearest"),
        num_classes=91,
        frozen_batch_norm=True,
    )
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        expected, got = reference.eval().backbone(x), ours.eval().backbone(x)
    assert list(got) == list(expected) == ["0", "1", "2", "3", "pool"]
    assert all(torch.allclose(got[k], expected[k], atol=1e-5) for k in expected)


def test_learned_upsampler_trains_in_the_detector():
    det = build_faster_rcnn(
        TimmBackbone("test_resnet"), partial(UpsamplingFPN, out_channels=16), partial(build, "deconv"),
        num_classes=3, anchor_sizes=(8, 16, 32, 64, 128), min_size=64, max_size=64,
    )
    assert len(det.backbone.fpn.upsamplers) == 3
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 30.0, 40.0]]), "labels": torch.tensor([1])}]
    losses = det([torch.rand(3, 64, 64)], targets)
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in det.backbone.fpn.upsamplers.parameters())


def test_fpn_cannot_read_the_input_level():
    with pytest.raises(ValueError, match="input level"):
        build_faster_rcnn(
            TimmBackbone("test_resnet", include_input=True), UpsamplingFPN, partial(build, "nearest"),
            num_classes=2, in_index=(0, 2, 3, 4),
        )


def test_representation_size_sets_the_box_head_width():
    det = build_faster_rcnn(
        TimmBackbone("test_resnet"), partial(UpsamplingFPN, out_channels=16), partial(build, "nearest"),
        num_classes=4, representation_size=32,
    )
    assert det.roi_heads.box_head.fc6.in_features == 16 * 7 * 7
    assert det.roi_heads.box_head.fc7.out_features == 32
    assert det.roi_heads.box_predictor.cls_score.out_features == 4


def small_detector(**kwargs):
    return build_faster_rcnn(
        TimmBackbone("test_resnet"), partial(UpsamplingFPN, out_channels=16), partial(build, "nearest"),
        num_classes=3, anchor_sizes=(8, 16, 32, 64, 128), min_size=64, max_size=64,
        representation_size=32, **kwargs,
    )


def test_frozen_stages_and_norm_eval_follow_mmdetection():
    det = small_detector(frozen_stages=1, norm_eval=True).train()
    body = det.backbone.body
    frozen = {n.split(".")[0] for n, p in body.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "bn1", "layer1"}
    assert all(p.requires_grad for p in body.layer2.parameters())  # BN affine of layer2 trains
    norms = [m for m in body.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms)
    assert det.backbone.fpn.training  # only the body's statistics are frozen


def test_aligned_roi_align_is_the_half_pixel_shift_of_torchvisions():
    from torchvision.ops import MultiScaleRoIAlign

    from uplab.models.detection import AlignedMultiScaleRoIAlign

    names = ["0", "1", "2", "3"]
    features = {n: torch.randn(1, 4, 64 >> i, 64 >> i) for i, n in enumerate(names)}
    # sizes 40 and 120 px fall on levels 0 and 1 (strides 4 and 8)
    boxes = torch.tensor([[20.0, 30.0, 60.0, 70.0], [50.0, 40.0, 170.0, 160.0]])
    shift = torch.tensor([[4 / 2], [8 / 2]])  # half a feature pixel, in image pixels
    aligned = AlignedMultiScaleRoIAlign(names, 7, sampling_ratio=0)(features, [boxes], [(256, 256)])
    plain = MultiScaleRoIAlign(names, 7, sampling_ratio=0)(features, [boxes - shift], [(256, 256)])
    assert torch.allclose(aligned, plain, atol=1e-5)
    assert not torch.allclose(
        aligned, MultiScaleRoIAlign(names, 7, sampling_ratio=0)(features, [boxes], [(256, 256)])
    )


def test_l1_box_losses_replace_torchvisions_smooth_l1():
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 30.0, 40.0]]), "labels": torch.tensor([1])}]
    image = [torch.rand(3, 64, 64)]
    losses = {}
    for box_loss in ("smooth_l1", "l1"):
        torch.manual_seed(0)  # same weights, same sampled anchors and RoIs
        losses[box_loss] = small_detector(box_loss=box_loss)(image, targets)
    for key in ("loss_rpn_box_reg", "loss_box_reg"):
        l1, smooth = losses["l1"][key], losses["smooth_l1"][key]
        # smooth L1 (beta 1/9) is under L1 by at most beta / 2 per coordinate
        assert smooth < l1 <= smooth + 4 / 18
    assert losses["l1"]["loss_classifier"] == losses["smooth_l1"]["loss_classifier"]
    with pytest.raises(ValueError, match="box_loss"):
        small_detector(box_loss="giou")


def test_fpn_without_top_down_reads_no_coarser_level():
    """The control without upsampling: level i is blind to every coarser input (with the
    top-down pathway, it is not)."""
    cut = UpsamplingFPN([8, 16, 32, 64], partial(build, "nearest"), out_channels=16, top_down=False)
    full = UpsamplingFPN([8, 16, 32, 64], partial(build, "nearest"), out_channels=16)
    full.load_state_dict(cut.state_dict())
    assert len(cut.upsamplers) == 0
    x = fpn_inputs()
    for coarser in ("1", "2", "3"):
        changed = {**x, coarser: torch.randn_like(x[coarser])}
        for fpn, blind in ((cut, True), (full, False)):
            before, after = fpn(x), fpn(changed)
            assert not torch.equal(before[coarser], after[coarser])
            finer = [k for k in ("0", "1", "2") if k < coarser]
            assert all(torch.equal(before[k], after[k]) for k in finer) == blind


def test_coarse_output_fpn_has_the_coarsest_stride_at_every_level_and_trains_in_the_detector():
    fpn = UpsamplingFPN(
        [8, 16, 32, 64], partial(build, "deconv"), out_channels=16, coarse_output=True
    )
    assert len(fpn.upsamplers) == 0
    x = fpn_inputs()
    out = fpn(x)
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(4, 4)] * 4 + [(2, 2)]
    finest_changed = fpn({**x, "0": torch.randn_like(x["0"])})
    assert not torch.equal(out["0"], finest_changed["0"])  # the finer laterals still count, pooled
    det = build_faster_rcnn(
        TimmBackbone("test_resnet"), partial(UpsamplingFPN, out_channels=16, coarse_output=True),
        partial(build, "nearest"), num_classes=3, anchor_sizes=(8, 16, 32, 64, 128),
        min_size=64, max_size=64,
    )
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 12.0, 10.0]]), "labels": torch.tensor([1])}]
    losses = det([torch.rand(3, 64, 64)], targets)
    assert all(torch.isfinite(v) for v in losses.values())
    with pytest.raises(ValueError, match="needs top_down=True"):
        UpsamplingFPN([8, 16], partial(build, "nearest"), coarse_output=True, top_down=False)


def test_strided_anchors_follow_mmdetections_geometry():
    """Anchors stride 64 apart on the max-pool level of an 800-pixel-high image (torchvision
    infers 800 // 13 = 61) and unrounded base anchors (torchvision rounds 32 * sqrt(2) / 2)."""
    from torchvision.models.detection.image_list import ImageList

    from uplab.models.detection import StridedAnchorGenerator

    ratios = ((0.5, 1.0, 2.0),) * 2
    generator = StridedAnchorGenerator(((32,), (512,)), ratios, strides=(4, 64))
    images = ImageList(torch.zeros(1, 3, 800, 1216), [(800, 1216)])
    features = [torch.zeros(1, 1, 200, 304), torch.zeros(1, 1, 13, 19)]
    (anchors,) = generator(images, features)
    assert anchors.shape == ((200 * 304 + 13 * 19) * 3, 4)
    last = anchors[200 * 304 * 3 :].view(13, 19, 3, 4)[12, 18, 1]  # square anchor, last cell
    assert torch.allclose(last, torch.tensor([18 * 64 - 256, 12 * 64 - 256, 18 * 64 + 256, 12 * 64 + 256.0]))
    half_w, half_h = 16 * 2**0.5, 16 / 2**0.5  # ratio h / w = 0.5 at size 32
    assert torch.allclose(anchors[0], torch.tensor([-half_w, -half_h, half_w, half_h]))
    with pytest.raises(ValueError, match="one anchor stride per level"):
        StridedAnchorGenerator(((32,), (64,)), ratios, strides=(4,))


def test_rpn_matcher_is_mmdetections_max_iou_assigner():
    """Low-quality matches only from min_pos_iou on, and to the box the anchor is best for."""
    from torchvision.models.detection._utils import Matcher

    from uplab.models.detection import MaxIoUMatcher

    iou = torch.tensor(
        [
            [0.8, 0.1, 0.5, 0.0],  # box 0: anchor 0 matches it (>= 0.7)
            [0.1, 0.25, 0.0, 0.0],  # box 1: its best anchor reaches only 0.25 < min_pos_iou
            [0.0, 0.0, 0.45, 0.1],  # box 2: anchor 2 is its best, though nearer box 0
        ]
    )
    below = Matcher.BELOW_LOW_THRESHOLD
    assert MaxIoUMatcher(0.7, 0.3, min_pos_iou=0.3)(iou).tolist() == [0, below, 2, below]
    torchvisions = Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou).tolist()
    assert torchvisions == [0, 1, 0, below]


def test_mmdetection_init_of_the_fpn_and_the_box_head():
    torch.manual_seed(0)
    det = small_detector(init="mmdetection")
    predictor = det.roi_heads.box_predictor
    assert predictor.bbox_pred.weight.std().item() == pytest.approx(0.001, rel=0.15)
    assert predictor.cls_score.weight.std().item() == pytest.approx(0.01, rel=0.15)
    xavier = [det.roi_heads.box_head.fc6, det.roi_heads.box_head.fc7, *det.backbone.fpn.inner_blocks]
    for module in xavier:
        weight = next(m for m in module.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))).weight
        fan_out, fan_in = weight.shape[0] * weight[0, 0].numel(), weight[0].numel()
        bound = (6 / (fan_in + fan_out)) ** 0.5
        assert 0.9 * bound < weight.abs().max().item() <= bound
    biases = [predictor.bbox_pred.bias, predictor.cls_score.bias, det.roi_heads.box_head.fc6.bias]
    assert all(not b.any() for b in biases)
    with pytest.raises(ValueError, match="init must be one of"):
        small_detector(init="caffe2")


def test_rpn_ignores_the_anchors_on_a_batchs_padding():
    """mmdetection's valid flags: an image padded to its batch's size gets no target on anchors
    beyond its own size rounded up to 32 (here 30 -> 32 rows of a 64-row batch)."""
    from torchvision.models.detection.image_list import ImageList

    torch.manual_seed(0)
    det = small_detector(box_loss="l1", rpn_ignore_padding=True).train()
    rpn, seen = det.rpn, []
    sample = rpn.fg_bg_sampler
    rpn.fg_bg_sampler = lambda labels: (seen.append([x.clone() for x in labels]), sample(labels))[1]
    images = ImageList(torch.zeros(2, 3, 64, 64), [(64, 64), (30, 64)])
    features = {str(i): torch.randn(2, 16, 16 >> i, 16 >> i) for i in range(5)}
    box = {"boxes": torch.tensor([[4.0, 4.0, 28.0, 24.0]]), "labels": torch.tensor([1])}
    rpn(images, features, [box, box])
    anchors = rpn.anchor_generator(images, list(features.values()))[0]
    below = (anchors[:, 1] + anchors[:, 3]) / 2 >= 32
    ((full, short),) = seen
    assert below.any() and torch.all(short[below] == -1)  # never sampled
    assert torch.all(full[below] == 0)  # the full-size image's negatives there stay
    assert torch.equal(full[~below], short[~below])
