"""The properties of a CUDA device that the launch code reads, queried once per device.

The CPU emulation of the kernels (``tests/ops/test_kernels_on_cpu.py``) replaces these with an
emulated GPU's, beside :func:`uplab.ops.cuda.runtime.launch`.
"""

from __future__ import annotations

import functools

import torch


@functools.cache
def multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


@functools.cache
def shared_memory(device_index: int) -> tuple[int, int]:
    """Opt-in shared memory of one block and an SM's shared memory, in bytes."""
    properties = torch.cuda.get_device_properties(device_index)
    return properties.shared_memory_per_block_optin, properties.shared_memory_per_multiprocessor


@functools.cache
def compute_capability(device_index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device_index)
