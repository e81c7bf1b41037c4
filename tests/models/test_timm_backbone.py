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
    with pytest.raises(RuntimeError, match="backbone.pretrained=false"):
        TimmBackbone("resnet18", pretrained=True)
