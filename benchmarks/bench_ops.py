"""Time and memory of the ops and upsamplers against the unfold-and-repeat formulation.

Each measurement runs in a fresh subprocess, so its peak memory is its own: peak resident memory
above the process's baseline on CPU, ``torch.cuda.max_memory_allocated`` on CUDA.

    python benchmarks/bench_ops.py                       # CPU, both shapes, ops and upsamplers
    python benchmarks/bench_ops.py --quick               # the small shape only, ops only
    python benchmarks/bench_ops.py --device cuda --output docs/bench_cuda.md

Shapes (batch x channels x low-res size -> high-res size): 1x256x120x120 -> 240^2 (the shape of
the published runtime comparison) and 8x256x64x64 -> 128^2.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

SHAPES = {"1x256x120x120": (1, 256, 120, 120), "8x256x64x64": (8, 256, 64, 64)}
OP_IMPLS = ["torch", "unfold"]
KERNEL, SCALE = 5, 2


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _make_case(kind: str, name: str, impl: str, shape, device: str):
    """Return ``(params, inputs, fn)``: ``fn(*inputs)`` is the forward to time."""
    import torch

    from uplab.ops import carafe, local_similarity
    from uplab.ops.reference import carafe_unfold, local_similarity_unfold

    b, c, h, w = shape
    k, s = KERNEL, SCALE
    gen = torch.Generator(device="cpu").manual_seed(0)

    def rand(*size):
        return torch.randn(*size, generator=gen).to(device).requires_grad_()

    if kind == "op" and name == "carafe":
        x = rand(b, c, h, w)
        masks = torch.softmax(torch.randn(b, k * k, s * h, s * w, generator=gen), 1).to(device)
        masks.requires_grad_()
        fn = {
            "torch": lambda f, m: carafe(f, m, k, s, backend="torch"),
            "cuda": lambda f, m: carafe(f, m, k, s, backend="cuda"),
            "unfold": lambda f, m: carafe_unfold(f, m, k, s),
        }[impl]
        return [], (x, masks), fn
    if kind == "op" and name == "local_similarity":
        query, key = rand(b, c, s * h, s * w), rand(b, c, h, w)
        fn = {
            "torch": lambda q, kk: local_similarity(q, kk, k, s, backend="torch"),
            "cuda": lambda q, kk: local_similarity(q, kk, k, s, backend="cuda"),
            "unfold": lambda q, kk: local_similarity_unfold(q, kk, k, s),
        }[impl]
        return [], (query, key), fn
    from uplab.upsamplers import build

    module = build(name, in_channels=c, scale=s).to(device)
    x = rand(b, c, h, w)
    if module.guided:
        guide = rand(b, c, s * h, s * w)
        return list(module.parameters()), (x, guide), lambda a, g: module(a, guide=g)
    return list(module.parameters()), (x,), module


def _measure(kind: str, name: str, impl: str, shape_key: str, mode: str, device: str, repeat: int) -> dict:
    """Time ``mode`` ("fwd" or "fwd_bwd") of one case; peak memory counts from after the inputs
    exist (the peak resident size only grows, so each mode runs in its own process)."""
    import torch

    torch.manual_seed(0)
    params, inputs, fn = _make_case(kind, name, impl, SHAPES[shape_key], device)
    cuda = device.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def forward():
        with torch.no_grad():
            fn(*inputs)

    def forward_backward():
        out = fn(*inputs)
        out.backward(torch.ones_like(out))
        for t in [*inputs, *params]:
            t.grad = None

    step = forward if mode == "fwd" else forward_backward
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _peak_rss_bytes()
    step()  # warm-up (kernel compilation, allocator); its peak is the same as a timed step's
    times = []
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() if cuda else _peak_rss_bytes()) - base
    return {"ms": 1e3 * statistics.median(times), "peak_mb": max(peak, 0) / 2**20}


def _run_isolated(args: argparse.Namespace, kind, name, impl, shape_key) -> dict:
    """Measure each mode in a child process so that peak memory is not shared between cases."""
    result = {}
    for mode in ("fwd", "fwd_bwd"):
        cmd = [
            sys.executable, __file__, "--_one", json.dumps([kind, name, impl, shape_key, mode]),
            "--device", args.device, "--repeat", str(args.repeat),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        if proc.returncode != 0:
            tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
            return {"error": tail[0]}
        result[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _cases(args):
    impls = [*OP_IMPLS, "cuda"] if args.device.startswith("cuda") else OP_IMPLS
    for shape_key in args.shapes:
        for op in args.ops:
            for impl in impls:
                yield "op", op, impl, shape_key
        for up in args.upsamplers:
            yield "upsampler", up, "module", shape_key


def _markdown(rows: list[dict], device: str) -> str:
    import pandas as pd

    df = pd.DataFrame(rows)
    lines = []
    for shape_key, part in df.groupby("shape", sort=False):
        lines.append(f"\n**{shape_key} -> x{SCALE} ({device}, k={KERNEL})**\n")
        lines.append(part.drop(columns="shape").to_markdown(index=False, floatfmt=".1f"))
    return "\n".join(lines) + "\n"


def _ratio_rows(rows: list[dict]) -> list[dict]:
    out = []
    index = {(r["shape"], r["name"], r["impl"]): r for r in rows if "error" not in r}
    for (shape, name, impl), r in index.items():
        base = index.get((shape, name, "unfold"))
        if impl in ("unfold", "module") or base is None:  # upsampler rows have no unfold twin
            continue
        out.append({
            "shape": shape, "op": name, "impl": impl,
            "time fwd+bwd / unfold": r["fwd+bwd ms"] / base["fwd+bwd ms"],
            "peak fwd+bwd / unfold": r["fwd+bwd peak MB"] / max(base["fwd+bwd peak MB"], 1e-9),
        })
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--ops", nargs="*", default=["carafe", "local_similarity"])
    parser.add_argument("--upsamplers", nargs="*", default=None,
                        help="upsampler names (default: every registered one)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small shape, ops only, 1 repeat")
    parser.add_argument("--output", type=Path, help="also write the tables as Markdown here")
    parser.add_argument("--_one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._one:
        kind, name, impl, shape_key, mode = json.loads(args._one)
        print(json.dumps(_measure(kind, name, impl, shape_key, mode, args.device, args.repeat)))
        return

    if args.quick:
        args.shapes, args.upsamplers, args.repeat = ["1x256x120x120"], [], 1
    if args.upsamplers is None:
        from uplab.upsamplers import available

        args.upsamplers = available()

    from rich.console import Console
    from rich.progress import Progress

    cases = list(_cases(args))
    rows = []
    with Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("benchmarking", total=len(cases))
        for kind, name, impl, shape_key in cases:
            progress.update(task, description=f"{shape_key} {name} [{impl}]")
            r = _run_isolated(args, kind, name, impl, shape_key)
            row = {"shape": shape_key, "name": name, "impl": impl}
            if "error" in r:
                row["error"] = r["error"]
            else:
                row.update({
                    "fwd ms": r["fwd"]["ms"], "fwd+bwd ms": r["fwd_bwd"]["ms"],
                    "fwd peak MB": r["fwd"]["peak_mb"], "fwd+bwd peak MB": r["fwd_bwd"]["peak_mb"],
                })
            rows.append(row)
            progress.advance(task)

    import platform

    import torch

    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    if args.device.startswith("cuda"):
        machine = f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    text = f"Machine: {machine}; median of {args.repeat} after one warm-up.\n" + _markdown(rows, args.device)
    ratios = _ratio_rows(rows)
    if ratios:
        import pandas as pd

        text += "\n**Ratios against the unfold formulation (lower is better)**\n\n"
        text += pd.DataFrame(ratios).to_markdown(index=False, floatfmt=".3f") + "\n"
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.output.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, args.output)


if __name__ == "__main__":
    main()
