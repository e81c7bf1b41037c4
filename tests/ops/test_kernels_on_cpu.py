"""The CUDA kernels of ``kernels/*.cu`` run on the CPU, on every machine: the sources are compiled
with g++ against a small emulation of the CUDA execution model (``tests/ops/cuda_on_cpu``: blocks
of real threads, ``__syncthreads`` as a barrier, cp.async with deferred landing) and driven
through the package's own launch code, :mod:`uplab.ops.cuda` (its launchers, launch geometry and
autograd Functions), with only the CuPy launch (:func:`uplab.ops.cuda.runtime.launch`) replaced by
a run of the emulator.

So without a GPU this checks what the GPU tests check for correctness (outputs and gradients vs
the PyTorch path for every dtype, K, scale and groups; both halo stagings of the tiled kernels, bit
for bit) and more than a GPU shows:

- AddressSanitizer and UndefinedBehaviorSanitizer builds: any read or write past a tensor or past
  the launch's dynamic shared memory, and any misaligned vector store, fails the run;
- ThreadSanitizer builds: a missing ``__syncthreads`` (a shared-memory write and read, or a
  read and a cp.async refill, with no barrier between) is a data race and fails the run;
- shared memory starts as NaN and cp.async copies land only at their wait (or, for the race
  check, at their issue): an element read before it is staged shows in the output.

What it cannot show: speed, and anything of the real hardware's memory model beyond barriers
(these kernels use no warp-level intrinsics or atomics). The GPU tests
(``test_cuda_kernels.py``) remain the judge there.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from uplab.ops import carafe, cuda, local_similarity
from uplab.ops.cuda import (
    compiler,
    device_properties,
    geometry,
    launchers,
    runtime,
    variants,
)

CXX = shutil.which("g++")
pytestmark = pytest.mark.skipif(
    CXX is None, reason="the host emulation of the CUDA kernels is built with g++ (not found)"
)

EMULATION = Path(__file__).parent / "cuda_on_cpu"
SANITIZERS = {
    "address": ("-fsanitize=address,undefined", "-fno-sanitize-recover=all"),
    "thread": ("-fsanitize=thread",),
}
SANITIZER_ENV = {
    # Leak checking needs ptrace, which sandboxes often forbid; every allocation is freed anyway.
    "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
    "TSAN_OPTIONS": "halt_on_error=1:exitcode=66:report_signal_unsafe=0",
}
# Multiprocessors of the emulated GPU: small, so that the launch code splits channels and window
# offsets over grid.y as it does for small images on a real GPU.
N_SM = 2
# Its shared memory, bytes: opt-in per block and per SM, an H100's (strip builds may opt in)
H100_SHARED_MEMORY = (232_448, 233_472)
TOL = {  # (atol, rtol) vs the float64 PyTorch path on the same rounded inputs
    torch.float64: (1e-10, 0.0),
    torch.float32: (1e-4, 1e-4),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (2e-2, 1e-2),
}
DTYPES = list(TOL)


def emulator_source(includes, names) -> str:
    """A translation unit: the emulation, ``includes`` (kernel sources), the driver, and a table
    of the kernels ``names`` (template instantiations) that the command line picks from."""
    entries = [
        f'    {{"{name}", [](const cuda_on_cpu::Launch& l) {{ cuda_on_cpu::launch({name}, l); }}}},'
        for name in names
    ]
    return "\n".join(
        [
            '#include "cuda_on_cpu.h"',
            *(f'#include "{file}"' for file in includes),
            '#include "driver.h"',
            "static const cuda_on_cpu::Entry kEntries[] = {",
            *entries,
            "};",
            "int main(int argc, char** argv) {",
            "    return cuda_on_cpu::run_main(argc, argv, kEntries, std::size(kEntries));",
            "}",
            "",
        ]
    )


def translation_unit(kernels=None) -> str:
    """The kernel files with every instantiation the package compiles, or only those of
    ``kernels`` (names without template arguments)."""
    files = [
        file
        for file in sorted(compiler.KERNEL_FILES)
        if kernels is None or set(compiler.KERNEL_FILES[file]) & set(kernels)
    ]
    names = [
        expression
        for file in files
        for scalar in variants.SCALAR_TYPES.values()
        for expression in compiler.name_expressions(file, scalar)
        if kernels is None or expression.split("<")[0] in kernels
    ]
    return emulator_source(files, names)


def mma_translation_unit() -> str:
    """carafe_mma.cu alone, for the emulators of its non-default variants."""
    names = [
        expression
        for scalar in variants.SCALAR_TYPES.values()
        for expression in compiler.name_expressions("carafe_mma.cu", scalar)
    ]
    return emulator_source(["carafe_mma.cu"], names)


# reassemble_mma variants with their own emulator build (the kernels' builds take the default)
MMA_VARIANT_BUILDS = {
    "mma_8x8": variants.MmaVariant(warps_x=1, warps_y=8),  # the 8 x 8 tile (the shipped tile is 32 x 4)
    "mma_16x8": variants.MmaVariant(warps_x=2, warps_y=8),
    "mma_8x8_strip": variants.MmaVariant(warps_x=1, warps_y=8, strip=True),
}


def compile_command(source: Path, exe: Path, sanitizer: str, defines=()) -> list[str]:
    return [
        CXX,
        "-std=c++20",
        "-O1",
        "-g1",  # line tables: file and line in sanitizer reports, at ~60% of -g's compile time
        "-pthread",
        "-DUPLAB_CUDA_ON_CPU=1",
        "-DCP_ASYNC_HELPERS=1",  # carafe_mma.cu's cp.async helpers, whichever file comes first
        *defines,
        *SANITIZERS[sanitizer],
        f"-I{compiler.kernel_dir()}",
        f"-I{EMULATION}",
        "-Wno-unknown-pragmas",
        str(source),
        "-o",
        str(exe),
    ]


FAULTY_KERNELS = (
    "neighbour_after_barrier",
    "neighbour_without_barrier",
    "read_past_shared_memory",
    "read_past_input",
    "read_before_async_wait",
    "misaligned_async_copy",
    "bank_patterns",
    "sector_patterns",
)


def test_emulator_counts_bank_conflicts(builds, tmp_path):
    n = 32
    config = geometry.LaunchConfig((1, 1, 1), (n, 1, 1), 4 * n * n, 0)
    report = tmp_path / "banks.txt"
    env = {**SANITIZER_ENV, "CUDA_ON_CPU_BANKS": str(report)}
    values, out = torch.arange(1.0, n + 1), torch.zeros(n)
    exe = builds.exe("faulty", "address")
    result = emulator_process(exe, "bank_patterns", config, (values, out), (n,), tmp_path, env)
    assert result.returncode == 0, result.stderr
    assert torch.equal(out, values + values[5] + values[0])
    assert report.read_text().split() == ["3", "34", "32"]
    result = emulator_process(
        exe,
        "bank_patterns",
        config,
        (values, out),
        (n,),
        tmp_path,
        {**env, "CUDA_ON_CPU_BANKS": str(tmp_path)},
    )
    assert result.returncode != 0 and "cannot open CUDA_ON_CPU_BANKS" in result.stderr


def test_emulator_counts_global_sectors(builds, tmp_path):
    n = 32
    config = geometry.LaunchConfig((1, 1, 1), (n, 1, 1), 4 * 128, 0)
    report = tmp_path / "sectors.txt"
    env = {**SANITIZER_ENV, "CUDA_ON_CPU_SECTORS": str(report)}
    values, out = torch.arange(1.0, 129), torch.zeros(n)
    exe = builds.exe("faulty", "address")
    result = emulator_process(exe, "sector_patterns", config, (values, out), (n,), tmp_path, env)
    assert result.returncode == 0, result.stderr
    lanes = torch.arange(n)
    assert torch.equal(out, values[:n] + torch.where(lanes < 16, values[8 * lanes % 128], 0))
    # lane copies reading a sector: 32, then 16 (zero-filled past lane 15), then 32 + 8
    assert report.read_text().split() == ["4", "22", "16", "88"]


def faulty_translation_unit() -> str:
    """The kernels of ``faulty_kernels.cuh`` (one deliberate bug each)."""
    return emulator_source(["uplab_scalar.cuh", "faulty_kernels.cuh"], FAULTY_KERNELS)


TOOLCHAIN_PROBE = """
#include <ucontext.h>
#include <thread>
int main() {
    ucontext_t context;
    _Float16 half = static_cast<_Float16>(1.5f);
    std::thread([] {}).join();
    return getcontext(&context) != 0 || static_cast<float>(half) != 1.5f;
}
"""


def toolchain_lacks(folder: Path, sanitizer: str) -> str | None:
    """Why g++ here cannot build and run the emulator under ``sanitizer`` (C++20, _Float16,
    ucontext, threads, the sanitizer's runtime), or None when it can."""
    source, exe = folder / f"probe_{sanitizer}.cpp", folder / f"probe_{sanitizer}"
    source.write_text(TOOLCHAIN_PROBE)
    command = [CXX, "-std=c++20", "-pthread", *SANITIZERS[sanitizer], str(source), "-o", str(exe)]
    built = subprocess.run(command, capture_output=True, text=True)
    if built.returncode != 0:
        return f"g++ cannot build the emulator with {' '.join(SANITIZERS[sanitizer])}: {built.stderr[-300:]}"
    ran = subprocess.run(
        [str(exe)], capture_output=True, text=True, env={**os.environ, **SANITIZER_ENV}
    )
    if ran.returncode != 0:
        return f"a {sanitizer}-sanitized program does not run here: {ran.stderr[-300:]}"
    return None


class Builds:
    """The emulators, compiled in the background from the first request on, as many at a time as
    there are cores and in the order the tests first need them, so that the first tests run while
    later builds compile: per sanitizer the faulty kernels, the kernels per halo staging and the
    tensor-core variants. A build that a test needs before its turn is compiled at once."""

    def __init__(self, folder: Path):
        self.jobs, self.results, self.missing = {}, {}, {}
        sources = {
            "faulty": faulty_translation_unit(),
            "kernels": translation_unit(),
            # the launchers pass the async staging's options to the tiled kernels alone
            "tiled": translation_unit(compiler.TILED_KERNELS),
            "mma": mma_translation_unit(),
        }
        for name, text in sources.items():
            (folder / f"{name}_on_cpu.cpp").write_text(text)
        builds = {"faulty": ("faulty", ())}
        for staging in variants.STAGINGS:
            defines = [o for o in variants.build_options(staging) if o.startswith("-D")]
            builds[staging] = ("tiled" if staging == "async" else "kernels", defines)
        for build, variant in MMA_VARIANT_BUILDS.items():
            builds[build] = ("mma", [o for o in variant.options() if o.startswith("-D")])
        self.pool = ThreadPoolExecutor(max_workers=len(os.sched_getaffinity(0)))
        for sanitizer in SANITIZERS:
            self.missing[sanitizer] = toolchain_lacks(folder, sanitizer)
            if self.missing[sanitizer]:
                continue
            for build, (unit, defines) in builds.items():
                exe = folder / f"emulator_{build}_{sanitizer}"
                source = folder / f"{unit}_on_cpu.cpp"
                command = compile_command(source, exe, sanitizer, defines)
                self.jobs[build, sanitizer] = exe, command, self.pool.submit(_compile, command)

    def exe(self, build: str, sanitizer: str) -> Path:
        """The emulator of ``build`` ("sync", "async", "faulty" or a key of MMA_VARIANT_BUILDS)
        under ``sanitizer``."""
        if self.missing[sanitizer]:
            pytest.skip(self.missing[sanitizer])
        exe, command, job = self.jobs[build, sanitizer]
        if (build, sanitizer) not in self.results:
            queued = job.cancel()
            self.results[build, sanitizer] = _compile(command) if queued else job.result()
        result = self.results[build, sanitizer]
        if result.returncode != 0:
            log = result.stdout[-4000:]
            pytest.fail(f"building the {build}/{sanitizer} emulator failed:\n{log}")
        return exe


def _compile(command) -> subprocess.CompletedProcess:
    return subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="session")
def builds(tmp_path_factory):
    builds = Builds(tmp_path_factory.mktemp("cuda_on_cpu"))
    yield builds
    builds.pool.shutdown(wait=False, cancel_futures=True)


def run_emulator(exe: Path, name: str, config, tensors, ints, folder: Path, env=None) -> None:
    """One launch of kernel ``name``: the tensors go in as files, the last one (the output)
    comes back. Fails the test with the emulator's report if it exits non-zero."""
    result = emulator_process(exe, name, config, tensors, ints, folder, env)
    if result.returncode != 0:
        pytest.fail(
            f"{name} on the CPU emulator exited {result.returncode}:\n{result.stderr[-6000:]}"
        )


def emulator_process(exe: Path, name: str, config, tensors, ints, folder: Path, env=None):
    """Run one launch (see :func:`run_emulator`); the output tensor is filled in only when the
    run succeeds. Returns the finished process."""
    args = [str(exe), name, *map(str, config.grid), *map(str, config.block)]
    args += [str(config.shared_mem), str(len(tensors))]
    for i, tensor in enumerate(tensors):
        path = folder / f"buffer{i}.bin"
        assert tensor.is_contiguous(), "the launch code passes contiguous tensors"
        tensor.detach().reshape(-1).view(torch.uint8).numpy().tofile(path)
        args += [
            str(path),
            str(tensor.numel() * tensor.element_size()),
            str(tensor.data_ptr() % 16),
        ]
    args += [str(len(ints)), *map(str, ints)]
    result = subprocess.run(
        args, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})}
    )
    if result.returncode == 0:
        out = tensors[-1]
        data = np.fromfile(folder / f"buffer{len(tensors) - 1}.bin", dtype=np.uint8)
        out.copy_(torch.from_numpy(data).view(out.dtype).view(out.shape))
    return result


@pytest.fixture
def emulate(builds, monkeypatch, tmp_path):
    """Route the package's kernel launches to the emulator: ``emulate(sanitizer, env)`` sets the
    build and environment of the launches that follow (default: AddressSanitizer, cp.async copies
    landing at their wait)."""
    state = {"sanitizer": "address", "env": {}, "launches": [], "stagings": []}

    def launch(
        kernel, file, config, tensors, ints, kernel_size=None, options=variants.NVRTC_OPTIONS
    ):
        staging = "async" if variants.ASYNC_STAGING_OPTION in options else "sync"
        build = staging
        if file == "carafe_mma.cu" and options != variants.MmaVariant().options():
            builds_of = {v.options(): name for name, v in MMA_VARIANT_BUILDS.items()}
            assert options in builds_of, f"no emulator build of {options}"
            build = builds_of[options]
        scalar = variants.scalar_type(tensors[0].dtype)
        name = (
            f"{kernel}<{scalar}>"
            if kernel_size is None
            else compiler.tiled_name(kernel, scalar, kernel_size)
        )
        tensors[-1].fill_(float("nan"))  # an element the kernel does not write stays NaN
        env = {**SANITIZER_ENV, **state["env"]}
        exe = builds.exe(build, state["sanitizer"])
        run_emulator(exe, name, config, tensors, ints, tmp_path, env)
        state["launches"].append(name)
        state["stagings"].append(staging)

    monkeypatch.setattr(runtime, "launch", launch)
    monkeypatch.setattr(device_properties, "multiprocessors", lambda device_index: N_SM)
    monkeypatch.setattr(device_properties, "shared_memory", lambda device_index: H100_SHARED_MEMORY)

    def configure(sanitizer="address", env=None):
        """The names of the kernels launched from now on are appended to the returned list (and
        their builds' stagings to ``configure.stagings``)."""
        state["sanitizer"], state["env"] = sanitizer, env or {}
        return state["launches"]

    configure.stagings = state["stagings"]

    return configure


def _through_autograd(op, inputs, grad):
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = op(*leaves)
    out.backward(grad)
    return [out.detach()] + [t.grad for t in leaves]


def _check(emulated_op, torch_op, inputs, grad, dtype):
    """Output and both gradients of ``emulated_op`` in ``dtype`` vs ``torch_op`` in float64 on the
    same rounded values."""
    got = _through_autograd(emulated_op, [t.to(dtype) for t in inputs], grad.to(dtype))
    want = _through_autograd(
        torch_op, [t.to(dtype).double() for t in inputs], grad.to(dtype).double()
    )
    atol, rtol = TOL[dtype]
    for name, g, w in zip(["output", "grad[0]", "grad[1]"], got, want, strict=True):
        assert g.dtype == dtype, name
        torch.testing.assert_close(g.double(), w, atol=atol, rtol=rtol, msg=name)


def _check_carafe(inputs, grad, k, s, groups, dtype):
    """carafe through the CUDA path's autograd Function (emulated) vs the PyTorch path."""
    _check(
        lambda f, m: cuda.carafe(f, m, k, s, groups),
        lambda f, m: carafe(f, m, k, s, group_size=groups, backend="torch"),
        inputs,
        grad,
        dtype,
    )


def _carafe_case(b, c, h, w, k, s, groups=1):
    inputs = [torch.randn(b, c, h, w, dtype=torch.float64)]
    inputs.append(torch.randn(b, groups * k * k, s * h, s * w, dtype=torch.float64))
    return inputs, torch.randn(b, c, s * h, s * w, dtype=torch.float64)


def _similarity_case(b, c, h, w, k, s):
    inputs = [torch.randn(b, c, s * h, s * w, dtype=torch.float64)]
    inputs.append(torch.randn(b, c, h, w, dtype=torch.float64))
    return inputs, torch.randn(b, k * k, s * h, s * w, dtype=torch.float64)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("k, s", [(1, 2), (3, 1), (3, 2), (5, 2), (5, 3), (7, 4), (9, 2)])
def test_carafe_kernels_match_torch_path(emulate, k, s, dtype):
    # Odd, non-square sizes; forward (tensor-core, tiled or generic, as "auto" picks),
    # grad_features (reassemble_transpose) and grad_masks (window_dot) through the package's
    # autograd Function. K=9 is past the tiled kernels and the GPU tests' range: the generic
    # kernels' smaller blocks for larger windows.
    launches = emulate()
    inputs, grad = _carafe_case(2, 10, 7, 9, k, s)
    _check_carafe(inputs, grad, k, s, 1, dtype)
    if variants.mma_applies(dtype, k, s):
        forward = "reassemble_mma"
    else:
        forward = "reassemble_tiled" if variants.tiled_applies(dtype, k, s) else "reassemble<"
    assert launches[0].startswith(forward), launches
    assert launches[1].startswith("reassemble_transpose<")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("k, s", [(1, 1), (3, 2), (5, 2), (5, 3), (7, 4), (9, 3)])
def test_local_similarity_kernels_match_torch_path(emulate, k, s, dtype):
    emulate()
    inputs, grad = _similarity_case(2, 10, 7, 9, k, s)
    _check(
        lambda q, key: cuda.local_similarity(q, key, k, s),
        lambda q, key: local_similarity(q, key, k, s, backend="torch"),
        inputs,
        grad,
        dtype,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("k, s", [(3, 2), (5, 2), (5, 3), (7, 4)])
def test_carafe_groups_match_torch_path(emulate, k, s, dtype):
    emulate()
    inputs, grad = _carafe_case(2, 12, 6, 11, k, s, groups=3)
    _check_carafe(inputs, grad, k, s, 3, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("k, s", [(3, 2), (5, 2), (7, 4)])
def test_tiled_kernels_at_multi_tile_sizes_match_torch_path(emulate, k, s, dtype):
    # Several tiles each way with ragged last ones (a block is 64 output columns by 16 rows, 8
    # for K=7), channels split over blocks, and window_dot_tiled forced (the launch code keeps the
    # generic window_dot on a grid this small).
    launches = emulate()
    features = torch.randn(1, 20, 19, 37, dtype=torch.float64).to(dtype)
    masks = torch.randn(1, k * k, 19 * s, 37 * s, dtype=torch.float64).to(dtype)
    got = launchers.reassemble(features, masks, k, s, 1, path="tiled", stage_channels=3)
    want = carafe(features.double(), masks.double(), k, s, backend="torch")
    torch.testing.assert_close(got.double(), want, atol=TOL[dtype][0], rtol=TOL[dtype][1])
    query = torch.randn(1, 20, 19 * s, 37 * s, dtype=torch.float64).to(dtype)
    got = launchers.window_dot(query, features, k, s, 1, path="tiled", stage_channels=3)
    want = local_similarity(query.double(), features.double(), k, s, backend="torch")
    torch.testing.assert_close(got.double(), want, atol=TOL[dtype][0], rtol=TOL[dtype][1])
    assert launches == [
        compiler.tiled_name("reassemble_tiled", variants.scalar_type(dtype), k),
        compiler.tiled_name("window_dot_tiled", variants.scalar_type(dtype), k),
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("staging", variants.STAGINGS)
def test_tiled_launch_shapes_of_the_variant_benchmark_match_torch_path(emulate, staging, dtype):
    # The block shapes benchmarks/bench_kernel_variants.py times (and one narrower), each with both
    # halo stagings, so that a GPU session spends no time on a variant that is wrong.
    emulate()
    k, s = 5, 2
    features = torch.randn(1, 12, 19, 37, dtype=torch.float64).to(dtype)
    masks = torch.randn(1, k * k, 19 * s, 37 * s, dtype=torch.float64).to(dtype)
    query = torch.randn(1, 12, 19 * s, 37 * s, dtype=torch.float64).to(dtype)
    want_out = carafe(features.double(), masks.double(), k, s, backend="torch")
    want_sim = local_similarity(query.double(), features.double(), k, s, backend="torch")
    atol, rtol = TOL[dtype]
    for block in ((32, 2), (32, 4), (32, 8), (16, 2)):
        options = dict(path="tiled", block=block, stage_channels=5, staging=staging)
        out = launchers.reassemble(features, masks, k, s, 1, **options)
        torch.testing.assert_close(out.double(), want_out, atol=atol, rtol=rtol, msg=str(block))
        sim = launchers.window_dot(query, features, k, s, 1, **options)
        torch.testing.assert_close(sim.double(), want_sim, atol=atol, rtol=rtol, msg=str(block))


def test_tiled_staging_default_reaches_forward_and_backward(emulate, monkeypatch):
    # benchmarks/bench_gpu.py times whole ops with TILED_STAGING switched: every tiled launch of
    # carafe's forward and backward must then take the async build, and still match.
    monkeypatch.setattr(variants, "TILED_STAGING", "async")
    launches = emulate()
    inputs, grad = _carafe_case(8, 6, 16, 20, 3, 2)
    _check_carafe(inputs, grad, 3, 2, 1, torch.float32)
    tiled = [i for i, name in enumerate(launches) if "tiled" in name]
    assert {launches[i].split("<")[0] for i in tiled} == {"reassemble_tiled", "window_dot_tiled"}
    assert all(emulate.stagings[i] == "async" for i in tiled)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("k", variants.MMA_KERNEL_SIZES)
def test_tensor_core_forward_matches_torch_path(emulate, monkeypatch, k, dtype):
    # reassemble_mma (mma.sync emulated lane by lane): ragged 32 x 4-parent tiles, 20 channels per
    # group (a full and a ragged 16-channel chunk), 70 (five chunks, every buffer of the
    # three-stage pipeline refilled), groups, the copy widths of its cp.async staging and a
    # misaligned base; a group's chunks in one block (no split for occupancy), then, last case,
    # split over blocks (grid.y) as the launcher does for few tiles.
    launches = emulate()
    s = 2
    occupancy = geometry.TILED_BLOCKS_PER_SM  # the launcher's blocks per SM
    cases = ((1, 19, 0, 20), (2, 20, 0, 20), (1, 24, 0, 70), (2, 22, 1, 20), (1, 21, 0, 70))
    for i, (groups, width, offset, per_group) in enumerate(cases):
        split = i == len(cases) - 1
        monkeypatch.setattr(geometry, "TILED_BLOCKS_PER_SM", occupancy if split else 0)
        config = geometry.mma_config(2, per_group * groups, 11, width, k, groups, N_SM, 2)
        assert (config.grid[1] > 1) == split, config
        features = _at_offset((2, per_group * groups, 11, width), offset, dtype)
        masks = torch.randn(2, groups * k * k, 11 * s, width * s).to(dtype)
        got = launchers.reassemble(features, masks, k, s, groups, path="mma")
        want = carafe(features.double(), masks.double(), k, s, group_size=groups, backend="torch")
        case = f"groups={groups} width={width} offset={offset} channels={per_group}"
        torch.testing.assert_close(
            got.double(), want, atol=TOL[dtype][0], rtol=TOL[dtype][1], msg=case
        )
    assert set(launches) == {compiler.tiled_name("reassemble_mma", variants.scalar_type(dtype), k)}


@pytest.mark.parametrize("k", variants.MMA_KERNEL_SIZES)
def test_tensor_core_forward_a_loads_are_free_of_bank_conflicts(emulate, tmp_path, k):
    # The emulator's bank trace (CUDA_ON_CPU_BANKS) of reassemble_mma's A-fragment loads, the
    # shared loads it routes through shared_load(): one wavefront each, with 4-byte staging copies
    # (K=3: windows at odd columns) and element copies (odd width). 16-bit loads from rows padded
    # to 16-byte copies would take 3.6 (K=5) and 2.8 (K=3) wavefronts (docs/benchmarks.md).
    steps = (2 * k * (k + 1) // 2 + 15) // 16
    for width in (24, 19):
        report = tmp_path / f"banks_{width}.txt"
        emulate("address", {"CUDA_ON_CPU_BANKS": str(report)})
        features = torch.randn(1, 32, 8, width).to(torch.bfloat16)
        masks = torch.randn(1, k * k, 16, 2 * width).to(torch.bfloat16)
        got = launchers.reassemble(features, masks, k, 2, 1, path="mma")
        want = carafe(features.double(), masks.double(), k, 2, backend="torch")
        torch.testing.assert_close(got.double(), want, atol=2e-2, rtol=1e-2)
        config = geometry.mma_config(1, 32, 8, width, k, 1, N_SM, 2)
        chunks = math.ceil(config.per_block / variants.MMA_CHANNELS)
        # an A fragment per parent (K=3) or per pair of parents (K=5: their union window)
        windows = variants.MMA_PARENTS_X // (2 if k == 5 else 1)
        loads = math.prod(config.grid) * config.block[0] // 32 * chunks * windows
        loads *= steps * 4  # a k-step loads 4 A registers
        assert report.read_text().split() == [str(loads), str(loads), "1"], f"width={width}"


@pytest.mark.parametrize("build", MMA_VARIANT_BUILDS)
@pytest.mark.parametrize("k", variants.MMA_KERNEL_SIZES)
def test_tensor_core_forward_with_other_tiles(emulate, monkeypatch, tmp_path, k, build):
    # The variants timed by benchmarks/bench_mma_variants.py beside the shipped 32 x 4 parents: 8
    # warps over 8 x 8 parents, 16 over 16 x 8, 8 x 8 in strips. Ragged tiles (widths 19, 40, 22;
    # height 11), several chunks, groups, a misaligned base; then under ThreadSanitizer, and the
    # bank trace of its A loads (one wavefront each, whatever the tile's row width).
    monkeypatch.setattr(variants, "MMA_VARIANT", MMA_VARIANT_BUILDS[build])
    launches = emulate()
    for groups, width, offset, per_group in ((1, 19, 0, 70), (2, 40, 0, 20), (1, 22, 1, 20)):
        features = _at_offset((2, per_group * groups, 11, width), offset, torch.bfloat16)
        masks = torch.randn(2, groups * k * k, 22, 2 * width).to(torch.bfloat16)
        got = launchers.reassemble(features, masks, k, 2, groups, path="mma")
        want = carafe(features.double(), masks.double(), k, 2, group_size=groups, backend="torch")
        case = f"groups={groups} width={width} offset={offset} channels={per_group}"
        torch.testing.assert_close(got.double(), want, atol=2e-2, rtol=1e-2, msg=case)
    assert set(launches) == {compiler.tiled_name("reassemble_mma", "bfloat16_t", k)}
    emulate("thread")
    inputs, grad = _carafe_case(1, 18, 10, 20, k, 2)
    monkeypatch.setattr(variants, "TILED_MMA", True)
    _check_carafe(inputs, grad, k, 2, 1, torch.bfloat16)
    report = tmp_path / "banks.txt"
    emulate("address", {"CUDA_ON_CPU_BANKS": str(report)})
    features = torch.randn(1, 32, 8, 32).to(torch.bfloat16)
    masks = torch.randn(1, k * k, 16, 64).to(torch.bfloat16)
    launchers.reassemble(features, masks, k, 2, 1, path="mma")
    loads, wavefronts, worst = report.read_text().split()
    assert int(loads) > 0 and loads == wavefronts and worst == "1"


def feature_staging(variant, shape, kernel_size: int, strip_tiles: int = 1) -> tuple[int, int]:
    """What ``reassemble_mma`` built as ``variant`` stages of a contiguous, 256-byte-aligned
    bfloat16 feature map ``shape`` (b, c, h, w: an even width, 4-byte copies) from global memory:
    the 32-byte sectors each block reads, counted once per block, and the 4-byte copies inside the
    map. A block computes ``strip_tiles`` tiles down a column; past its first, a tile's top 2R halo
    rows come from the carry (strip builds), not from a copy."""
    b, c, h, w = shape
    r = (kernel_size - 1) // 2
    tile_w, tile_h = variant.tile
    sectors = copies = 0
    for px0 in range(0, w, tile_w):
        xa = (px0 - r) & -2  # the copies start at an even column
        n_copies = math.ceil((px0 - r - xa + tile_w + 2 * r) / 2)
        columns = range(max(xa, 0), min(xa + 2 * n_copies, w), 2)
        for strip_y in range(0, h, tile_h * strip_tiles):
            block = set()
            for py0 in range(strip_y, min(strip_y + tile_h * strip_tiles, h), tile_h):
                first = py0 - r if py0 == strip_y or not variant.strip else py0 + r
                for y in range(max(first, 0), min(py0 + tile_h + r, h)):
                    block.update((y * w + x) * 2 // 32 for x in columns)
                    copies += len(columns)
            sectors += len(block)
    # no plane shares a sector with another (w h 2 bytes, a multiple of 32)
    return sectors * b * c, copies * b * c


@pytest.mark.parametrize("k", variants.MMA_KERNEL_SIZES)
def test_tensor_core_forward_feature_sectors_per_tile(emulate, monkeypatch, tmp_path, k):
    # The emulator's sector trace (CUDA_ON_CPU_SECTORS) of the feature staging's cp.async copies,
    # against feature_staging(): what the wider tiles and the strips are for. Per warp copy
    # instruction (no L1 hits) a block reads more than its distinct sectors, never fewer; a strip
    # reads its tiles' shared halo rows once (its lane copies), so fewer sectors per instruction.
    # docs/benchmarks.md has the counts at the benchmark's shape.
    shape = (1, 16, 32, 64)
    features = torch.randn(shape).to(torch.bfloat16)
    masks = torch.randn(1, k * k, 64, 128).to(torch.bfloat16)
    want = carafe(features.double(), masks.double(), k, 2, backend="torch")
    per_copy = {}
    for variant in (variants.MmaVariant(), *MMA_VARIANT_BUILDS.values()):
        monkeypatch.setattr(variants, "MMA_VARIANT", variant)
        for strip_tiles in (1, 2, 4) if variant.strip else (1,):
            monkeypatch.setattr(geometry, "mma_strip_tiles", lambda *args, n=strip_tiles: n)
            case = f"{variant} strips of {strip_tiles}"
            report = tmp_path / f"sectors_{len(per_copy)}.txt"
            emulate("address", {"CUDA_ON_CPU_SECTORS": str(report)})
            got = launchers.reassemble(features, masks, k, 2, 1, path="mma")
            torch.testing.assert_close(got.double(), want, atol=2e-2, rtol=1e-2)
            copies, sectors, block_sectors, lane_copies = map(int, report.read_text().split())
            assert (block_sectors, lane_copies) == feature_staging(variant, shape, k, strip_tiles)
            assert copies > 0 and sectors >= block_sectors, case
            per_copy[variant.tile, variant.strip and strip_tiles] = sectors
    # a halo row of 8 parents spans 2 sectors, of 16 three, of 32 four; 12, 12, 8 rows at K = 5;
    # an 8 x 8 strip of 4 tiles stages 12 + 3 x 8 rows for 4 tiles
    assert per_copy[(32, 4), 0] < per_copy[(16, 8), 0] < per_copy[(8, 8), 0], per_copy
    assert per_copy[(8, 8), 4] < per_copy[(8, 8), 2] < per_copy[(8, 8), 1] == per_copy[(8, 8), 0]


# The strips are a variant benchmarks/bench_mma_variants.py times, not a shipped build: `make
# test-full` checks them (85 s of emulation on 2 cores), `make test` leaves them out.
@pytest.mark.full
@pytest.mark.parametrize("k", variants.MMA_KERNEL_SIZES)
def test_tensor_core_forward_strips_equal_the_tiles_bit_for_bit(emulate, monkeypatch, k):
    # The 8 x 8 tile in strips: a block computes strip_tiles tiles down a column and carries each
    # tile's bottom 2R staged halo rows over to the next in shared memory. Same products, same
    # order as the 8 x 8 tile without strips, so the same bits: strips of one tile to more than a
    # column has (the last strip ragged or past the bottom), ragged tiles, several chunks, groups, 4-byte and
    # element copies (odd width, misaligned base); then under ThreadSanitizer, since the carry has
    # no barrier of its own (each thread restores only what it kept).
    emulate()
    strip = MMA_VARIANT_BUILDS["mma_8x8_strip"]
    # 8 x 9 with 70 channels: split over 3 blocks (grid.y) for occupancy, the last one ragged;
    # the last case's carry (400 channels, 112 bytes each at K=5) takes the block past 48 KiB of
    # shared memory (opt-in)
    every = (1, 2, 3, 5)
    cases = (  # groups, width, height, base offset, channels per group, strip lengths
        (1, 20, 27, 0, 40, every),
        (2, 24, 16, 0, 20, every),
        (1, 19, 21, 0, 36, every),
        (1, 22, 25, 1, 20, every),
        (1, 8, 9, 0, 70, every),
        (1, 20, 17, 0, 400, (3,)),  # the whole column, two carries
    )
    for groups, width, height, offset, per_group, lengths in cases:
        features = _at_offset((2, per_group * groups, height, width), offset, torch.bfloat16)
        masks = torch.randn(2, groups * k * k, 2 * height, 2 * width).to(torch.bfloat16)
        monkeypatch.setattr(variants, "MMA_VARIANT", MMA_VARIANT_BUILDS["mma_8x8"])
        want = launchers.reassemble(features, masks, k, 2, groups, path="mma")
        monkeypatch.setattr(variants, "MMA_VARIANT", strip)
        for strip_tiles in lengths:
            monkeypatch.setattr(geometry, "mma_strip_tiles", lambda *args, n=strip_tiles: n)
            got = launchers.reassemble(features, masks, k, 2, groups, path="mma")
            case = f"groups={groups} {width}x{height} offset={offset} strips of {strip_tiles}"
            assert torch.equal(got, want), case
    limit = geometry.mma_shared_limit(0, strip)  # an H100's, from the fixture
    assert geometry.mma_config(2, 70, 9, 8, k, 1, N_SM, 2, strip, shared_limit=limit).grid[1] == 3
    config = geometry.mma_config(2, 400, 17, 20, k, 1, N_SM, 2, strip, shared_limit=limit)
    assert config.per_block == 400
    assert config.shared_mem == geometry.mma_shared_mem(k, 2, strip, 400)
    assert (config.shared_mem > geometry.SHARED_MEMORY_LIMIT) == (k == 5)  # K=3: 48 bytes each
    emulate("thread")
    features = torch.randn(1, 18, 20, 12).to(torch.bfloat16)
    masks = torch.randn(1, k * k, 40, 24).to(torch.bfloat16)
    monkeypatch.setattr(geometry, "mma_strip_tiles", lambda *args: 3)
    got = launchers.reassemble(features, masks, k, 2, 1, path="mma")
    want = carafe(features.double(), masks.double(), k, 2, backend="torch")
    torch.testing.assert_close(got.double(), want, atol=2e-2, rtol=1e-2)


@pytest.mark.parametrize("staging", variants.STAGINGS)
def test_tiled_kernels_window_loads_are_free_of_bank_conflicts(emulate, tmp_path, staging):
    # reassemble_tiled and window_dot_tiled read each thread's window from the staged tile with
    # lanes along x: consecutive words (float tiles) or halfwords (the async build's 16-bit
    # tiles), one wavefront per load. Whole tiles only: the trace needs every lane of a warp.
    for k, dtype in ((3, torch.float32), (5, torch.bfloat16), (7, torch.float32)):
        rows = geometry.tiled_quad_rows(k) * geometry.TILED_BLOCK[1] // 2
        features = torch.randn(1, 16, rows, geometry.TILED_BLOCK[0]).to(dtype)
        masks = torch.randn(1, k * k, 2 * rows, 2 * geometry.TILED_BLOCK[0]).to(dtype)
        query = torch.randn(1, 16, 2 * rows, 2 * geometry.TILED_BLOCK[0]).to(dtype)
        for name, op, inputs in (
            ("reassemble", launchers.reassemble, (features, masks)),
            ("window_dot", launchers.window_dot, (query, features)),
        ):
            report = tmp_path / f"banks_{name}_{k}.txt"
            emulate("address", {"CUDA_ON_CPU_BANKS": str(report)})
            op(*inputs, k, 2, 1, path="tiled", staging=staging)
            threads = geometry.TILED_BLOCK[0] * geometry.TILED_BLOCK[1]
            loads = threads // 32 * 16 * k * k  # one tile: per warp, K*K per channel
            assert report.read_text().split() == [str(loads), str(loads), "1"], f"{name} K={k}"


@pytest.mark.parametrize("k", variants.MMA_KERNEL_SIZES)
def test_tensor_core_forward_keeps_non_finite_values_in_their_windows(emulate, k):
    # An infinite feature reaches only the children whose window holds it, as in the PyTorch path
    # (zero masks elsewhere must not turn it into NaN for other parents). At K=5 the feature is
    # the extra column of a parent pair's union window, so the NaN check's exact path must run.
    emulate()
    features = torch.randn(1, 16, 9, 9).to(torch.bfloat16)
    features[0, 3, 4, 4] = float("inf")
    masks = torch.rand(1, k * k, 18, 18).to(torch.bfloat16)
    got = launchers.reassemble(features, masks, k, 2, 1, path="mma")
    want = carafe(features.double(), masks.double(), k, 2, backend="torch")
    assert torch.equal(got.isinf(), want.isinf()) and not got.isnan().any()
    finite = want.isfinite()
    torch.testing.assert_close(got.double()[finite], want[finite], atol=2e-2, rtol=1e-2)


def test_tensor_core_forward_through_autograd_and_without_data_races(emulate, monkeypatch):
    # TILED_MMA sends "auto" forwards of carafe to reassemble_mma (backward unchanged), here under
    # ThreadSanitizer: warps meet at each mma and __syncwarp, blocks at each chunk.
    monkeypatch.setattr(variants, "TILED_MMA", True)
    launches = emulate("thread")
    inputs, grad = _carafe_case(1, 18, 10, 12, 5, 2)
    _check_carafe(inputs, grad, 5, 2, 1, torch.bfloat16)
    assert launches[0] == "reassemble_mma<bfloat16_t, 5>"


def test_tensor_core_forward_falls_back_below_sm_80(emulate, monkeypatch):
    # TILED_MMA on a GPU without mma.sync for 16-bit floats: "auto" keeps the tiled kernel, an
    # explicit path="mma" is refused with the reason.
    monkeypatch.setattr(variants, "TILED_MMA", True)
    monkeypatch.setattr(launchers, "_has_mma_sync", lambda tensor: False)
    launches = emulate()
    features = torch.randn(1, 16, 6, 7).to(torch.bfloat16)
    masks = torch.randn(1, 25, 12, 14).to(torch.bfloat16)
    got = launchers.reassemble(features, masks, 5, 2, 1)
    want = carafe(features.double(), masks.double(), 5, 2, backend="torch")
    torch.testing.assert_close(got.double(), want, atol=2e-2, rtol=1e-2)
    assert launches == ["reassemble_tiled<bfloat16_t, 5>"]
    with pytest.raises(ValueError, match="needs compute capability 8.0"):
        launchers.reassemble(features, masks, 5, 2, 1, path="mma")


# (width, elements the base lies past an aligned allocation): every copy width of the async
# staging (fp32: 4, 8, 16, 16 bytes; 16-bit: element copies, 4, 8, 16 bytes) and, with the base
# one element off, the fallbacks for a misaligned base (as in test_cuda_kernels.py).
ASYNC_STAGING_WIDTHS = ((37, 0), (38, 0), (44, 0), (40, 0), (38, 1))


def _at_offset(shape, offset, dtype):
    storage = torch.randn(math.prod(shape) + offset, dtype=torch.float64).to(dtype)
    tensor = storage[offset:].view(shape)
    assert tensor.data_ptr() % 16 == (offset * tensor.element_size()) % 16
    return tensor


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("k, s", [(3, 2), (5, 4), (7, 2)])
def test_async_staging_equals_sync_staging_bit_for_bit(emulate, k, s, dtype):
    # 9 channels staged 2 per buffer: a block that holds a whole group runs 5 chunks (groups=1)
    # or 2 ragged ones (groups=3) through both buffers; the channel split runs shorter blocks.
    emulate()
    for groups in (1, 3):
        for width, offset in ASYNC_STAGING_WIDTHS:
            features = _at_offset((1, 9, 11, width), offset, dtype)
            masks = torch.randn(1, groups * k * k, 11 * s, width * s).to(dtype)
            case = f"groups={groups} width={width} offset={offset}"
            sync = launchers.reassemble(features, masks, k, s, groups, path="tiled")
            want = carafe(
                features.double(), masks.double(), k, s, group_size=groups, backend="torch"
            )
            torch.testing.assert_close(sync.double(), want, atol=TOL[dtype][0], rtol=TOL[dtype][1])
            for split_channels in (False, True):
                got = launchers.reassemble(
                    *(features, masks, k, s, groups),
                    path="tiled",
                    stage_channels=2,
                    staging="async",
                    split_channels=split_channels,
                )
                assert torch.equal(got, sync), (
                    f"carafe async != sync: {case} split={split_channels}"
                )
            query = torch.randn(1, 9, 11 * s, width * s).to(dtype)
            sync = launchers.window_dot(query, features, k, s, groups, path="tiled")
            got = launchers.window_dot(
                query, features, k, s, groups, path="tiled", stage_channels=2, staging="async"
            )
            assert torch.equal(got, sync), f"window_dot async != sync: {case}"


@pytest.mark.parametrize("staging", variants.STAGINGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_tiled_kernels_have_no_data_races(emulate, staging, dtype):
    # ThreadSanitizer over the tiled kernels at several staged chunks per block (a missing barrier
    # between staging and reading, or between reading and refilling, is a race); the async build
    # with copies landing at issue (an early refill races with the readers of the last chunk) and
    # at their wait.
    k, s = 5, 2
    features = torch.randn(1, 7, 11, 38).to(dtype)
    masks = torch.randn(1, k * k, 22, 76).to(dtype)
    query = torch.randn(1, 7, 22, 76).to(dtype)
    lands = ("issue", "wait") if staging == "async" else ("wait",)
    options = dict(path="tiled", stage_channels=2, staging=staging)
    results = []
    for mode in lands:
        emulate("thread", {"CUDA_ON_CPU_ASYNC_LANDS": mode})
        out = launchers.reassemble(features, masks, k, s, 1, split_channels=False, **options)
        sim = launchers.window_dot(query, features, k, s, 1, **options)
        results.append((out, sim))
    for got in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(got, results[0], strict=True))
    out, sim = results[0]
    want = carafe(features.double(), masks.double(), k, s, backend="torch")
    torch.testing.assert_close(out.double(), want, atol=TOL[dtype][0], rtol=TOL[dtype][1])
    want = local_similarity(query.double(), features.double(), k, s, backend="torch")
    torch.testing.assert_close(sim.double(), want, atol=TOL[dtype][0], rtol=TOL[dtype][1])


def test_generic_kernels_have_no_data_races(emulate):
    # reassemble stages its masks in shared memory behind one barrier; window_dot keeps running
    # sums there without one (each thread touches only its own entries).
    emulate("thread")
    inputs, grad = _carafe_case(1, 6, 5, 7, 5, 3)
    _check_carafe(inputs, grad, 5, 3, 1, torch.float32)


def _faulty(builds, tmp_path, name, sanitizer, env=None):
    """Run faulty kernel ``name`` on one block of 32 threads: (process, output)."""
    n = 32
    config = geometry.LaunchConfig((1, 1, 1), (n, 1, 1), 4 * n, 0)
    values = torch.arange(1.0, n + 1)
    out = torch.zeros(n)
    exe = builds.exe("faulty", sanitizer)
    env = {**SANITIZER_ENV, **(env or {})}
    result = emulator_process(exe, name, config, (values, out), (n,), tmp_path, env)
    return result, values, out


def test_emulator_catches_a_missing_barrier(builds, tmp_path):
    result, values, out = _faulty(builds, tmp_path, "neighbour_after_barrier", "address")
    assert result.returncode == 0, result.stderr
    assert torch.equal(out, values.roll(-1))
    # Fibers in ascending order: each thread reads its neighbour's slot before the neighbour ran.
    result, _, out = _faulty(builds, tmp_path, "neighbour_without_barrier", "address")
    assert result.returncode == 0, result.stderr
    assert out[:-1].isnan().all()
    result, _, out = _faulty(builds, tmp_path, "neighbour_after_barrier", "thread")
    assert result.returncode == 0, result.stderr
    assert torch.equal(out, values.roll(-1))
    result, _, _ = _faulty(builds, tmp_path, "neighbour_without_barrier", "thread")
    assert result.returncode == 66 and "data race" in result.stderr, result.stderr[-2000:]


@pytest.mark.parametrize("name", ["read_past_shared_memory", "read_past_input"])
def test_emulator_catches_reads_past_a_buffer(builds, tmp_path, name):
    result, _, _ = _faulty(builds, tmp_path, name, "address")
    assert result.returncode != 0
    assert "heap-buffer-overflow" in result.stderr, result.stderr[-2000:]


def test_emulator_catches_cp_async_misuse(builds, tmp_path):
    # Copies landing at their wait: the early read sees the NaN the shared memory starts with.
    result, values, out = _faulty(builds, tmp_path, "read_before_async_wait", "address")
    assert result.returncode == 0, result.stderr
    assert out.isnan().all()
    env = {"CUDA_ON_CPU_ASYNC_LANDS": "issue"}
    result, values, out = _faulty(builds, tmp_path, "read_before_async_wait", "address", env)
    assert result.returncode == 0 and torch.equal(out, values), result.stderr
    result, _, _ = _faulty(builds, tmp_path, "misaligned_async_copy", "address")
    assert result.returncode != 0
    assert "cp.async source not aligned to the copy size" in result.stderr
