import pytest
import timm
import torch

from uplab.models.backbones import TimmBackbone


def test_channels_and_reductions_come_from_feature_info():
    backbone = TimmBackbone("test_resnet")
    info = timm.create_model("test_resnet", features_only=True).feature_info
    assert backbone.channels == info.channels()
    assert backbone.reductions == info.reduction()
    features = backbone(torch.randn(2, 3, 64, 64))
    assert [f.shape[1] for f in features] == backbone.channels
    assert [64 // f.shape[-1] for f in features] == backbone.reductions


def test_include_input_leads_with_the_image():
    backbone = TimmBackbone("test_resnet", in_chans=4, include_input=True, out_indices=(1, 2))
    x = torch.randn(1, 4, 32, 32)
    features = backbone(x)
    assert features[0] is x
    assert backbone.channels[0] == 4 and backbone.reductions == [1, 4, 8]
    assert [f.shape[-1] for f in features] == [32, 8, 4]


def test_wrong_input_channels_is_a_value_error():
    backbone = TimmBackbone("test_resnet", in_chans=4)
    with pytest.raises(ValueError, match=r"expected input \[B, 4, H, W\], got \(1, 3, 32, 32\)"):
        backbone(torch.randn(1, 3, 32, 32))


def test_pretrained_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match=r"timm/resnet18.*timm.create_model\('resnet18'"):
        TimmBackbone("resnet18", pretrained=True)


def test_frozen_params_match_names_as_bts_fixes_its_encoder():
    # BTS (cleinc/bts bts_main.py): the stem conv and every block's BatchNorm are fixed, not
    # the downsample BatchNorm nor the convolutions inside the blocks
    backbone = TimmBackbone("resnet18", frozen_params=[r"^conv1\.", r"(^|\.)bn\d+\."])
    frozen = {n for n, p in backbone.model.named_parameters() if not p.requires_grad}
    assert {"conv1.weight", "bn1.weight", "layer1.0.bn2.bias", "layer4.1.bn1.weight"} <= frozen
    assert not frozen & {"layer1.0.conv1.weight", "layer2.0.downsample.1.weight"}
