import pytest
import timm
import torch

from uplab.models.backbones import TimmBackbone
from uplab.weights import WeightsError


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


def test_checkpoint_loads_and_frozen_backbone_neither_trains_nor_updates_statistics(tmp_path):
    trained = TimmBackbone("test_resnet", include_input=True)
    with torch.no_grad():  # weights and BN statistics unlike a fresh model's
        for p in trained.parameters():
            p.add_(0.1 * torch.randn_like(p))
    trained(torch.randn(4, 3, 32, 32) * 3 + 1)  # train mode: running statistics move
    torch.save(trained.model.state_dict(), tmp_path / "backbone.pt")
    trained.eval()
    x = torch.randn(2, 3, 32, 32)
    expected = trained(x)

    frozen = TimmBackbone("test_resnet", include_input=True, checkpoint=tmp_path / "backbone.pt", frozen=True)
    assert not any(p.requires_grad for p in frozen.parameters())
    frozen.train()
    for _ in range(2):  # training-mode passes use and keep the loaded statistics
        got = frozen(x)
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e)


def test_checkpoint_that_is_missing_or_does_not_fit_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no weights file at .*missing\.pt.*shared backbone"):
        TimmBackbone("test_resnet", checkpoint=tmp_path / "missing.pt")
    torch.save(TimmBackbone("test_resnet", in_chans=4).model.state_dict(), tmp_path / "rgbt.pt")
    with pytest.raises(WeightsError, match=r"rgbt\.pt does not fit .*conv1\.0\.weight \(16, 4, 3, 3\) vs \(16, 3, 3, 3\)"):
        TimmBackbone("test_resnet", checkpoint=tmp_path / "rgbt.pt")
