"""SegFormer-B1 training-step benchmark per upsampler (issue 5, item 5).

One optimiser step (forward, cross-entropy on 150 ADE20K classes with ignore label 255, backward,
AdamW step) on random ADE20K-shaped data, batch 16 at 512x512 by default; reports the median step
time and the peak memory per upsampler as a Markdown table. The released logs show 18.7 GB
(bilinear), 21.7 GB (FADE) and 45.5 GB (CARAFE) at that setting.

    python benchmarks/bench_segformer_step.py --device cuda --output docs/benchmarks_segformer.md
    python benchmarks/bench_segformer_step.py --smoke        # tiny CPU run, for tests
    python benchmarks/bench_segformer_step.py --saved-activations   # no GPU: what backward keeps

``--saved-activations`` needs no GPU: it runs one forward per upsampler on the CPU at batch 1 under
``torch.autograd.graph.saved_tensors_hooks`` and sums the bytes of the distinct tensors autograd
keeps for backward (parameters excluded), scaled to ``--batch``. That is the activation memory the
upsampler adds, device-independent; the GPU peak adds parameters, gradients, optimiser state and
the backward's temporaries on top.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from uplab.analysis.cost import row_model
from uplab.analysis.run_record import write_text_atomic


def segformer_b1(name: str, recompute: bool) -> torch.nn.Module:
    """The SegFormer-B1 row's model with upsampler ``name``, as ``uplab-train`` builds it."""
    return row_model("segformer_b1", name, overrides=[f"upsampler.recompute={str(recompute).lower()}"])


UPSAMPLERS = ("bilinear", "carafe", "indexnet", "a2u", "sapa_b", "sapa_g", "fade", "fade_lite", "dysample")


def step_stats(
    name: str, device: str, batch: int, size: int, steps: int, warmup: int, recompute: bool = False
) -> dict:
    """Median step time (ms) and peak memory (GB, CUDA only) of SegFormer-B1 with ``name``."""
    torch.manual_seed(0)
    model = segformer_b1(name, recompute).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=6e-5)
    image = torch.randn(batch, 3, size, size, device=device)
    label = torch.randint(0, 150, (batch, size, size), device=device)
    label[:, : size // 8] = 255
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(warmup + steps):
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        logits = F.interpolate(model(image), size=(size, size), mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, label, ignore_index=255)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if cuda:
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if cuda else float("nan")
    return {"upsampler": name, "step_ms": 1e3 * statistics.median(times), "peak_gb": peak}


def guarded_step_stats(name: str, args) -> dict:
    """:func:`step_stats`, or a row saying "out of memory" when the device runs out of it (the
    other upsamplers still run)."""
    try:
        row = step_stats(name, args.device, args.batch, args.size, args.steps, args.warmup,
                         args.recompute)
    except torch.cuda.OutOfMemoryError:
        row = None
    if row is None:  # outside the except block, whose traceback still holds the model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return {"upsampler": name, "step_ms": float("nan"), "peak_gb": float("nan"),
                "note": "out of memory"}
    return {**row, "note": ""}


def render(rows: list[dict], args) -> str:
    """The Markdown table of ``rows``, with peak memory relative to bilinear when it is there."""
    table = pd.DataFrame(rows)
    base = table.loc[table.upsampler == "bilinear", "peak_gb"]
    if len(base) and base.notna().all():
        table["memory_vs_bilinear"] = table.peak_gb / float(base.iloc[0])
    header = (
        f"SegFormer-B1 training step, batch {args.batch}, {args.size}x{args.size}, "
        f"{'upsamplers recomputed in backward, ' if args.recompute else ''}"
        f"{args.device} ({torch.cuda.get_device_name() if args.device.startswith('cuda') else 'CPU'})"
    )
    return f"{header}\n\n{table.to_markdown(index=False, floatfmt='.2f')}\n"


def saved_activation_bytes(name: str, size: int, recompute: bool = False) -> int:
    """Bytes of the distinct non-parameter tensors one batch-1 forward of SegFormer-B1 with
    ``name`` saves for backward (each storage once, views included)."""
    torch.manual_seed(0)
    model = segformer_b1(name, recompute).train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    image = torch.randn(1, 3, size, size)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = F.interpolate(model(image), size=(size, size), mode="bilinear", align_corners=False)
    storages[logits.untyped_storage().data_ptr()] = logits.untyped_storage().nbytes()
    return sum(storages.values())


def saved_activations_table(names, batch: int, size: int) -> pd.DataFrame:
    rows = []
    for name in names:
        row = {"upsampler": name}
        for recompute, column in ((False, "saved_gb"), (True, "saved_gb_recompute")):
            row[column] = batch * saved_activation_bytes(name, size, recompute) / 1e9
        rows.append(row)
    table = pd.DataFrame(rows)
    base = table.loc[table.upsampler == "bilinear", "saved_gb"]
    if len(base):
        table["vs_bilinear"] = table.saved_gb / float(base.iloc[0])
        table["vs_bilinear_recompute"] = table.saved_gb_recompute / float(base.iloc[0])
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--upsamplers", default=",".join(UPSAMPLERS))
    parser.add_argument("--smoke", action="store_true", help="CPU, batch 1, 64x64, one step")
    parser.add_argument("--output", type=Path, help="write the Markdown table here as well")
    parser.add_argument("--recompute", action="store_true",
                        help="build the upsamplers with recompute=True (forward redone in backward)")
    parser.add_argument("--saved-activations", action="store_true",
                        help="CPU only: bytes saved for backward per upsampler, scaled to --batch")
    args = parser.parse_args(argv)
    if args.saved_activations:
        table = saved_activations_table(args.upsamplers.split(","), args.batch, args.size)
        text = (
            f"SegFormer-B1, tensors saved for backward by one forward, batch {args.batch} "
            f"(measured at batch 1 on the CPU, scaled), {args.size}x{args.size}\n\n"
            f"{table.to_markdown(index=False, floatfmt='.2f')}\n"
        )
        print(text)
        if args.output:
            write_text_atomic(args.output, text)
        return 0
    if args.smoke:
        args.device, args.batch, args.size, args.steps, args.warmup = "cpu", 1, 64, 1, 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA device; use --device cpu or --smoke")
    rows, text = [], ""
    for name in args.upsamplers.split(","):
        row = guarded_step_stats(name, args)
        rows.append(row)
        print(f"{name}: {row['step_ms']:.1f} ms, peak {row['peak_gb']:.2f} GB {row['note']}",
              flush=True)
        # the table so far, so that a run stopped by a time limit keeps what it measured
        text = render(rows, args)
        if args.output:
            write_text_atomic(args.output, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
