"""Check and time the compile-time variants of carafe's tensor-core forward (``reassemble_mma``)
on a GPU: MMA_STAGES cp.async buffers (2 to 4) of MMA_SLABS 16-channel slabs (1 or 2), and the
tile, MMA_WARPS_X warps per parent row over MMA_WARPS_Y rows (32 x 4 parents and 512 threads,
the shipped tile; 16 x 8 of 512; 8 x 8 of 256), and each tile in strips down a column with its
halo rows carried over (MMA_STRIP, three stages of one slab),
built with ``variants.MmaVariant(stages, slabs, warps_x, warps_y, strip).options()``; the
32 x 4 tile with one slab only (compile time), and variants whose shared memory passes the default
48 KiB left out.

At the benchmark's large shape (16x256x128x128 -> 256^2, bfloat16, K in {3, 5}, s=2) every
variant's output must equal the shipped variant's bit for bit (the same products summed in the
same order; each output lands in a block just filled with NaN, so an unwritten element fails),
then its forward is timed (CUDA-event median, as ``benchmarks/bench_gpu.py``) against the device's
copy bandwidth.
Prints a Markdown table (``--out`` writes it too), K=5 first. About 22 s on an H100 for the 16
variants at both K (50a6ec7, 2026-11-26), most of it compiling.

    PYTHONPATH=src python3 benchmarks/bench_mma_variants.py --out $OUT/mma_variants.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from uplab.ops.cuda import geometry, launchers, variants

sys.path.insert(0, str(Path(__file__).parent))
from bench_gpu import copy_bandwidth, time_ms  # noqa: E402  (the GPU benchmark's own timers)

SHAPE = (16, 256, 128, 128)
SCALE = 2
# the benchmark's K (bench_gpu.py) first, so that a run cut by gpu_check.sh's timeout has it
KERNEL_SIZES = (5, 3)


TILES = ((1, 8, (1, 2)), (2, 8, (1, 2)), (4, 4, (1,)))  # warps_x, warps_y, slabs timed

VARIANTS = tuple(
    variant
    for variant in (
        *(
            variants.MmaVariant(stages, slabs, warps_x, warps_y)
            for warps_x, warps_y, slab_counts in TILES
            for slabs in slab_counts
            for stages in (2, 3, 4)
        ),
        # strips: each tile's bottom halo rows carried to the next tile down the column
        *(variants.MmaVariant(warps_x=x, warps_y=y, strip=True) for x, y, _ in TILES),
    )
    if geometry.mma_variant_fits(variant)
)


def _inputs(kernel_size: int):
    b, c, h, w = SHAPE
    features = torch.randn(b, c, h, w, device="cuda", dtype=torch.bfloat16)
    logits = torch.randn(b, kernel_size**2, h * SCALE, w * SCALE, device="cuda")
    return features, torch.softmax(logits, 1).to(torch.bfloat16)


def _forward(features, masks, kernel_size, variant):
    variants.MMA_VARIANT = variant
    return launchers.reassemble(features, masks, kernel_size, SCALE, 1, path="mma")


def _strip_tiles(features, kernel_size: int, variant) -> int:
    """Tiles a block of ``variant`` computes down a column at this shape (1 without strips)."""
    return geometry.mma_device_config(features, kernel_size, 1, variant).strip_tiles


def measure(kernel_size: int, copy_bw: float) -> list[str]:
    """One table row per variant for this kernel size."""
    shipped = variants.MMA_VARIANT
    features, masks = _inputs(kernel_size)
    moved = (features.numel() * (1 + SCALE**2) + masks.numel()) * features.element_size()
    rows = []
    try:
        want = _forward(features, masks, kernel_size, shipped)
        for variant in VARIANTS:
            # the caching allocator hands the freed, NaN-filled block to the next output
            poison = torch.full_like(want, float("nan"))
            poisoned = poison.data_ptr()
            del poison
            got = _forward(features, masks, kernel_size, variant)
            same = torch.equal(got, want) and got.data_ptr() == poisoned
            del got
            ms = time_ms(
                lambda v=variant: _forward(features, masks, kernel_size, v),
                torch.device("cuda"),
                budget_s=0.3,
                max_iters=200,
            )
            fraction = moved / (ms / 1e3) / copy_bw
            mark = " (shipped)" if variant == shipped else ""
            strip = _strip_tiles(features, kernel_size, variant)
            rows.append(
                f"| {kernel_size} | {'x'.join(map(str, variant.tile))} | {strip} | "
                f"{variant.stages} | {variant.slabs}{mark} | "
                f"{'yes' if same else 'NO'} | {ms:.3f} | {100 * fraction:.0f} |"
            )
            print(rows[-1], flush=True)
    finally:
        variants.MMA_VARIANT = shipped
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="Markdown file for the table")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("needs a CUDA device")
    torch.manual_seed(0)
    copy_bw = copy_bandwidth(torch.device("cuda"), 2**30)
    header = [
        f"reassemble_mma variants, {torch.cuda.get_device_name()}, carafe bf16 "
        f"{'x'.join(map(str, SHAPE))} -> s={SCALE}; copy bandwidth {copy_bw / 1e9:.0f} GB/s",
        "",
        "| K | tile | strip | stages | slabs | equals shipped | fwd ms | % of copy |",
        "| ---: | --- | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    print("\n".join(header), flush=True)
    rows = [row for k in KERNEL_SIZES for row in measure(k, copy_bw)]
    table = "\n".join(header + rows)
    if args.out:
        args.out.write_text(table + "\n")
    return 0 if all("| yes |" in row for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
