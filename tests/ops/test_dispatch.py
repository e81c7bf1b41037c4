"""Backend selection: ``auto`` takes the kernels for CUDA tensors when CuPy imports and falls back
with one warning naming what is missing; ``cuda`` refuses CPU tensors and a missing CuPy;
the package imports and runs without CuPy. CUDA tensors are stood in for by a stub, so these
run on any machine."""

import subprocess
import sys
import warnings
from types import SimpleNamespace

import pytest
import torch

from uplab.ops import carafe, dispatch, local_similarity

CUDA_STUB = SimpleNamespace(is_cuda=True, device=torch.device("cuda", 0), numel=lambda: 6)
EMPTY_CUDA_STUB = SimpleNamespace(is_cuda=True, device=torch.device("cuda", 0), numel=lambda: 0)
MISSING = "CuPy is not installed (test)"


@pytest.fixture
def cupy_missing(monkeypatch):
    monkeypatch.setattr(dispatch, "cupy_status", lambda: MISSING)
    dispatch._warn_fallback_once.cache_clear()
    yield
    dispatch._warn_fallback_once.cache_clear()


@pytest.fixture
def cupy_present(monkeypatch):
    monkeypatch.setattr(dispatch, "cupy_status", lambda: None)


def test_unknown_backend_is_a_value_error():
    with pytest.raises(ValueError, match="backend must be one of"):
        dispatch.resolve_backend("triton", torch.zeros(1), "carafe")


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_cpu_tensors_take_the_torch_path_silently(backend, cupy_present):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dispatch.resolve_backend(backend, torch.zeros(1), "carafe") == "torch"


def test_auto_takes_the_kernels_for_cuda_tensors_with_cupy(cupy_present):
    assert dispatch.resolve_backend("auto", CUDA_STUB, "carafe") == "cuda"
    assert dispatch.resolve_backend("cuda", CUDA_STUB, "carafe") == "cuda"


@pytest.mark.parametrize("backend", ["auto", "cuda"])
def test_empty_cuda_tensors_take_the_torch_path(backend, cupy_present):
    # nothing to launch: a zero-size grid is an error for the kernels, an empty result for torch
    assert dispatch.resolve_backend(backend, EMPTY_CUDA_STUB, "carafe") == "torch"


def test_torch_backend_never_takes_the_kernels(cupy_present):
    assert dispatch.resolve_backend("torch", CUDA_STUB, "carafe") == "torch"


def test_auto_falls_back_with_one_warning_naming_what_is_missing(cupy_missing):
    with pytest.warns(RuntimeWarning, match="CuPy is not installed") as record:
        assert dispatch.resolve_backend("auto", CUDA_STUB, "carafe") == "torch"
        assert dispatch.resolve_backend("auto", CUDA_STUB, "local_similarity") == "torch"
    assert len([w for w in record if issubclass(w.category, RuntimeWarning)]) == 1


def test_cuda_backend_without_cupy_is_a_clear_error(cupy_missing):
    with pytest.raises(
        RuntimeError, match="backend='cuda' cannot run because CuPy is not installed"
    ):
        dispatch.resolve_backend("cuda", CUDA_STUB, "carafe")


@pytest.mark.parametrize("status", [None, MISSING])
def test_cuda_backend_on_cpu_tensors_is_a_value_error(monkeypatch, status):
    monkeypatch.setattr(dispatch, "cupy_status", lambda: status)
    f, m = torch.randn(1, 2, 3, 3), torch.randn(1, 9, 6, 6)
    with pytest.raises(ValueError, match="needs CUDA tensors, got a tensor on cpu"):
        carafe(f, m, 3, 2, backend="cuda")
    q, k = torch.randn(1, 2, 6, 6), torch.randn(1, 2, 3, 3)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        local_similarity(q, k, 3, 2, backend="cuda")


def test_cupy_status_names_the_extra_when_cupy_is_absent(monkeypatch):
    monkeypatch.setattr(dispatch.importlib.util, "find_spec", lambda name: None)
    dispatch.cupy_status.cache_clear()
    try:
        assert "cupy-cuda13x" in dispatch.cupy_status()
    finally:
        dispatch.cupy_status.cache_clear()


def test_package_imports_and_runs_without_cupy():
    # ``sys.modules["cupy"] = None`` makes every ``import cupy`` fail, as on a machine without it.
    code = (
        "import sys; sys.modules['cupy'] = None\n"
        "import torch, uplab.ops, uplab.ops.cuda\n"
        "from uplab.ops import carafe\n"
        "out = carafe(torch.randn(1, 2, 3, 3), torch.randn(1, 9, 6, 6), 3, 2)\n"
        "assert out.shape == (1, 2, 6, 6)\n"
        "assert 'cupy' not in {m for m in sys.modules if sys.modules[m] is not None}\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_autocast_promotes_mixed_dtypes_and_plain_mismatch_is_an_error():
    from uplab.ops import carafe, local_similarity

    f = torch.randn(1, 4, 3, 5)
    m = torch.softmax(torch.randn(1, 9, 6, 10), 1).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = carafe(f, m, 3, 2)
        sim = local_similarity(torch.randn(1, 4, 6, 10).bfloat16(), f, 3, 2)
    assert out.dtype == torch.float32 and sim.dtype == torch.float32
    torch.testing.assert_close(out, carafe(f, m.float(), 3, 2))
    with pytest.raises(ValueError, match="dtype"):
        carafe(f, m, 3, 2)
