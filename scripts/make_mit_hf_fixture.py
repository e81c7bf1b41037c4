"""Regenerate tests/fixtures/mit_hf_tiny.pt: a tiny random Hugging Face SegFormer encoder, its
checkpoint as ``save_pretrained`` writes it, an input and the four stage outputs.

Needs ``transformers``, which uplab does not depend on; install it outside the project's venv::

    .venv/bin/pip install --target /tmp/hf_pkgs transformers
    HF_HUB_OFFLINE=1 PYTHONPATH=/tmp/hf_pkgs .venv/bin/python scripts/make_mit_hf_fixture.py

The fixture holds:

- ``state_dict``: ``model.safetensors`` of a ``SegformerForImageClassification`` (the layout of
  ``nvidia/mit-b1``: ``segformer.encoder.*`` and ``classifier.*``).
- ``module_names``: each of those keys -> the name of the same tensor in the in-memory module
  (``SegformerModel.state_dict()``, which transformers >= 5 names differently).
- ``input`` and ``hidden_states``: ``SegformerModel`` in eval mode on that input, with
  ``output_hidden_states=True``.
- ``config``: the sizes, for :class:`uplab.models.backbones.mit.MiTVariant`.
"""

import argparse
import tempfile
from pathlib import Path

import safetensors.torch
import torch
import transformers

# Reduction ratios and input size keep every reduced key/value sequence longer than one token, so
# the attention (and the order of the fused key/value rows) is exercised in every stage.
CONFIG = {
    "hidden_sizes": [8, 12, 16, 20],
    "depths": [1, 2, 1, 1],
    "num_attention_heads": [1, 2, 2, 4],
    "sr_ratios": [4, 2, 1, 1],
    "mlp_ratios": [4, 4, 4, 4],
}
INPUT_SHAPE = (1, 3, 32, 48)


def randomise(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Random values everywhere (LayerNorm weights around 1), so that every tensor is distinct
    and a mix-up of any two would change the outputs."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = 0.2 * torch.randn(p.shape, generator=generator)
            p.copy_(noise + 1.0 if "norm" in name and name.endswith("weight") else noise)


def main(out: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    config = transformers.SegformerConfig(num_channels=3, num_labels=5, **CONFIG)
    model = transformers.SegformerForImageClassification(config).eval()
    randomise(model, generator)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        saved = safetensors.torch.load_file(Path(tmp) / "model.safetensors")
    in_memory = model.state_dict()
    module_names = {
        key: next(name for name, t in in_memory.items() if torch.equal(t, value))
        for key, value in saved.items()
    }
    x = torch.randn(INPUT_SHAPE, generator=generator)
    with torch.no_grad():
        hidden = model.segformer(x, output_hidden_states=True).hidden_states
    if len(hidden) != 4:
        raise RuntimeError(f"expected 4 hidden states, got {len(hidden)}")
    torch.save(
        {
            "state_dict": saved,
            "module_names": module_names,
            "input": x,
            "hidden_states": [h.contiguous() for h in hidden],
            "config": CONFIG,
            "transformers_version": transformers.__version__,
        },
        out,
    )
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB) with transformers {transformers.__version__}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/mit_hf_tiny.pt"))
    main(parser.parse_args().out)
