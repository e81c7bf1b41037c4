from functools import partial

import pytest
import torch

from uplab.models import DenseModel
from uplab.models.decoders.a2u_matting import A2UMattingDecoder, A2UMattingEncoder
from uplab.upsamplers import available, build


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
