"""Functional core of uplab: the two ops every learned upsampler here is built from, and A2U's
learned downsampling.

- :func:`carafe`: apply per-pixel reassembly kernels (CARAFE, FADE, SAPA, A2U).
- :func:`local_similarity`: SAPA's query–key similarity over a low-resolution window.
- :func:`learned_downsample`: A2U's per-point weighted ``k x k`` windows at stride ``s`` (PyTorch
  only, on any device).

``carafe`` and ``local_similarity`` take ``backend="auto" | "torch" | "cuda"``; see
:mod:`uplab.ops.dispatch`.
"""

from uplab.ops.carafe import carafe
from uplab.ops.learned_downsampling import learned_downsample
from uplab.ops.local_similarity import local_similarity

__all__ = ["carafe", "learned_downsample", "local_similarity"]
