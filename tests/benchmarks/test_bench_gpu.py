"""benchmarks/bench_gpu.py without a GPU: the kernel switches of the variant rows, the targets'
verdicts from measured rows, and a dry run of the whole script on the CPU."""

import importlib.util
import sys
from pathlib import Path

import pytest

from uplab.ops.cuda import geometry, variants

ROOT = Path(__file__).parents[2]
spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "benchmarks" / "bench_gpu.py")
bench_gpu = importlib.util.module_from_spec(spec)
sys.modules["bench_gpu"] = bench_gpu
spec.loader.exec_module(bench_gpu)

LARGE = "16x256x128x128"


def _switches():
    return variants.TILED_STAGING, variants.TILED_MMA, variants.MMA_VARIANT


def test_variant_rows_switch_the_kernels_and_restore_them():
    shipped = _switches()
    for impl, (staging, mma, variant) in bench_gpu.KERNEL_VARIANTS.items():
        with bench_gpu._kernel_choice(impl):
            assert _switches() == (staging, mma, variant or shipped[2])
        assert _switches() == shipped
    with pytest.raises(RuntimeError), bench_gpu._kernel_choice("cuda-mma-8x8"):
        assert variants.MMA_VARIANT.tile == (8, 8)
        raise RuntimeError("a failed measurement")
    assert _switches() == shipped
    with bench_gpu._kernel_choice("cuda"):
        assert _switches() == shipped
    for impl in ("cuda-mma", "cuda-mma-8x8", "cuda-mma-16x8"):
        assert bench_gpu._applies("carafe", "bf16", impl)
        assert not bench_gpu._applies("carafe", "fp32", impl)
        assert not bench_gpu._applies("local_similarity", "bf16", impl)


def test_wider_tile_rows_launch_the_variants_the_emulator_tests():
    # the rows time the tensor-core tiles other than the shipped 32 x 4 (docs/benchmarks.md,
    # "Tensor cores"), which fit the default shared memory at every K the forward takes
    tiles = {
        impl: choice.mma_variant.tile
        for impl, choice in bench_gpu.KERNEL_VARIANTS.items()
        if choice.mma_variant is not None
    }
    assert tiles == {
        "cuda-mma-8x8": (8, 8),
        "cuda-mma-16x8": (16, 8),
        "cuda-mma-8x8-strip": (8, 8),
        "cuda-mma-strip": variants.MMA_VARIANT.tile,
    }
    assert {
        i for i, v in bench_gpu.KERNEL_VARIANTS.items() if v.mma_variant and v.mma_variant.strip
    } == {
        "cuda-mma-8x8-strip",
        "cuda-mma-strip",
    }
    for impl in tiles:
        assert geometry.mma_variant_fits(bench_gpu.KERNEL_VARIANTS[impl].mma_variant)


def _timed_impls(op, dtype):
    return [i for i in bench_gpu.IMPLS if bench_gpu._timed(op, dtype, i)]


def test_table_skips_variants_that_launch_the_shipped_kernels(monkeypatch):
    # With async staging shipped, "cuda-async" repeats "cuda" except where the shipped choice is
    # the tensor-core forward (carafe bf16 with TILED_MMA); "cuda-mma*" only apply there.
    monkeypatch.setattr(variants, "TILED_STAGING", "async")
    monkeypatch.setattr(variants, "TILED_MMA", False)
    wide = ["cuda-mma-8x8", "cuda-mma-16x8", "cuda-mma-8x8-strip", "cuda-mma-strip"]
    assert _timed_impls("carafe", "fp32") == ["cuda", "cuda-sync", "torch", "unfold"]
    assert _timed_impls("carafe", "bf16") == [
        "cuda",
        "cuda-sync",
        "cuda-mma",
        *wide,
        "torch",
        "unfold",
    ]
    assert _timed_impls("local_similarity", "bf16") == ["cuda", "cuda-sync", "torch", "unfold"]
    monkeypatch.setattr(variants, "TILED_MMA", True)
    shipped_mma = ["cuda", "cuda-sync", "cuda-async"]  # cuda-async: the FFMA kernel
    assert _timed_impls("carafe", "bf16") == [*shipped_mma, *wide, "torch", "unfold"]
    assert bench_gpu._timed("carafe", "fp32", "cuda-async") is False
    # once another tile is shipped, its row repeats "cuda" and is left out
    shipped = bench_gpu.KERNEL_VARIANTS[wide[0]].mma_variant
    monkeypatch.setattr(variants, "MMA_VARIANT", shipped)
    assert _timed_impls("carafe", "bf16") == [*shipped_mma, *wide[1:], "torch", "unfold"]


def _row(dtype, impl, forward_ms, train_ms, moved=1e9, peak=None, ideal=None):
    return bench_gpu.Row(
        "carafe", LARGE, dtype, impl, forward_ms, train_ms, moved / (forward_ms / 1e3), peak, ideal
    )


def test_targets_judge_the_shipped_kernels_and_report_the_variants():
    copy_bw = 4e12  # bytes/s: 1 GB moved in 0.25 ms would be 100%
    rows = []
    for dtype in ("fp32", "bf16"):
        rows += [
            _row(dtype, "cuda", 1.0, 3.0, peak=105, ideal=100),  # 25% of copy
            _row(dtype, "cuda-sync", 0.4, 2.5),  # 62.5%
            *([_row(dtype, "cuda-mma", 0.3, 2.4)] if dtype == "bf16" else []),  # 83%
            _row(dtype, "torch", 9.0, 7.0),
            _row(dtype, "unfold", 20.0, 30.0),
        ]
    lines = bench_gpu.targets(rows, copy_bw, LARGE)
    fp32 = [line for line in lines if "fp32" in line or line.startswith("  -")][:6]
    assert fp32[0] == (
        f"- carafe fp32 forward at {LARGE}: 25% of copy bandwidth (target >= 60%): MISSED"
    )
    assert fp32[1] == (
        "  - with the plain-load staging (cuda-sync): 62% (0.400 ms vs 1.000 ms shipped; fwd+bwd "
        "2.500 vs 3.000 ms) (would meet the target)"
    )
    assert "10.0x faster than unfold (target >= 5x): met" in fp32[2]
    assert "2.3x faster than torch (target >= 2x): met" in fp32[3]
    assert "peak memory 1.05x inputs+outputs+gradients (target <= 1.10x): met" in fp32[4]


def test_dry_run_on_cpu_writes_the_table(tmp_path):
    out = tmp_path / "bench.md"
    assert bench_gpu.main(["--dry-run", "--device", "cpu", "--out", str(out)]) == 0
    table = out.read_text()
    assert "| carafe | 2x8x16x16 | bf16 | torch |" in table
    assert "cuda" not in table.split("\n", 2)[2]  # no CUDA rows without a GPU


def test_targets_report_the_tensor_core_forward_for_bfloat16():
    rows = [
        _row("bf16", "cuda", 1.0, 3.0),
        _row("bf16", "cuda-mma", 0.3, 2.4),
        _row("bf16", "cuda-mma-16x8", 0.4, 2.3),
        _row("bf16", "cuda-mma-strip", 0.45, 2.3),  # 55%: short of the target
        _row("bf16", "torch", 9.0, 7.0),
        _row("bf16", "unfold", 20.0, 30.0),
    ]
    report = "\n".join(bench_gpu.targets(rows, 4e12, LARGE))
    assert (
        "  - with the tensor-core forward (cuda-mma): 83% (0.300 ms vs 1.000 ms shipped" in report
    )
    assert (
        "  - with the tensor-core forward over 16 x 8 parents (cuda-mma-16x8): 62% (0.400 ms vs "
        "1.000 ms shipped; fwd+bwd 2.300 vs 3.000 ms) (would meet the target)"
    ) in report
    strip = next(line for line in report.splitlines() if "(cuda-mma-strip)" in line)
    assert strip.endswith("vs 3.000 ms)") and ": 56% (" in strip


def test_unfold_out_of_memory_is_measured_again_in_batch_chunks(monkeypatch):
    # fp32 unfold at 16x256x128x128 needs about 78 GiB, more than an H100 has: the row is then
    # measured in batch chunks (same gradients, summed times) and says so; other impls are not.
    batches = []

    def fake_call(op, impl):
        def call(a, b):
            batches.append(a.shape[0])
            if a.shape[0] > 1:
                raise bench_gpu.torch.cuda.OutOfMemoryError("CUDA out of memory")
            return (a.sum() * b.sum()).expand(a.shape[0], a.shape[1], 6, 6)

        return call

    monkeypatch.setattr(bench_gpu, "_op_call", fake_call)
    cpu = bench_gpu.torch.device("cpu")
    row = bench_gpu.measure("carafe", "4x2x3x3", (4, 2, 3, 3), "fp32", "unfold", cpu, 0.0)
    assert row.note == "whole batch out of memory: run in 4 chunks"
    assert row.forward_ms is not None and row.train_ms is not None
    assert batches[:3] == [4, 2, 1] and set(batches[3:]) == {1}
    row = bench_gpu.measure("carafe", "4x2x3x3", (4, 2, 3, 3), "fp32", "torch", cpu, 0.0)
    assert row.note == "out of memory" and row.forward_ms is None


def test_once_runs_one_forward_for_a_profiler_and_refuses_unknown_specs(monkeypatch):
    calls = []
    monkeypatch.setattr(bench_gpu, "_op_call", lambda op, impl: lambda a, b: calls.append(impl))
    assert bench_gpu.main(["--device", "cpu", "--dry-run", "--once", "carafe:fp32:torch"]) == 0
    assert calls == ["torch"] * 3
    for spec in ("carafe:fp32", "carafe:fp64:torch", "carafe:fp32:cuda-mma", "conv:fp32:torch"):
        with pytest.raises(SystemExit):
            bench_gpu.main(["--device", "cpu", "--dry-run", "--once", spec])


def test_cuda_timings_span_enough_back_to_back_calls():
    # one call per pair of events would count the host's launch work as GPU time for short
    # kernels; a timing covers about a millisecond of calls, at most MAX_CALLS_PER_TIMING
    assert bench_gpu.calls_per_timing(0.1) == 10
    assert bench_gpu.calls_per_timing(0.45) == 3
    assert bench_gpu.calls_per_timing(2.0) == 1
    assert bench_gpu.calls_per_timing(0.001) == bench_gpu.MAX_CALLS_PER_TIMING
    assert bench_gpu.calls_per_timing(0.0) == bench_gpu.MAX_CALLS_PER_TIMING
    calls = []
    cpu = bench_gpu.torch.device("cpu")
    assert bench_gpu.time_ms(lambda: calls.append(1), cpu, 0.0, 5) >= 0
    assert len(calls) == 4  # the warm-up and three timed calls: one call per timing on the CPU


def test_cuda_timings_queue_a_call_before_the_first_event(monkeypatch):
    # the host must have work queued on the GPU when it records the first event, or the
    # first timed call's dispatch counts as GPU time
    log, names = [], iter(["begin", "end"])

    class FakeEvent:
        def __init__(self, enable_timing):
            self.name = next(names)

        def record(self):
            log.append(self.name)

        def synchronize(self):
            log.append("sync")

        def elapsed_time(self, other):
            return 6.0

    monkeypatch.setattr(bench_gpu.torch.cuda, "Event", FakeEvent)
    assert bench_gpu._event_ms(lambda: log.append("call"), 3) == 6.0
    assert log == ["call", "begin", "call", "call", "call", "end", "sync"]


def test_kernel_rows_are_measured_before_the_baselines():
    # a baseline's seconds of work slow the kernel row measured right after it (H100, 3667d5e,
    # 2026-11-26): every cuda* row is measured first, each group in table order
    plan = [
        (op, LARGE, None, dtype, impl)
        for op in ("carafe", "local_similarity")
        for dtype in ("fp32", "bf16")
        for impl in ("cuda", "cuda-mma-8x8", "torch", "unfold")
    ]
    order = [plan[i] for i in bench_gpu.measuring_order(plan)]
    impls = [entry[4] for entry in order]
    assert impls == ["cuda", "cuda-mma-8x8"] * 4 + ["torch", "unfold"] * 4
    assert sorted(order) == sorted(plan)
    kernels = [entry for entry in plan if entry[4].startswith("cuda")]
    assert order[: len(kernels)] == kernels
