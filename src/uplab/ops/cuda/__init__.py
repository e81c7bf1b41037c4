"""CUDA path of the ops: the kernels of ``kernels/*.cu``, compiled at run time by NVRTC through
CuPy and launched on PyTorch tensors.

:func:`carafe` and :func:`local_similarity` (autograd Functions, :mod:`.autograd`) are what
:func:`uplab.ops.carafe` and :func:`uplab.ops.local_similarity` call when the backend resolves to
``"cuda"``. Below them, one module per concern, each importing only those listed before it:

- :mod:`.variants`: which arguments each kernel family takes, how each build is configured, and
  the builds the launchers take (switches a benchmark may flip);
- :mod:`.compiler`: the sources, their template instantiations, and the memoized NVRTC build;
- :mod:`.device_properties`: the device's multiprocessors, shared memory and compute capability;
- :mod:`.geometry`: grid, block, shared memory and work split of every launch;
- :mod:`.runtime`: the launch of a compiled kernel on PyTorch's current stream;
- :mod:`.launchers`: the three operations (``reassemble``, ``reassemble_transpose``,
  ``window_dot``), each choosing its kernel and launching it.

CuPy is imported only when a kernel is compiled or launched, so the package imports (and its
launch arithmetic is testable) without it.
"""

from uplab.ops.cuda.autograd import carafe, local_similarity

__all__ = ["carafe", "local_similarity"]
