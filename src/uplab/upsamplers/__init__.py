"""Every upsampler as a drop-in ``nn.Module``: ``build(name, in_channels, scale=2, **kw)``.

One file per operator family; importing this package registers them all.
"""

from uplab.upsamplers import (
    a2u,  # noqa: F401  (registers a2u)
    basic,  # noqa: F401  (registers nearest, bilinear, deconv, pixelshuffle)
    carafe,  # noqa: F401  (registers carafe)
    dysample,  # noqa: F401  (registers dysample)
    fade,  # noqa: F401  (registers fade, fade_lite, semishift)
    indexnet,  # noqa: F401  (registers indexnet)
    sapa,  # noqa: F401  (registers sapa_i, sapa_b, sapa_g)
)
from uplab.upsamplers.base import Upsampler
from uplab.upsamplers.registry import available, build, is_guided, register

__all__ = ["Upsampler", "available", "build", "is_guided", "register"]
