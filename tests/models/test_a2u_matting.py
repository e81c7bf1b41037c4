from functools import partial

import pytest
import torch

from uplab.models.decoders.a2u_matting import A2UMatting, A2UMattingDecoder
from uplab.upsamplers import available, build


@pytest.mark.parametrize("name", ["bilinear", "carafe", "sapa_g", "fade"])
def test_forward_backward_with_each_upsampler(name):
    if name not in available():
        pytest.skip(reason=f"upsampler {name!r} is not registered yet")
    net = A2UMatting(partial(build, name))
    x = torch.randn(2, 4, 32, 48)
    out = net(x)
    assert out.shape == (2, 1, 32, 48)
    out.square().mean().backward()
    ups = [s.up for s in net.decoder.stages]
    assert all(p.grad is not None for u in ups for p in u.parameters())


def test_bad_input_and_wrong_encoder_layout():
    net = A2UMatting(partial(build, "bilinear"))
    with pytest.raises(ValueError, match="multiples of 16"):
        net(torch.zeros(1, 4, 30, 32))
    with pytest.raises(ValueError, match=r"\[B, 4, H, W\]"):
        net(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="8 features"):
        A2UMattingDecoder([64, 128, 256], partial(build, "bilinear"))
