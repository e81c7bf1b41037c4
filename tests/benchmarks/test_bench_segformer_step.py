import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_segformer_step.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_segformer_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_mode_times_each_upsampler(tmp_path):
    bench = _load()
    out = tmp_path / "bench.md"
    assert bench.main(["--smoke", "--upsamplers", "bilinear,fade", "--output", str(out)]) == 0
    text = out.read_text()
    assert "| bilinear" in text and "| fade" in text and "64x64" in text


def test_cuda_without_a_device_is_a_usage_error():
    bench = _load()
    if bench.torch.cuda.is_available():
        pytest.skip(reason="a CUDA device is present, so --device cuda is valid here")
    with pytest.raises(SystemExit):
        bench.main(["--device", "cuda"])


def test_saved_activations_count_what_backward_keeps(tmp_path):
    bench = _load()
    bilinear = bench.saved_activation_bytes("bilinear", 64)
    carafe = bench.saved_activation_bytes("carafe", 64)
    # at least the 150-class logits at full size, and CARAFE keeps its features and masks on top
    assert bilinear > 150 * 64 * 64 * 4
    assert carafe > bilinear
    out = tmp_path / "saved.md"
    assert bench.main(["--saved-activations", "--size", "64", "--batch", "2",
                       "--upsamplers", "bilinear,carafe", "--output", str(out)]) == 0
    text = out.read_text()
    assert "batch 2" in text and "| carafe" in text


def test_each_upsampler_is_written_as_measured_and_out_of_memory_is_a_row(tmp_path, monkeypatch):
    # A run stopped part way (gpu_check.sh's time limit, here an interrupt on the third upsampler)
    # keeps the rows measured so far; running out of device memory costs one row, not the run.
    bench = _load()
    measured = []

    def fake_step_stats(name, *args):
        measured.append(name)
        if name == "fade":
            raise bench.torch.cuda.OutOfMemoryError("CUDA out of memory")
        if name == "sapa_g":
            raise KeyboardInterrupt
        return {"upsampler": name, "step_ms": 12.5, "peak_gb": 1.25}

    monkeypatch.setattr(bench, "step_stats", fake_step_stats)
    out = tmp_path / "bench.md"
    with pytest.raises(KeyboardInterrupt):
        bench.main(["--smoke", "--upsamplers", "bilinear,fade,sapa_g", "--output", str(out)])
    assert measured == ["bilinear", "fade", "sapa_g"]
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ")][1:]
    assert len(rows) == 2
    assert rows[0].split("|")[1].strip() == "bilinear" and "12.50" in rows[0]
    assert rows[1].split("|")[1].strip() == "fade" and "out of memory" in rows[1]
    assert list(tmp_path.iterdir()) == [out]  # no temporary file left behind
