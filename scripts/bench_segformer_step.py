"""SegFormer-B1 training-step benchmark per upsampler (issue 5, item 5).

One optimiser step (forward, cross-entropy on 150 ADE20K classes with ignore label 255, backward,
AdamW step) on random ADE20K-shaped data, batch 16 at 512x512 by default; reports the median step
time and the peak memory per upsampler as a Markdown table. The released logs show 18.7 GB
(bilinear), 21.7 GB (FADE) and 45.5 GB (CARAFE) at that setting.

    python scripts/bench_segformer_step.py --device cuda --output docs/benchmarks_segformer.md
    python scripts/bench_segformer_step.py --smoke        # tiny CPU run, for tests
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from uplab.analysis.cost import _segformer_b1, upsampler_factory

UPSAMPLERS = ("bilinear", "carafe", "indexnet", "a2u", "sapa_b", "sapa_g", "fade", "fade_lite", "dysample")


def step_stats(name: str, device: str, batch: int, size: int, steps: int, warmup: int) -> dict:
    """Median step time (ms) and peak memory (GB, CUDA only) of SegFormer-B1 with ``name``."""
    torch.manual_seed(0)
    model = _segformer_b1(upsampler_factory(name)).to(device).train()
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
    args = parser.parse_args(argv)
    if args.smoke:
        args.device, args.batch, args.size, args.steps, args.warmup = "cpu", 1, 64, 1, 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA device; use --device cpu or --smoke")
    rows = [
        step_stats(n, args.device, args.batch, args.size, args.steps, args.warmup)
        for n in args.upsamplers.split(",")
    ]
    table = pd.DataFrame(rows)
    base = table.loc[table.upsampler == "bilinear", "peak_gb"]
    if len(base) and base.notna().all():
        table["memory_vs_bilinear"] = table.peak_gb / float(base.iloc[0])
    header = (
        f"SegFormer-B1 training step, batch {args.batch}, {args.size}x{args.size}, "
        f"{args.device} ({torch.cuda.get_device_name() if args.device.startswith('cuda') else 'CPU'})"
    )
    text = f"{header}\n\n{table.to_markdown(index=False, floatfmt='.2f')}\n"
    print(text)
    if args.output:
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
