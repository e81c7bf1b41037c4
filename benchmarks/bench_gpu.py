"""Benchmark the ops' implementations: CUDA kernels, PyTorch path, unfold-and-repeat formulation.

For carafe and local_similarity at 1x256x120x120 -> 240^2 and 16x256x128x128 -> 256^2 (K=5, s=2),
in float32 and bfloat16 (the kernels as shipped, ``cuda``, and the kernel variants of
KERNEL_VARIANTS that differ from it: the tiled kernels' plain-load halo staging ``cuda-sync``, their
cp.async staging ``cuda-async``, carafe's tensor-core forward ``cuda-mma``, bfloat16, and that
forward over the other tiles, ``cuda-mma-8x8`` and ``cuda-mma-16x8``, or in strips of tiles,
``cuda-mma-8x8-strip`` and ``cuda-mma-strip``): forward and
forward+backward time (CUDA events around back-to-back calls, warm-up, median), achieved forward
bandwidth (the bytes the op must move: inputs read once, output written once) against the device's
measured device-to-device copy bandwidth (bytes read + written), and the peak
``torch.cuda.max_memory_allocated`` of forward+backward against the inputs, output, output gradient
and input gradients themselves. Ends with the issue's targets, met or missed, and writes the table
as Markdown (``--out``; default ``$OUT/gpu_bench.md`` when ``OUT`` is set).

    PYTHONPATH=src python benchmarks/bench_gpu.py             # on a GPU (benchmarks/gpu_check.sh)
    PYTHONPATH=src python benchmarks/bench_gpu.py --dry-run --device cpu   # tiny shapes, no GPU
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from uplab.ops import carafe, local_similarity
from uplab.ops.cuda import variants
from uplab.ops.cuda.variants import MmaVariant
from uplab.ops.reference import carafe_unfold, local_similarity_unfold

KERNEL, SCALE = 5, 2
SHAPES = {"1x256x120x120": (1, 256, 120, 120), "16x256x128x128": (16, 256, 128, 128)}
LARGE = "16x256x128x128"  # the shape of the issue's targets
DRY_SHAPES = {"1x8x12x10": (1, 8, 12, 10), "2x8x16x16": (2, 8, 16, 16)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class KernelChoice(NamedTuple):
    """What a row launches: uplab.ops.cuda.variants' TILED_STAGING and TILED_MMA, and for the
    tensor-core forward its MMA_VARIANT (None: the shipped one)."""

    staging: str
    mma: bool
    mma_variant: MmaVariant | None = None


# Kernel variants timed beside the shipped "cuda", each through the op like "cuda" (so with the
# same timer as the target's row). A variant that launches the same kernels as the shipped choice
# for an op and dtype is left out of the table (it stays reachable through --once).
KERNEL_VARIANTS = {
    "cuda-sync": KernelChoice("sync", False),  # FFMA tiled kernels, halo staged with plain loads
    "cuda-async": KernelChoice("async", False),  # FFMA tiled kernels, halo staged with cp.async
    "cuda-mma": KernelChoice("async", True),  # carafe's tensor-core forward (bfloat16)
    # the tensor-core forward over the tiles it does not ship (it ships 32 x 4 parents): 8 x 8,
    # 256 threads a block, and 16 x 8, 512 threads (docs/benchmarks.md, "Tensor cores")
    "cuda-mma-8x8": KernelChoice("async", True, MmaVariant(warps_x=1, warps_y=8)),
    "cuda-mma-16x8": KernelChoice("async", True, MmaVariant(warps_x=2, warps_y=8)),
    # the 8 x 8 tile and the shipped one in strips down a column, halo rows carried over in
    # shared memory
    "cuda-mma-8x8-strip": KernelChoice("async", True, MmaVariant(warps_x=1, warps_y=8, strip=True)),
    "cuda-mma-strip": KernelChoice("async", True, MmaVariant(strip=True)),
}
VARIANT_NAMES = {
    "cuda-sync": "plain-load staging",
    "cuda-async": "cp.async staging",
    "cuda-mma": "tensor-core forward",
    "cuda-mma-8x8": "tensor-core forward over 8 x 8 parents",
    "cuda-mma-16x8": "tensor-core forward over 16 x 8 parents",
    "cuda-mma-8x8-strip": "tensor-core forward in strips of 8 x 8 parents",
    "cuda-mma-strip": "tensor-core forward in strips of 32 x 4 parents",
}
IMPLS = ("cuda", *KERNEL_VARIANTS, "torch", "unfold")


@dataclass
class Row:
    op: str
    shape: str
    dtype: str
    impl: str
    forward_ms: float | None = None
    train_ms: float | None = None
    bandwidth: float | None = None  # bytes / s of the forward
    peak: int | None = None
    ideal: int | None = None
    note: str = ""


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# A CUDA timing spans at least this many milliseconds of back-to-back calls (see time_ms).
MIN_SPAN_MS = 1.0
MAX_CALLS_PER_TIMING = 64


def calls_per_timing(one_call_ms: float, min_span_ms: float = MIN_SPAN_MS) -> int:
    """Back-to-back calls per pair of CUDA events, enough to span ``min_span_ms``."""
    if one_call_ms <= 0:
        return MAX_CALLS_PER_TIMING
    return max(1, min(MAX_CALLS_PER_TIMING, math.ceil(min_span_ms / one_call_ms)))


def _event_ms(fn, calls: int, lead: int = 1) -> float:
    """GPU milliseconds of ``calls`` back-to-back calls of ``fn``. The ``lead`` untimed calls
    queue work ahead of the first event, so the GPU is still busy with them when the event is
    recorded and the host's dispatch of the first timed call is not idle time between the
    events."""
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(lead):
        fn()
    begin.record()
    for _ in range(calls):
        fn()
    end.record()
    end.synchronize()
    return begin.elapsed_time(end)


def time_ms(fn, device, budget_s: float, max_iters: int) -> float:
    """Median milliseconds of one call of ``fn`` after one warm-up, over at least 3 timings and
    ``budget_s``. On CUDA a timing is a pair of events around :func:`calls_per_timing` calls (from
    one timed call), after one untimed call queued ahead of them (:func:`_event_ms`), divided by
    their number: the host's launch work then overlaps the GPU's, as in a training loop, instead of
    counting as idle GPU time between the events. With one call per timing, the bf16 carafe
    forward at the large shape read 0.486 ms through ``carafe()`` against 0.426 ms for the same
    kernel launched directly (H100, fe702ff, 2026-11-26)."""
    fn()
    _sync(device)
    calls = calls_per_timing(_event_ms(fn, 1)) if device.type == "cuda" else 1
    times = []
    start = time.perf_counter()
    while len(times) < 3 or (len(times) < max_iters and time.perf_counter() - start < budget_s):
        if device.type == "cuda":
            times.append(_event_ms(fn, calls) / calls)
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measuring_order(plan) -> list[int]:
    """Indices of ``plan``'s (op, shape name, shape, dtype, impl) rows in the order they are
    measured: the CUDA kernels' rows first, then the baselines (torch, unfold), each in table
    order. Measured right after the fp32 unfold baseline's seconds of work, a sub-millisecond
    kernel row reads about 5% slow on an H100 (0.384 ms against 0.363-0.366 ms for the same
    kernel before and after, 3667d5e, 2026-11-26), and the table's order puts the bf16 carafe
    target's row there."""
    return sorted(range(len(plan)), key=lambda i: not plan[i][4].startswith("cuda"))


def copy_bandwidth(device, n_bytes: int) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read and written."""
    src = torch.empty(n_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, budget_s=0.5, max_iters=50)
    return 2 * n_bytes / (ms / 1e3)


def _op_call(op: str, impl: str):
    backend = "cuda" if impl.startswith("cuda") else impl
    if op == "carafe":
        if impl == "unfold":
            return lambda a, b: carafe_unfold(a, b, KERNEL, SCALE)
        return lambda a, b: carafe(a, b, KERNEL, SCALE, backend=backend)
    if impl == "unfold":
        return lambda a, b: local_similarity_unfold(a, b, KERNEL, SCALE)
    return lambda a, b: local_similarity(a, b, KERNEL, SCALE, backend=backend)


def _applies(op: str, dtype_name: str, impl: str) -> bool:
    return not impl.startswith("cuda-mma") or _mma_applies(op, dtype_name)


def _mma_applies(op: str, dtype_name: str) -> bool:
    return op == "carafe" and dtype_name == "bf16"


def _shipped_choice() -> KernelChoice:
    return KernelChoice(variants.TILED_STAGING, variants.TILED_MMA, variants.MMA_VARIANT)


def _kernels_of(op: str, dtype_name: str, impl: str) -> KernelChoice:
    """The kernels that ``impl`` launches for this op and dtype (no tensor-core variant where the
    tensor-core forward does not run)."""
    shipped = _shipped_choice()
    staging, mma, variant = KERNEL_VARIANTS.get(impl, shipped)
    mma = mma and _mma_applies(op, dtype_name)
    return KernelChoice(staging, mma, (variant or shipped.mma_variant) if mma else None)


def _timed(op: str, dtype_name: str, impl: str) -> bool:
    """Whether the table times ``impl``: it applies and, for a variant, differs from "cuda"."""
    if not _applies(op, dtype_name, impl):
        return False
    if impl not in KERNEL_VARIANTS:
        return True
    return _kernels_of(op, dtype_name, impl) != _kernels_of(op, dtype_name, "cuda")


@contextlib.contextmanager
def _kernel_choice(impl: str):
    """The kernels of ``impl`` for its forward and backward launches (see KERNEL_VARIANTS)."""
    shipped = _shipped_choice()
    if impl in KERNEL_VARIANTS:
        staging, mma, variant = KERNEL_VARIANTS[impl]
        variants.TILED_STAGING, variants.TILED_MMA = staging, mma
        variants.MMA_VARIANT = variant or shipped.mma_variant
    try:
        yield
    finally:
        variants.TILED_STAGING, variants.TILED_MMA, variants.MMA_VARIANT = shipped


def _inputs(op, shape, dtype, device):
    b, c, h, w = shape
    hi = (h * SCALE, w * SCALE)
    if op == "carafe":
        first = torch.randn(b, c, h, w, device=device, dtype=dtype)
        second = torch.softmax(torch.randn(b, KERNEL**2, *hi, device=device), 1).to(dtype)
        out_shape = (b, c, *hi)
    else:
        first = torch.randn(b, c, *hi, device=device, dtype=dtype)
        second = torch.randn(b, c, h, w, device=device, dtype=dtype)
        out_shape = (b, KERNEL**2, *hi)
    return first, second, torch.randn(out_shape, device=device, dtype=dtype)


def measure(op, shape_name, shape, dtype_name, impl, device, budget_s) -> Row:
    """One row. The unfold formulation, when it runs out of memory on the whole batch (fp32 at the
    large shape needs about 78 GiB), is measured again in 2, 4, ... batch chunks run one after
    the other, and the row says so: its times are then those of the whole batch in chunks."""
    dtype = DTYPES[dtype_name]
    chunks = 1
    while True:
        row = Row(op, shape_name, dtype_name, impl)
        out_of_memory = False
        try:
            with _kernel_choice(impl):
                _measure_into(row, _op_call(op, impl), op, shape, dtype, device, budget_s, chunks)
        except torch.cuda.OutOfMemoryError:
            out_of_memory = True  # retried below, once this handler's traceback is released
        except RuntimeError as exc:  # e.g. a backend that cannot run here
            row.note = str(exc).splitlines()[0][:80]
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if not out_of_memory:
            if chunks > 1:
                row.note = "; ".join(
                    n for n in (f"whole batch out of memory: run in {chunks} chunks", row.note) if n
                )
            return row
        if impl != "unfold" or chunks >= shape[0]:
            row.note = "out of memory"
            return row
        chunks *= 2


def _measure_into(row, call, op, shape, dtype, device, budget_s, chunks=1) -> None:
    """Forward and forward+backward times, forward bandwidth, peak memory, into ``row``; the
    batch in ``chunks`` consecutive calls when ``chunks`` > 1."""
    a, b, grad = _inputs(op, shape, dtype, device)
    step = -(-shape[0] // chunks)

    def split(*tensors):
        # no slicing for one chunk: a slice's backward would add a full-size gradient buffer
        if chunks == 1:
            return [tensors]
        return [tuple(t[i : i + step] for t in tensors) for i in range(0, shape[0], step)]

    nbytes = lambda *ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
    row.forward_ms = time_ms(lambda: [call(x, y) for x, y in split(a, b)], device, budget_s, 100)
    row.bandwidth = nbytes(a, b, grad) / (row.forward_ms / 1e3)
    a.requires_grad_(True)
    b.requires_grad_(True)

    def train_step():
        a.grad = b.grad = None
        for x, y, g in split(a, b, grad):
            call(x, y).backward(g)

    row.train_ms = time_ms(train_step, device, budget_s, 100)
    a.grad = b.grad = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        train_step()
        torch.cuda.synchronize(device)
        row.peak = torch.cuda.max_memory_allocated(device)
        # inputs, output, output gradient, input gradients
        row.ideal = nbytes(a, b, grad) + nbytes(grad) + nbytes(a, b)


def forward_once(op, shape, dtype_name, impl, device, runs: int = 3) -> None:
    """``runs`` forwards of one op and impl, synchronised: what ``--once`` hands a profiler."""
    a, b, _ = _inputs(op, shape, DTYPES[dtype_name], device)
    call = _op_call(op, impl)
    with _kernel_choice(impl), torch.no_grad():
        for _ in range(runs):
            call(a, b)
    _sync(device)


def _fmt(value, spec):
    return "—" if value is None else format(value, spec)


def markdown(rows: list[Row], copy_bw: float, device_name: str, timer: str) -> str:
    lines = [
        f"Device: {device_name}; device-to-device copy bandwidth {copy_bw / 1e9:.0f} GB/s "
        f"(read + written). K={KERNEL}, s={SCALE}. Times: median ms ({timer}).",
        "",
        "| op | shape | dtype | impl | fwd ms | fwd+bwd ms | fwd GB/s | % of copy | "
        "peak fwd+bwd MiB | peak / (in+out+grads) | note |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        fraction = None if r.bandwidth is None else 100 * r.bandwidth / copy_bw
        ratio = None if r.peak is None else r.peak / r.ideal
        lines.append(
            f"| {r.op} | {r.shape} | {r.dtype} | {r.impl} | {_fmt(r.forward_ms, '.3f')} | "
            f"{_fmt(r.train_ms, '.3f')} | {_fmt(r.bandwidth and r.bandwidth / 1e9, '.0f')} | "
            f"{_fmt(fraction, '.0f')} | {_fmt(r.peak and r.peak / 2**20, '.0f')} | "
            f"{_fmt(ratio, '.2f')} | {r.note} |"
        )
    return "\n".join(lines)


def targets(rows: list[Row], copy_bw: float, large: str) -> list[str]:
    """The issue's targets for carafe at the large shape, met or missed, with the numbers."""
    by = {(r.op, r.shape, r.dtype, r.impl): r for r in rows}
    lines = []
    for dtype in DTYPES:
        kernel = by.get(("carafe", large, dtype, "cuda"))
        if kernel is None or kernel.train_ms is None:
            lines.append(f"- carafe {dtype}: CUDA kernels did not run ({kernel and kernel.note})")
            continue
        fraction = kernel.bandwidth / copy_bw
        lines.append(
            f"- carafe {dtype} forward at {large}: {100 * fraction:.0f}% of copy bandwidth "
            f"(target >= 60%): {'met' if fraction >= 0.6 else 'MISSED'}"
        )
        for impl, what in VARIANT_NAMES.items():
            opt_in = by.get(("carafe", large, dtype, impl))
            if opt_in is None or opt_in.bandwidth is None:
                continue
            # a variant that reaches the target is the candidate for the shipped default
            reaches = " (would meet the target)" if opt_in.bandwidth >= 0.6 * copy_bw else ""
            lines.append(
                f"  - with the {what} ({impl}): {100 * opt_in.bandwidth / copy_bw:.0f}% "
                f"({opt_in.forward_ms:.3f} ms vs {kernel.forward_ms:.3f} ms shipped; fwd+bwd "
                f"{_fmt(opt_in.train_ms, '.3f')} vs {kernel.train_ms:.3f} ms){reaches}"
            )
        for impl, need in (("unfold", 5), ("torch", 2)):
            other = by[("carafe", large, dtype, impl)]
            if other.train_ms is None:
                lines.append(
                    f"- carafe {dtype} fwd+bwd vs {impl}: {impl} did not run ({other.note})"
                )
                continue
            speedup = other.train_ms / kernel.train_ms
            lines.append(
                f"- carafe {dtype} fwd+bwd {speedup:.1f}x faster than {impl} "
                f"(target >= {need}x): {'met' if speedup >= need else 'MISSED'}"
            )
        if kernel.peak is not None:
            ratio = kernel.peak / kernel.ideal
            lines.append(
                f"- carafe {dtype} fwd+bwd peak memory {ratio:.2f}x inputs+outputs+gradients "
                f"(target <= 1.10x): {'met' if ratio <= 1.10 else 'MISSED'}"
            )
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes, short timings")
    parser.add_argument("--out", type=Path, default=None, help="Markdown file for the table")
    parser.add_argument("--budget", type=float, default=0.4, help="seconds per timing (>= 3 runs)")
    parser.add_argument(
        "--once",
        metavar="OP:DTYPE:IMPL",
        help="run only this forward, 3 times, at the large shape (for a profiler: the third "
        "launch is warm), e.g. carafe:bf16:cuda-mma",
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device; use --device cpu (with --dry-run)")
    if args.once:
        try:
            op, dtype_name, impl = args.once.split(":")
            if op not in ("carafe", "local_similarity") or dtype_name not in DTYPES:
                raise ValueError
            if impl not in IMPLS or not _applies(op, dtype_name, impl):
                raise ValueError
        except ValueError:
            parser.error(
                f"--once takes OP:DTYPE:IMPL with OP carafe or local_similarity, DTYPE in "
                f"{list(DTYPES)}, IMPL in {list(IMPLS)} (cuda-mma*: carafe bf16), got {args.once!r}"
            )
        shape = (DRY_SHAPES if args.dry_run else SHAPES)["2x8x16x16" if args.dry_run else LARGE]
        forward_once(op, shape, dtype_name, impl, device)
        return 0
    shapes = DRY_SHAPES if args.dry_run else SHAPES
    budget = 0.01 if args.dry_run else args.budget
    impls = IMPLS if device.type == "cuda" else ("torch", "unfold")
    out = args.out or (Path(os.environ["OUT"]) / "gpu_bench.md" if "OUT" in os.environ else None)

    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
        copy_bw = copy_bandwidth(device, 2**30 if not args.dry_run else 2**24)
    else:
        device_name = "cpu"
        copy_bw = copy_bandwidth(device, 2**24)
    print(f"device: {device_name}; copy bandwidth {copy_bw / 1e9:.0f} GB/s", flush=True)

    torch.manual_seed(0)
    plan = [
        (op, shape_name, shape, dtype_name, impl)
        for op in ("carafe", "local_similarity")
        for shape_name, shape in shapes.items()
        for dtype_name in DTYPES
        for impl in impls
        if _timed(op, dtype_name, impl)
    ]
    rows = [None] * len(plan)
    for i in measuring_order(plan):
        op, shape_name, shape, dtype_name, impl = plan[i]
        rows[i] = row = measure(op, shape_name, shape, dtype_name, impl, device, budget)
        print(
            f"{op} {shape_name} {dtype_name} {impl}: fwd {_fmt(row.forward_ms, '.3f')} ms, "
            f"fwd+bwd {_fmt(row.train_ms, '.3f')} ms {row.note}",
            flush=True,
        )
    timer = "CUDA events" if device.type == "cuda" else "perf_counter"
    report = markdown(rows, copy_bw, device_name, timer)
    if device.type == "cuda":
        report += "\n\nTargets (carafe, large shape):\n\n" + "\n".join(
            targets(rows, copy_bw, list(shapes)[-1])
        )
    print()
    print(report)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report + "\n")
        print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
