from functools import partial

import pytest
import torch

from uplab.models import DenseModel
from uplab.models.decoders.a2u_matting import A2UMattingDecoder, A2UMattingEncoder
from uplab.upsamplers import available, build
from uplab.weights import WeightsError


def a2u_matting(upsampler: str) -> DenseModel:
    """The matting rows' model, as the matting task builds it."""
    return DenseModel(A2UMattingEncoder(4), A2UMattingDecoder, partial(build, upsampler), 1)


@pytest.mark.parametrize("name", ["bilinear", "carafe", "sapa_g", "fade"])
def test_forward_backward_with_each_upsampler(name):
    if name not in available():
        pytest.skip(reason=f"upsampler {name!r} is not registered yet")
    net = a2u_matting(name)
    x = torch.randn(2, 4, 32, 48)
    out = net(x)
    assert out.shape == (2, 1, 32, 48)
    out.square().mean().backward()
    ups = [s.up for s in net.decoder.stages]
    assert all(p.grad is not None for u in ups for p in u.parameters())


def test_bad_input_and_wrong_encoder_layout():
    net = a2u_matting("bilinear")
    with pytest.raises(ValueError, match="multiples of 16"):
        net(torch.zeros(1, 4, 30, 32))
    with pytest.raises(ValueError, match=r"\[B, 4, H, W\]"):
        net(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="8 features"):
        A2UMattingDecoder([64, 128, 256], partial(build, "bilinear"))


def test_weights_start_as_the_releases_xavier_normal():
    torch.manual_seed(0)
    net = a2u_matting("carafe")
    assert isinstance(net.head, torch.nn.Identity)  # the decoder ends in the release's predictor
    gain = torch.nn.init.calculate_gain("leaky_relu", 0.01)
    # xavier-normal std: gain * sqrt(2 / (fan_in + fan_out)), here for the upsamplers' convs too
    for conv in (net.backbone.layer1[0].conv1[0], net.decoder.stages[0].dconv.conv1[0]):
        weight = conv.weight
        fan_in, fan_out = weight.shape[1] * weight[0, 0].numel(), weight.shape[0] * weight[0, 0].numel()
        assert abs(weight.std().item() / (gain * (2 / (fan_in + fan_out)) ** 0.5) - 1) < 0.05
    upsampler_convs = [m for m in net.decoder.stages[0].up.modules() if isinstance(m, torch.nn.Conv2d)]
    assert upsampler_convs and all(not c.bias.any() for c in upsampler_convs if c.bias is not None)


def release_resnet34_checkpoint() -> dict:
    """Random weights in the key layout of the A2U release's ImageNet ResNet-34 (inplace_abn's
    ResNet: ``module.mod<k>.block<j>.convs.{conv,bn}<i>``, ``proj_conv``/``proj_bn``), renamed from
    torchvision's ResNet-34 (the same architecture)."""
    from torchvision.models import resnet34

    state = {}
    for key, value in resnet34().state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue  # inplace_abn keeps none
        key = key.replace("downsample.0", "proj_conv").replace("downsample.1", "proj_bn")
        parts = key.split(".")
        if parts[0].startswith("layer"):
            stage, block, rest = int(parts[0][5:]) + 1, int(parts[1]) + 1, parts[2:]
            if rest[0] in ("conv1", "bn1", "conv2", "bn2"):
                rest = ["convs", *rest]
            key = ".".join([f"mod{stage}", f"block{block}", *rest])
        elif parts[0] in ("conv1", "bn1"):
            key = "mod1." + key
        else:
            key = "classifier." + key
        state["module." + key] = torch.randn_like(value.float())
    return {"state_dict": state}


def test_release_imagenet_resnet34_loads_into_every_encoder_tensor(tmp_path):
    checkpoint = release_resnet34_checkpoint()
    path = tmp_path / "resnet34.pth.tar"
    torch.save(checkpoint, path)
    encoder = A2UMattingEncoder(4, checkpoint=path)
    source, ours = checkpoint["state_dict"], encoder.state_dict()
    assert torch.equal(ours["stem.0.weight"][:, :3], source["module.mod1.conv1.weight"])
    assert not ours["stem.0.weight"][:, 3].any()  # the trimap channel starts at 0
    pairs = {
        "down2.conv1.0.weight": "mod3.block1.convs.conv1.weight",
        "down2.proj.1.running_var": "mod3.block1.proj_bn.running_var",
        "layer2.0.conv2.1.bias": "mod3.block2.convs.bn2.bias",
        "layer3.2.conv1.0.weight": "mod4.block4.convs.conv1.weight",
        "layer1.2.conv2.1.running_mean": "mod2.block3.convs.bn2.running_mean",
    }
    for ours_key, release_key in pairs.items():
        assert torch.equal(ours[ours_key], source["module." + release_key]), ours_key


def test_a_missing_or_foreign_encoder_checkpoint_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="cloudstor"):
        A2UMattingEncoder(4, checkpoint=tmp_path / "absent.pth.tar")
    partial_checkpoint = release_resnet34_checkpoint()
    del partial_checkpoint["state_dict"]["module.mod4.block2.convs.conv2.weight"]
    with pytest.raises(WeightsError, match=r"1 module tensors the checkpoint lacks: layer3\.0\.conv2\.0\.weight"):
        A2UMattingEncoder(4).load_pretrained(partial_checkpoint)
    foreign = release_resnet34_checkpoint()
    foreign["state_dict"]["module.mod2.block1.convs.bn3.weight"] = torch.zeros(64)
    with pytest.raises(ValueError, match=r"no part of inplace_abn's ResNet-34 \(module\.mod2\.block1\.convs\.bn3\.weight\)"):
        A2UMattingEncoder(4).load_pretrained(foreign)
    wrong_shape = release_resnet34_checkpoint()
    wrong_shape["state_dict"]["module.mod2.block1.convs.bn1.bias"] = torch.zeros(32)
    with pytest.raises(WeightsError, match=r"layer1\.0\.conv1\.1\.bias \(32,\) vs \(64,\)"):
        A2UMattingEncoder(4).load_pretrained(wrong_shape)


def a2u_row_model() -> DenseModel:
    """The A2U row's model: the encoder downsamples with the decoder's A2U blocks."""
    up = partial(build, "a2u", learned_downsampling=True)
    return DenseModel(A2UMattingEncoder(4, learned_downsampling=True), A2UMattingDecoder, up, 1)


def test_a2u_row_encoder_downsamples_with_the_decoders_a2u_kernels():
    torch.manual_seed(0)
    net = a2u_row_model().eval()
    x = torch.randn(1, 4, 32, 32)
    with torch.no_grad():
        before = net.backbone(x)
        # stage 2 of the decoder upsamples guided by e2, whose learned downsampling feeds layer 2
        net.decoder.stages[1].up.downsample_weights.weight.normal_()
        after = net.backbone(x)
    unchanged, changed = [0, 1, 2, 3, 4], [5, 6, 7]  # x, e0, e1, s1, e2 | s2, e3, top
    assert all(torch.equal(before[i], after[i]) for i in unchanged)
    assert not any(torch.allclose(before[i], after[i]) for i in changed)
    # the blocks are the decoder's: counted once, and trained by the decoder's loss
    assert not any("downsample" in k for k in net.backbone.state_dict())
    assert sum("downsample_weights" in k for k in net.state_dict()) == 8
    net.train()
    net(torch.randn(2, 4, 32, 32)).mean().backward()
    assert all(s.up.downsample_weights.weight.grad.abs().sum() > 0 for s in net.decoder.stages)


def test_other_rows_max_pool_and_have_no_downsampling_parameters():
    net = a2u_matting("a2u")
    assert not any("downsample" in k for k in net.state_dict())
    x = torch.randn(1, 4, 32, 32)
    features = net.backbone(x)
    torch.testing.assert_close(features[2], torch.nn.functional.max_pool2d(features[1], 2))


def test_learned_downsampling_needs_a2u_blocks_bound_from_the_decoder():
    with pytest.raises(ValueError, match="upsampler.learned_downsampling=true"):
        encoder = A2UMattingEncoder(4, learned_downsampling=True)
        DenseModel(encoder, A2UMattingDecoder, partial(build, "bilinear"), 1)
    with pytest.raises(ValueError, match="bind_decoder"):
        A2UMattingEncoder(4, learned_downsampling=True)(torch.zeros(1, 4, 32, 32))
