"""Check and time launch variants of the tiled kernels (``reassemble_tiled``, ``window_dot_tiled``)
against the generic ones, in one GPU call: the forward of carafe and local_similarity at the
benchmark shapes of ``benchmarks/bench_gpu.py`` (K=5, s=2, fp32 and bf16), for several block shapes,
channels staged per barrier and register budgets (``-DTILED_MIN_BLOCKS``), and both halo stagings:
``sync`` (plain loads) and ``async`` (the cp.async double buffer, ``-DTILED_ASYNC_STAGING=1``,
the shipped staging; there ``stage`` is the channels of each of the two buffers).

Every variant's output is first checked against the generic kernel on the same inputs (outputs
poisoned with NaN beforehand, so an unwritten element fails). The tiled kernels are checked
against the PyTorch path in float64 at multi-tile odd sizes for K in {3, 5, 7}, s in {2, 4},
groups, with a width of 37 and of 40 (the async staging copies 4 and 16 bytes at a time there, and
bf16 falls back to element copies at 37); the async builds there stage 3 channels per buffer in
blocks that own every channel of their group, so several chunks pass through both buffers, and
must equal the shipped tiled kernels bit for bit. Times are CUDA-event medians after a warm-up.
Prints a table last; ``--out`` writes it as Markdown. Most of its time goes to compiling the 16
modules of tiled kernels (its run time on a GPU is not measured).

    PYTHONPATH=src python3 benchmarks/bench_kernel_variants.py --out $OUT/variants.md
    PYTHONPATH=src python3 benchmarks/bench_kernel_variants.py --profile  # one launch each, for ncu
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import torch

from uplab.ops import carafe, local_similarity
from uplab.ops.cuda import compiler, geometry, launchers, runtime, variants

sys.path.insert(0, str(Path(__file__).parent))
from bench_gpu import time_ms  # noqa: E402  (the same event timer as the GPU benchmark)

CUDA = torch.device("cuda")

K, S = 5, 2
SHAPES = {"1x256x120x120": (1, 256, 120, 120), "16x256x128x128": (16, 256, 128, 128)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
BLOCKS = ((32, 2), (32, 4), (32, 8))
# 32 channels per barrier was within 2% of 16 in the H200 run and would not fit two fp32 double
# buffers per SM at 32x8; dropped to keep the run near a minute.
STAGES = (8, 16)
MIN_BLOCKS = (1, 2)
STAGINGS = {"carafe": ("sync", "async"), "local_similarity": ("sync", "async")}
DEFAULT_MIN_BLOCKS = 2  # TILED_MIN_BLOCKS in uplab_scalar.cuh


@functools.cache
def _module(file: str, scalar: str, min_blocks: int, staging: str):
    """The tiled kernels of ``file`` for one storage type, built with this register budget and
    halo staging (the package's own build, ``uplab.ops.cuda.compiler.compiled``, also holds the
    generic kernels: compiling only the tiled ones keeps the 16 modules' compile time down)."""
    import cupy

    names = tuple(
        compiler.tiled_name(kernel, scalar, k)
        for kernel in compiler.KERNEL_FILES[file]
        if kernel in compiler.TILED_KERNELS
        for k in variants.TILED_KERNEL_SIZES
    )
    options = (*variants.build_options(staging), f"-DTILED_MIN_BLOCKS={min_blocks}")
    module = cupy.RawModule(
        code=compiler.kernel_source(file), options=options, name_expressions=names
    )
    return {n: module.get_function(n) for n in names}


def _run(fn, config, tensors, ints):
    import numpy as np

    args = tuple(np.uint64(t.data_ptr()) for t in tensors) + tuple(np.int32(i) for i in ints)
    stream = runtime.cupy_stream(
        torch.cuda.current_device(), torch.cuda.current_stream().cuda_stream
    )
    fn(config.grid, config.block, args, shared_mem=config.shared_mem, stream=stream)


def carafe_tiled(f, m, k, s, groups, block, stage, min_blocks, staging, split_channels=True):
    """``reassemble_tiled`` with an explicit launch, register budget and halo staging."""
    bsz, c, h, w = f.shape
    out = f.new_empty(bsz, c, h * s, w * s)
    n_sm = torch.cuda.get_device_properties(f.device).multi_processor_count
    cfg = geometry.tiled_config(
        *(bsz, c, h, w, k, s, groups, n_sm, block, stage, split_channels),
        staging=staging,
        itemsize=f.element_size(),
    )
    scalar = variants.scalar_type(f.dtype)
    fn = _module("carafe.cu", scalar, min_blocks, staging)[
        compiler.tiled_name("reassemble_tiled", scalar, k)
    ]
    _run(fn, cfg, (f, m, out), (c, h, w, s, groups, cfg.per_block, cfg.stage))
    return out


def similarity_tiled(q, key, k, s, groups, block, stage, min_blocks, staging):
    """``window_dot_tiled`` with an explicit launch, register budget and halo staging."""
    bsz, c, h, w = key.shape
    out = q.new_empty(bsz, groups * k * k, h * s, w * s)
    n_sm = torch.cuda.get_device_properties(q.device).multi_processor_count
    cfg = geometry.tiled_config(
        *(bsz, c, h, w, k, s, groups, n_sm, block, stage),
        split_channels=False,
        staging=staging,
        itemsize=key.element_size(),
    )
    scalar = variants.scalar_type(q.dtype)
    fn = _module("local_similarity.cu", scalar, min_blocks, staging)[
        compiler.tiled_name("window_dot_tiled", scalar, k)
    ]
    _run(fn, cfg, (q, key, out), (c, h, w, s, groups, cfg.stage))
    return out


def _launch_tiled(op, a, b, block, stage, min_blocks, staging="sync"):
    if op == "carafe":
        return carafe_tiled(a, b, K, S, 1, block, stage, min_blocks, staging)
    return similarity_tiled(a, b, K, S, 1, block, stage, min_blocks, staging)


def _generic(op, a, b):
    if op == "carafe":
        return launchers.reassemble(a, b, K, S, 1, path="generic")
    return launchers.window_dot(a, b, K, S, 1, path="generic")


def _inputs(op, shape, dtype):
    bsz, c, h, w = shape
    if op == "carafe":
        f = torch.randn(bsz, c, h, w, device="cuda", dtype=dtype)
        m = torch.softmax(torch.randn(bsz, K * K, h * S, w * S, device="cuda"), 1).to(dtype)
        return f, m, (bsz, c, h * S, w * S)
    q = torch.randn(bsz, c, h * S, w * S, device="cuda", dtype=dtype)
    key = torch.randn(bsz, c, h, w, device="cuda", dtype=dtype)
    return q, key, (bsz, K * K, h * S, w * S)


def _poison(shape, dtype):
    """Leave a NaN-filled block of this size in PyTorch's cache for the next allocation."""
    torch.full(shape, float("nan"), device="cuda", dtype=dtype)


def check_against_torch_path() -> list[str]:
    """Tiled kernels vs the float64 PyTorch path at multi-tile odd sizes; the async stagings also
    vs the shipped tiled kernels, bit for bit."""
    failures = []
    torch.manual_seed(1)
    for k in (3, 5, 7):
        for s in (2, 4):
            for groups in (1, 3):
                for width in (37, 40):
                    failures += _check_case(k, s, groups, width)
    return failures


def _check_case(k, s, groups, width) -> list[str]:
    failures = []
    f = torch.randn(2, 12, 21, width, device="cuda", dtype=torch.float64)
    m = torch.randn(2, groups * k * k, 21 * s, width * s, device="cuda", dtype=torch.float64)
    q = torch.randn(2, 12, 21 * s, width * s, device="cuda", dtype=torch.float64)
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 3e-2)):
        fd, md, qd = f.to(dtype), m.to(dtype), q.to(dtype)
        want_c = carafe(fd.double(), md.double(), k, s, group_size=groups, backend="torch")
        want_w = torch.cat(
            [
                local_similarity(qg.double(), fg.double(), k, s, backend="torch")
                for qg, fg in zip(qd.chunk(groups, 1), fd.chunk(groups, 1), strict=True)
            ],
            dim=1,
        )
        _poison(want_c.shape, dtype)
        got_c = launchers.reassemble(fd, md, k, s, groups, path="tiled")
        _poison(want_c.shape, dtype)
        got_a = carafe_tiled(
            fd, md, k, s, groups, geometry.TILED_BLOCK, 3, DEFAULT_MIN_BLOCKS, "async", False
        )
        _poison(want_w.shape, dtype)
        got_w = launchers.window_dot(qd, fd, k, s, groups, path="tiled")
        _poison(want_w.shape, dtype)
        got_wa = similarity_tiled(
            qd, fd, k, s, groups, geometry.TILED_BLOCK, 3, DEFAULT_MIN_BLOCKS, "async"
        )
        case = f"k={k} s={s} g={groups} w={width} {dtype}"
        for name, got, want in (
            ("carafe", got_c, want_c),
            ("carafe async", got_a, want_c),
            ("sim", got_w, want_w),
            ("sim async", got_wa, want_w),
        ):
            err = (got.double() - want).abs().max().item()
            scale = want.abs().max().item()
            if not err <= tol * max(1.0, scale):
                failures.append(f"{name} {case}: {err:.3g}")
        for name, got_async, got_sync in (("carafe", got_a, got_c), ("sim", got_wa, got_w)):
            if not torch.equal(got_async, got_sync):
                diff = (got_async.double() - got_sync.double()).abs().max().item()
                failures.append(f"{name} async != sync bit for bit {case}: {diff:.3g}")
    return failures


def copy_bandwidth() -> float:
    """Device-to-device copy of 1 GiB, bytes read + written per second."""
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return 2 * 2**30 / (time_ms(lambda: dst.copy_(src), CUDA, 1.0, 20) / 1e3)


def measure_case(op, shape_name, shape, dtype_name, dtype, copy_bw) -> list[tuple]:
    """Check every variant against the generic kernel, then time it."""
    a, b, out_shape = _inputs(op, shape, dtype)
    moved = sum(t.numel() * t.element_size() for t in (a, b))
    moved += torch.Size(out_shape).numel() * a.element_size()
    reference = _generic(op, a, b)
    candidates = {"generic": functools.partial(_generic, op, a, b)}
    for block in BLOCKS:
        for stage in STAGES:
            for mb in MIN_BLOCKS:
                for staging in STAGINGS[op]:
                    # The stage that runs: tiled_config shrinks it to fit 48 KiB of shared memory
                    # (async: two buffers), so two requested stages may name one variant.
                    used = geometry.tiled_config(
                        *(shape[0], shape[1], shape[2], shape[3], K, S, 1, 1, block, stage),
                        staging=staging,
                        itemsize=a.element_size(),
                    ).stage
                    name = f"tiled {block[0]}x{block[1]} stage {used} minb {mb} {staging}"
                    candidates[name] = functools.partial(
                        _launch_tiled, op, a, b, block, stage, mb, staging
                    )
    rows = []
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for name, fn in candidates.items():
        _poison(out_shape, dtype)
        got = fn()
        torch.cuda.synchronize()
        ok = torch.allclose(got.float(), reference.float(), atol=tol, rtol=tol)
        ok = ok and not got.isnan().any().item()
        del got
        ms = time_ms(fn, CUDA, 1.0, 20)
        rows.append((op, shape_name, dtype_name, name, ms, moved / ms / 1e6, ok))
        print(
            f"{op} {shape_name} {dtype_name} {name}: {ms:.3f} ms "
            f"{100 * moved / ms / 1e6 / (copy_bw / 1e9):.0f}% {'ok' if ok else 'WRONG'}",
            flush=True,
        )
    return rows


def async_vs_sync(rows) -> list[str]:
    """Per case and block shape: the fastest correct sync and async variants."""
    best = {}
    for op, shape_name, dtype_name, name, ms, _, ok in rows:
        if name == "generic" or not ok:
            continue
        words = name.split()  # tiled BxB stage N minb M staging
        key = (op, shape_name, dtype_name, words[1], words[-1])
        if key not in best or ms < best[key][1]:
            best[key] = (name, ms)
    lines = []
    for (op, shape_name, dtype_name, block, staging), (name, ms) in best.items():
        if staging != "async":
            continue
        sync = best.get((op, shape_name, dtype_name, block, "sync"))
        versus = f"; sync {sync[0]} {sync[1]:.3f} ms, x{sync[1] / ms:.2f}" if sync else ""
        lines.append(f"- {op} {shape_name} {dtype_name} {block}: {name} {ms:.3f} ms{versus}")
    return lines


def profile() -> None:
    """One launch of each tiled kernel at the large shape, default launch (for ncu)."""
    for op in ("carafe", "local_similarity"):
        for dtype in DTYPES.values():
            a, b, _ = _inputs(op, SHAPES["16x256x128x128"], dtype)
            for staging in STAGINGS[op]:
                _launch_tiled(
                    op,
                    a,
                    b,
                    geometry.TILED_BLOCK,
                    geometry.TILED_STAGE_CHANNELS,
                    DEFAULT_MIN_BLOCKS,
                    staging,
                )
            torch.cuda.synchronize()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--profile", action="store_true", help="one launch of each tiled kernel")
    args = parser.parse_args(argv)
    if args.profile:
        profile()
        return 0

    print(f"device: {torch.cuda.get_device_name()}", flush=True)
    copy_bw = copy_bandwidth()
    print(f"copy bandwidth {copy_bw / 1e9:.0f} GB/s", flush=True)

    failures = check_against_torch_path()
    print(
        f"tiled (sync and async) vs PyTorch path (k 3/5/7, s 2/4, groups, widths 37/40): "
        f"{len(failures)} failures",
        flush=True,
    )
    for line in failures:
        print("  FAIL", line)

    rows = []
    for op in ("carafe", "local_similarity"):
        for shape_name, shape in SHAPES.items():
            for dtype_name, dtype in DTYPES.items():
                rows += measure_case(op, shape_name, shape, dtype_name, dtype, copy_bw)
                torch.cuda.empty_cache()

    lines = [
        f"Device: {torch.cuda.get_device_name()}, copy {copy_bw / 1e9:.0f} GB/s; K={K}, s={S}; "
        f"tiled (sync and async) vs PyTorch path failures: {len(failures)}",
        "",
        "| op | shape | dtype | variant | fwd ms | GB/s | % of copy | matches generic |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | --- |",
    ]
    best = {}
    for op, shape_name, dtype_name, name, ms, gbs, ok in rows:
        lines.append(
            f"| {op} | {shape_name} | {dtype_name} | {name} | {ms:.3f} | {gbs:.0f} | "
            f"{100 * gbs / (copy_bw / 1e9):.0f} | {'yes' if ok else 'NO'} |"
        )
        key = (op, shape_name, dtype_name)
        if ok and name != "generic" and (key not in best or ms < best[key][1]):
            best[key] = (name, ms)
    lines += ["", "Fastest correct tiled variant:", ""]
    lines += [f"- {' '.join(k)}: {v[0]} ({v[1]:.3f} ms)" for k, v in best.items()]
    lines += ["", "Async vs sync staging, fastest correct of each per block shape:", ""]
    lines += async_vs_sync(rows)
    report = "\n".join(lines)
    print()
    print(report)
    if args.out is not None:
        args.out.write_text(report + "\n")
    return 1 if failures or not all(r[-1] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
