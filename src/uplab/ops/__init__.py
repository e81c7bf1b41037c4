"""Functional core of uplab: the two ops every learned upsampler here is built from.

- :func:`carafe`: apply per-pixel reassembly kernels (CARAFE, FADE, SAPA, A2U).
- :func:`local_similarity`: SAPA's query–key similarity over a low-resolution window.

Both take ``backend="auto" | "torch" | "cuda"``; see :mod:`uplab.ops.dispatch`.
"""

from uplab.ops.carafe import carafe
from uplab.ops.local_similarity import local_similarity

__all__ = ["carafe", "local_similarity"]
