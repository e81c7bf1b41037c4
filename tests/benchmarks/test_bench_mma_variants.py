"""benchmarks/bench_mma_variants.py without a GPU: the variants it times, their shared memory, and
its refusal to run without a CUDA device."""

import importlib.util
import sys
from pathlib import Path

import pytest

from uplab.ops.cuda import geometry, variants

ROOT = Path(__file__).parents[2]
spec = importlib.util.spec_from_file_location(
    "bench_mma_variants", ROOT / "benchmarks" / "bench_mma_variants.py"
)
bench = importlib.util.module_from_spec(spec)
sys.path.insert(0, str(ROOT / "benchmarks"))
spec.loader.exec_module(bench)


def test_variants_include_the_shipped_one_and_fit_the_default_shared_memory():
    assert variants.MMA_VARIANT in bench.VARIANTS
    assert len(set(bench.VARIANTS)) == len(bench.VARIANTS)
    assert {v.tile for v in bench.VARIANTS} == {(8, 8), (16, 8), (32, 4)}
    plain = [v for v in bench.VARIANTS if not v.strip]
    assert len([v for v in plain if v.tile == (8, 8)]) == 6  # all fit at 8 x 8 parents
    assert {v.slabs for v in bench.VARIANTS if v.tile == (32, 4)} == {1}
    # each tile in strips too, at the shipped pipeline, with room for a block's carry
    strips = [v for v in bench.VARIANTS if v.strip]
    assert {v.tile for v in strips} == {(8, 8), (16, 8), (32, 4)}
    assert {(v.stages, v.slabs) for v in strips} == {(variants.MMA_VARIANT.stages, 1)}
    for variant in strips:
        for k in variants.MMA_KERNEL_SIZES:
            assert geometry.mma_config(16, 256, 128, 128, k, 1, 132, 2, variant).strip_tiles > 1
    assert sorted(bench.KERNEL_SIZES) == sorted(variants.MMA_KERNEL_SIZES)
    for variant in bench.VARIANTS:
        for k in variants.MMA_KERNEL_SIZES:
            assert geometry.mma_shared_mem(k, 2, variant) <= geometry.SHARED_MEMORY_LIMIT, variant


def test_refuses_to_run_without_a_cuda_device(monkeypatch):
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        bench.main([])
