import math
from functools import partial

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from uplab.analysis.cost import ROOT
from uplab.models import DenseModel
from uplab.models.decoders.bts import BTSDecoder, LocalPlanarGuidance, PlaneReduction
from uplab.upsamplers import build

# a ResNet-shaped pyramid at 1/8 of ResNet-50's widths (strides 2 to 32)
CHANNELS = [8, 32, 64, 128, 256]


def _pyramid(size=64, batch=2, channels=CHANNELS):
    return [torch.randn(batch, c, size // 2**i, size // 2**i) for i, c in enumerate(channels, 1)]


@pytest.mark.parametrize(
    "name, options",
    [("bilinear", {}), ("carafe", {}), ("sapa_g", {"embedding_dim": 8}), ("fade", {"align_guide": True})],
)
def test_forward_backward_with_each_upsampler(name, options):
    dec = BTSDecoder(CHANNELS, partial(build, name, **options), num_features=128)
    features = [f.requires_grad_() for f in _pyramid()]
    out = dec(features)
    assert out.shape == (2, 1, 64, 64)
    out.square().mean().backward()
    steps = [dec.upconv5, dec.upconv4, dec.upconv3, dec.upconv2]
    assert all(p.grad is not None for s in steps for p in s.up.parameters())
    assert dec.upconv1.up is None  # stride 2 -> 1 stays nearest, as in SAPA's setting
    assert all(f.grad is not None for f in features)


def test_lpg_turns_planes_into_depth():
    lpg = LocalPlanarGuidance(2)
    # fronto-parallel plane at distance 3: constant depth 3 over each 2x2 cell
    flat = torch.tensor([0.0, 0.0, 1.0, 3.0]).view(1, 4, 1, 1).expand(1, 4, 2, 3)
    assert torch.allclose(lpg(flat), torch.full((1, 1, 4, 6), 3.0))
    # tilted normal (1, 0, 1) (renormalised by the layer): depth n4 / (n1 u + n3), u = -1/4, +1/4
    tilted = torch.tensor([1.0, 0.0, 1.0, 2.0]).view(1, 4, 1, 1)
    n = 1 / math.sqrt(2)
    expected = torch.tensor([[2 / (n * -0.25 + n), 2 / (n * 0.25 + n)]] * 2)
    assert torch.allclose(lpg(tilted)[0, 0], expected)
    with pytest.raises(ValueError, match=r"\[B, 4, H, W\]"):
        lpg(torch.zeros(1, 3, 2, 2))


def test_plane_reduction_layout_and_ranges():
    reduce = PlaneReduction(128, 128, max_depth=10.0)
    # the release's 1x1 chain 128-128-64-32-16-8, then 3 raw plane parameters
    widths = [m.out_channels for m in reduce.modules() if isinstance(m, torch.nn.Conv2d)]
    assert widths == [128, 64, 32, 16, 8, 3]
    plane = reduce(torch.randn(2, 128, 3, 5))
    assert torch.allclose(plane[:, :3].norm(dim=1), torch.ones(2, 3, 5))
    assert (plane[:, 2] >= 0.5 - 1e-6).all()  # polar angle below 60 degrees: the normal faces the camera
    assert ((plane[:, 3] > 0) & (plane[:, 3] < 10)).all()
    final = PlaneReduction(32, 16, max_depth=10.0, final=True)(torch.randn(1, 32, 4, 4))
    assert final.shape == (1, 1, 4, 4) and ((final > 0) & (final < 1)).all()


def test_conf_composes_the_depth_model_with_bts():
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose(
            "train",
            overrides=["task=depth", "decoder=bts", "backbone=resnet50", "decoder.num_features=128", "upsampler=carafe"],
        )
    model = DenseModel(instantiate(cfg.backbone)(in_chans=3), instantiate(cfg.decoder), instantiate(cfg.upsampler), 1)
    assert isinstance(model.decoder, BTSDecoder) and isinstance(model.head, torch.nn.Identity)
    assert model.decoder.skip_input  # the config's backbone leads with the input: accepted, unused
    out = model(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 1, 64, 64)


def test_errors_name_what_was_expected():
    with pytest.raises(ValueError, match="five levels"):
        BTSDecoder([64, 256, 512], partial(build, "nearest"))
    with pytest.raises(ValueError, match="multiple of 32"):
        BTSDecoder(CHANNELS, partial(build, "nearest"), num_features=100)
    with pytest.raises(ValueError, match="sapa_b or sapa_g"):
        BTSDecoder(CHANNELS, partial(build, "sapa_i"), num_features=128)
    dec = BTSDecoder(CHANNELS, partial(build, "nearest"), num_features=128)
    with pytest.raises(ValueError, match="divisible"):
        dec(_pyramid(size=60))
    with pytest.raises(ValueError, match="predicts 1 channels"):
        DenseModel(_FixedBackbone(), partial(BTSDecoder, num_features=128), partial(build, "nearest"), 3)


class _FixedBackbone(torch.nn.Module):
    channels = CHANNELS


def test_decoder_convolutions_start_xavier_uniform_as_released():
    torch.manual_seed(0)
    dec = BTSDecoder(CHANNELS, partial(build, "carafe"), num_features=128)
    convs = [m for m in dec.modules() if isinstance(m, torch.nn.Conv2d)]
    big = max(convs, key=lambda c: c.weight.numel()).weight
    # xavier-uniform std: sqrt(2 / (fan_in + fan_out)) (PyTorch's default would be ~0.58 of it)
    fan_in, fan_out = big.shape[1] * big[0, 0].numel(), big.shape[0] * big[0, 0].numel()
    assert abs(big.std().item() / math.sqrt(2 / (fan_in + fan_out)) - 1) < 0.05
    upsampler_convs = [m for m in dec.upconv5.up.modules() if isinstance(m, torch.nn.Conv2d)]
    assert any(c.bias is not None for c in upsampler_convs)
    assert all(not c.bias.any() for c in upsampler_convs if c.bias is not None)
