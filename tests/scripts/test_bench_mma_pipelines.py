"""scripts/bench_mma_pipelines.py without a GPU: the pipelines it times, their shared memory, and
its refusal to run without a CUDA device."""

import importlib.util
import sys
from pathlib import Path

import pytest

from uplab.ops import _cupy_kernels as kernels

ROOT = Path(__file__).parents[2]
spec = importlib.util.spec_from_file_location(
    "bench_mma_pipelines", ROOT / "scripts" / "bench_mma_pipelines.py"
)
bench = importlib.util.module_from_spec(spec)
sys.path.insert(0, str(ROOT / "scripts"))
spec.loader.exec_module(bench)


def test_pipelines_include_the_shipped_one_and_fit_the_default_shared_memory():
    assert kernels.MMA_PIPELINE in bench.PIPELINES
    assert len(set(bench.PIPELINES)) == len(bench.PIPELINES) == 6
    for pipeline in bench.PIPELINES:
        for k in kernels.MMA_KERNEL_SIZES:
            assert kernels.mma_shared_mem(k, 2, pipeline) <= kernels.SHARED_MEMORY_LIMIT, pipeline


def test_refuses_to_run_without_a_cuda_device(monkeypatch):
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        bench.main([])
