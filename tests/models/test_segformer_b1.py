from functools import partial

import pytest
import torch

from uplab.models import DenseModel
from uplab.models.backbones.mit import MixTransformer
from uplab.models.decoders import SegFormerHead
from uplab.upsamplers import build, is_guided
from uplab.upsamplers.base import Upsampler


@pytest.mark.parametrize("name", ["bilinear", "carafe", "sapa_g", "fade"])
def test_segformer_b1_forward_backward_with_each_upsampler(name):
    # the papers' model (MiT-B1, all-MLP head with embedding 256, six x2 steps), at 64x64
    model = DenseModel(MixTransformer("mit_b1"), partial(SegFormerHead, embed_dim=256), partial(build, name), 150)
    image = torch.randn(2, 3, 64, 64)
    out = model(image)
    assert out.shape == (2, 150, 16, 16)  # stride 4, as SegFormer predicts
    out.logsumexp(dim=1).mean().backward()
    ups = [m for m in model.decoder.modules() if isinstance(m, Upsampler)]
    # bilinear resizes each level in one step, as the released head does; the others take six
    assert len(ups) == (0 if name == "bilinear" else 6)
    assert all(u.guided == is_guided(name) for u in ups)
    assert all(p.grad is not None for u in ups for p in u.parameters())
    assert model.backbone.stages[0].embed.proj.weight.grad is not None
