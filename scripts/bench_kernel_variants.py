"""Check and time launch variants of the tiled kernels (``reassemble_tiled``, ``window_dot_tiled``)
against the generic ones, in one GPU call: the forward of carafe and local_similarity at the
benchmark shapes of ``scripts/bench_gpu.py`` (K=5, s=2, fp32 and bf16), for several block shapes,
channels staged per barrier and register budgets (``-DTILED_MIN_BLOCKS``).

Every variant's output is first checked against the generic kernel on the same inputs (outputs
poisoned with NaN beforehand, so an unwritten element fails), and the tiled kernels against the
PyTorch path in float64 at multi-tile odd sizes for K in {3, 5, 7}, s in {2, 4}, groups. Times are
CUDA-event medians after a warm-up. Prints a table last; ``--out`` writes it as Markdown.

    PYTHONPATH=src python3 scripts/bench_kernel_variants.py --out $OUT/variants.md
    PYTHONPATH=src python3 scripts/bench_kernel_variants.py --profile   # one launch each, for ncu
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import torch

from uplab.ops import _cupy_kernels as kernels
from uplab.ops import carafe, local_similarity

sys.path.insert(0, str(Path(__file__).parent))
from bench_gpu import time_ms  # noqa: E402  (the same event timer as the GPU benchmark)

CUDA = torch.device("cuda")

K, S = 5, 2
SHAPES = {"1x256x120x120": (1, 256, 120, 120), "16x256x128x128": (16, 256, 128, 128)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
BLOCKS = ((32, 2), (32, 4), (32, 8))
STAGES = (8, 16, 32)
MIN_BLOCKS = (1, 2)


@functools.cache
def _module(file: str, scalar: str, min_blocks: int):
    import cupy

    names = kernels.name_expressions(file, scalar)
    module = cupy.RawModule(
        code=kernels.kernel_source(file),
        options=(*kernels.NVRTC_OPTIONS, f"-DTILED_MIN_BLOCKS={min_blocks}"),
        name_expressions=names,
    )
    return {n: module.get_function(n) for n in names}


def _launch_tiled(op, a, b, block, stage, min_blocks):
    """The tiled kernel of ``op`` with an explicit launch and register budget."""
    import cupy
    import numpy as np

    n_sm = torch.cuda.get_device_properties(a.device).multi_processor_count
    if op == "carafe":
        bsz, c, h, w = a.shape
        out = a.new_empty(bsz, c, h * S, w * S)
        cfg = kernels.tiled_config(bsz, c, h, w, K, S, 1, n_sm, block, stage)
        kernel, file = "reassemble_tiled", "carafe.cu"
        ints = (c, h, w, S, 1, cfg.per_block, cfg.stage)
    else:
        bsz, c, h, w = b.shape
        out = a.new_empty(bsz, K * K, h * S, w * S)
        cfg = kernels.tiled_config(bsz, c, h, w, K, S, 1, n_sm, block, stage, split_channels=False)
        kernel, file = "window_dot_tiled", "local_similarity.cu"
        ints = (c, h, w, S, 1, cfg.stage)
    scalar = kernels.scalar_type(a.dtype)
    fn = _module(file, scalar, min_blocks)[kernels.tiled_name(kernel, scalar, K)]
    args = tuple(np.uint64(t.data_ptr()) for t in (a, b, out)) + tuple(np.int32(i) for i in ints)
    stream = cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream)
    fn(cfg.grid, cfg.block, args, shared_mem=cfg.shared_mem, stream=stream)
    return out


def _generic(op, a, b):
    if op == "carafe":
        return kernels.reassemble(a, b, K, S, 1, path="generic")
    return kernels.window_dot(a, b, K, S, 1, path="generic")


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
    """Tiled kernels vs the float64 PyTorch path at multi-tile odd sizes."""
    failures = []
    torch.manual_seed(1)
    for k in (3, 5, 7):
        for s in (2, 4):
            for groups in (1, 3):
                f = torch.randn(2, 12, 21, 37, device="cuda", dtype=torch.float64)
                m = torch.randn(
                    2, groups * k * k, 21 * s, 37 * s, device="cuda", dtype=torch.float64
                )
                q = torch.randn(2, 12, 21 * s, 37 * s, device="cuda", dtype=torch.float64)
                for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 3e-2)):
                    fd, md, qd = f.to(dtype), m.to(dtype), q.to(dtype)
                    want_c = carafe(
                        fd.double(), md.double(), k, s, group_size=groups, backend="torch"
                    )
                    want_w = local_similarity(qd.double(), fd.double(), k, s, backend="torch")
                    _poison(want_c.shape, dtype)
                    got_c = kernels.reassemble(fd, md, k, s, groups, path="tiled")
                    _poison(want_w.shape, dtype)
                    got_w = kernels.window_dot(qd, fd, k, s, 1, path="tiled")
                    for name, got, want in (("carafe", got_c, want_c), ("sim", got_w, want_w)):
                        err = (got.double() - want).abs().max().item()
                        scale = want.abs().max().item()
                        if not err <= tol * max(1.0, scale):
                            failures.append(f"{name} k={k} s={s} g={groups} {dtype}: {err:.3g}")
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
    variants = [("generic", functools.partial(_generic, op, a, b))]
    for block in BLOCKS:
        for stage in STAGES:
            for mb in MIN_BLOCKS:
                variants.append(
                    (
                        f"tiled {block[0]}x{block[1]} stage {stage} minb {mb}",
                        functools.partial(_launch_tiled, op, a, b, block, stage, mb),
                    )
                )
    rows = []
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for name, fn in variants:
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--profile", action="store_true", help="one launch of each tiled kernel")
    args = parser.parse_args(argv)
    if args.profile:
        for op in ("carafe", "local_similarity"):
            for dtype in DTYPES.values():
                a, b, _ = _inputs(op, SHAPES["16x256x128x128"], dtype)
                _launch_tiled(op, a, b, kernels.TILED_BLOCK, kernels.TILED_STAGE_CHANNELS, 1)
                torch.cuda.synchronize()
        return 0

    print(f"device: {torch.cuda.get_device_name()}", flush=True)
    copy_bw = copy_bandwidth()
    print(f"copy bandwidth {copy_bw / 1e9:.0f} GB/s", flush=True)

    failures = check_against_torch_path()
    print(f"tiled vs PyTorch path (k 3/5/7, s 2/4, groups): {len(failures)} failures", flush=True)
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
        f"tiled vs PyTorch path failures: {len(failures)}",
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
    report = "\n".join(lines)
    print()
    print(report)
    if args.out is not None:
        args.out.write_text(report + "\n")
    return 1 if failures or not all(r[-1] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
