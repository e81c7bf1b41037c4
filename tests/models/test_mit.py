import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from uplab.analysis import count_params
from uplab.models.backbones.mit import (
    MIT_VARIANTS,
    MiTVariant,
    MixTransformer,
    checkpoint_format,
    convert_hf_state_dict,
    convert_nvlabs_state_dict,
    convert_state_dict,
)


def _nvlabs_state_dict(variant: str, in_chans: int = 3) -> dict[str, torch.Tensor]:
    """Random tensors under the key names and shapes of NVlabs/SegFormer's
    ``MixVisionTransformer`` (mix_transformer.py), ImageNet classifier included."""
    v = MIT_VARIANTS[variant]
    sd, prev = {}, in_chans
    for i, (d, depth, r) in enumerate(zip(v.embed_dims, v.depths, v.sr_ratios, strict=True), 1):
        p = 7 if i == 1 else 3
        sd[f"patch_embed{i}.proj.weight"] = torch.randn(d, prev, p, p)
        sd[f"patch_embed{i}.proj.bias"] = torch.randn(d)
        sd[f"patch_embed{i}.norm.weight"] = torch.randn(d)
        sd[f"patch_embed{i}.norm.bias"] = torch.randn(d)
        for j in range(depth):
            b = f"block{i}.{j}."
            shapes = {
                "norm1.weight": (d,), "norm1.bias": (d,),
                "attn.q.weight": (d, d), "attn.q.bias": (d,),
                "attn.kv.weight": (2 * d, d), "attn.kv.bias": (2 * d,),
                "attn.proj.weight": (d, d), "attn.proj.bias": (d,),
                "norm2.weight": (d,), "norm2.bias": (d,),
                "mlp.fc1.weight": (4 * d, d), "mlp.fc1.bias": (4 * d,),
                "mlp.dwconv.dwconv.weight": (4 * d, 1, 3, 3), "mlp.dwconv.dwconv.bias": (4 * d,),
                "mlp.fc2.weight": (d, 4 * d), "mlp.fc2.bias": (d,),
            }
            if r > 1:
                shapes.update({
                    "attn.sr.weight": (d, d, r, r), "attn.sr.bias": (d,),
                    "attn.norm.weight": (d,), "attn.norm.bias": (d,),
                })
            sd.update({b + k: torch.randn(s) for k, s in shapes.items()})
        sd[f"norm{i}.weight"] = torch.randn(d)
        sd[f"norm{i}.bias"] = torch.randn(d)
        prev = d
    sd["head.weight"] = torch.randn(1000, v.embed_dims[-1])
    sd["head.bias"] = torch.randn(1000)
    return sd


def test_nvlabs_checkpoint_loads_strictly_from_a_file(tmp_path):
    sd = _nvlabs_state_dict("mit_b1")
    path = tmp_path / "mit_b1.pth"
    torch.save(sd, path)
    model = MixTransformer("mit_b1", checkpoint=str(path))
    own = model.state_dict()
    assert torch.equal(own["stages.1.blocks.0.attn.reduce.weight"], sd["block2.0.attn.sr.weight"])
    assert torch.equal(own["stages.2.blocks.1.attn.reduce_norm.bias"], sd["block3.1.attn.norm.bias"])
    assert torch.equal(own["stages.3.blocks.1.mlp.dwconv.weight"], sd["block4.1.mlp.dwconv.dwconv.weight"])
    assert torch.equal(own["stages.0.embed.proj.weight"], sd["patch_embed1.proj.weight"])
    assert torch.equal(own["stages.3.norm.weight"], sd["norm4.weight"])
    # every released tensor except the classifier has a home, and nothing is left unloaded
    assert len(own) == len(sd) - 2


def test_wrapped_checkpoint_and_foreign_keys():
    model = MixTransformer("mit_b0")
    model.load_nvlabs({"state_dict": _nvlabs_state_dict("mit_b0")})
    with pytest.raises(ValueError, match="decode_head.conv_seg.weight"):
        convert_nvlabs_state_dict({"decode_head.conv_seg.weight": torch.zeros(1)})


def test_mit_b1_size_and_feature_pyramid():
    model = MixTransformer("mit_b1").eval()
    released = _nvlabs_state_dict("mit_b1")
    assert count_params(model) == sum(
        t.numel() for k, t in released.items() if not k.startswith("head.")
    )
    features = model(torch.zeros(1, 3, 64, 96))
    assert [f.shape[1] for f in features] == model.channels == [64, 128, 320, 512]
    assert [64 // f.shape[2] for f in features] == model.reductions == [4, 8, 16, 32]
    assert all(96 // f.shape[3] == r for f, r in zip(features, model.reductions, strict=True))


def test_backward_and_bad_input():
    model = MixTransformer("mit_b0", in_chans=4)
    sum(f.sum() for f in model(torch.randn(2, 4, 32, 32))).backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match=r"\[B, 4, H, W\]"):
        model(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="mit_b9"):
        MixTransformer("mit_b9")


FIXTURE = Path(__file__).parents[1] / "fixtures" / "mit_hf_tiny.pt"


@pytest.fixture(scope="module")
def hf_tiny() -> dict:
    """A tiny random transformers SegFormer: its saved checkpoint, an input and its four stage
    outputs (tests/fixtures/make_mit_hf_fixture.py)."""
    return torch.load(FIXTURE, weights_only=True)


def _tiny_variant(config: dict, norm_eps: float) -> MiTVariant:
    (mlp_ratio,) = set(config["mlp_ratios"])
    return MiTVariant(
        embed_dims=tuple(config["hidden_sizes"]),
        depths=tuple(config["depths"]),
        num_heads=tuple(config["num_attention_heads"]),
        sr_ratios=tuple(config["sr_ratios"]),
        mlp_ratio=mlp_ratio,
        norm_eps=norm_eps,
    )


def _features(model: MixTransformer, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("layout", ["hub", "hub_without_prefix", "transformers5_modules"])
def test_hf_checkpoint_reproduces_transformers_features(hf_tiny, layout):
    sd = hf_tiny["state_dict"]
    if layout == "hub_without_prefix":
        sd = {k.removeprefix("segformer."): v for k, v in sd.items()}
    elif layout == "transformers5_modules":
        sd = {hf_tiny["module_names"][k]: v for k, v in sd.items()}
    assert checkpoint_format(sd) == "hf"
    # transformers' port uses LayerNorm eps 1e-5 throughout
    model = MixTransformer(_tiny_variant(hf_tiny["config"], norm_eps=1e-5), drop_path_rate=0.0)
    model.load_pretrained(sd)
    ours = _features(model, hf_tiny["input"])
    for mine, theirs in zip(ours, hf_tiny["hidden_states"], strict=True):
        assert mine.shape == theirs.shape
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)


def test_hf_key_value_halves_are_stacked_key_first(hf_tiny):
    sd = hf_tiny["state_dict"]
    converted = convert_hf_state_dict(sd)
    prefix = "segformer.encoder.block.1.1.attention.self."
    expected = torch.cat([sd[prefix + "key.weight"], sd[prefix + "value.weight"]])
    assert torch.equal(converted["stages.1.blocks.1.attn.kv.weight"], expected)
    # swapping the halves changes the features, so the test above can tell the orders apart
    swapped = dict(converted)
    kv = swapped["stages.1.blocks.1.attn.kv.weight"]
    swapped["stages.1.blocks.1.attn.kv.weight"] = torch.cat(kv.chunk(2)[::-1])
    model = MixTransformer(_tiny_variant(hf_tiny["config"], norm_eps=1e-5))
    model.load_state_dict(swapped)
    assert not torch.allclose(_features(model, hf_tiny["input"])[1], hf_tiny["hidden_states"][1])


def test_hf_checkpoint_files_load_by_path(hf_tiny, tmp_path):
    variant = _tiny_variant(hf_tiny["config"], norm_eps=1e-5)
    safetensors_path = tmp_path / "model.safetensors"
    save_file(hf_tiny["state_dict"], safetensors_path)
    bin_path = tmp_path / "pytorch_model.bin"
    torch.save(hf_tiny["state_dict"], bin_path)
    for path in (safetensors_path, str(bin_path)):
        features = _features(MixTransformer(variant, checkpoint=path), hf_tiny["input"])
        torch.testing.assert_close(features[-1], hf_tiny["hidden_states"][-1], rtol=1e-5, atol=1e-6)


def test_format_detection_and_dropped_heads(hf_tiny):
    nvlabs = _nvlabs_state_dict("mit_b0")
    assert checkpoint_format(nvlabs) == "nvlabs"
    assert checkpoint_format({"patch_embed1.proj.weight": torch.zeros(1)}) == "nvlabs"
    wrapped = convert_state_dict({"state_dict": nvlabs, "meta": {}})
    assert wrapped.keys() == convert_nvlabs_state_dict(nvlabs).keys()
    sd = dict(hf_tiny["state_dict"])
    assert any(k.startswith("classifier.") for k in sd)
    sd["decode_head.linear_c.0.proj.weight"] = torch.zeros(4, 20)
    own = MixTransformer(_tiny_variant(hf_tiny["config"], norm_eps=1e-5)).state_dict()
    assert convert_state_dict(sd).keys() == own.keys()


def test_unknown_and_incomplete_checkpoints_raise(hf_tiny):
    sd = dict(hf_tiny["state_dict"])
    rotary = "segformer.encoder.block.0.0.attention.self.rotary.weight"
    with pytest.raises(ValueError, match=rf"'{re.escape(rotary)}'.*expected"):
        convert_hf_state_dict({**sd, rotary: torch.zeros(1)})
    with pytest.raises(ValueError, match=r"'pooler\.dense\.weight'.*encoder\.block\.N\.M"):
        convert_hf_state_dict({**sd, "pooler.dense.weight": torch.zeros(1)})
    renamed = {"stages.0.layer_norm.weight": sd["segformer.encoder.layer_norm.0.weight"]}
    with pytest.raises(ValueError, match=r"'stages\.0\.layer_norm\.weight'.*second.*stages\.0\.norm"):
        convert_hf_state_dict({**sd, **renamed})
    del sd["segformer.encoder.block.2.0.attention.self.value.bias"]
    with pytest.raises(ValueError, match=r"stages\.2\.blocks\.0\.attn\.kv\.bias.*no value"):
        convert_hf_state_dict(sd)
    with pytest.raises(ValueError, match="not a MiT checkpoint.*patch_embed1"):
        convert_state_dict({"conv1.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="mixed"):
        checkpoint_format({**_nvlabs_state_dict("mit_b0"), **sd})
    with pytest.raises(ValueError, match="got Tensor"):
        checkpoint_format(torch.zeros(1))


def test_variant_instance_and_eps():
    tiny = MiTVariant((8, 8, 8, 8), (1, 1, 1, 1), num_heads=(1, 1, 2, 2))
    model = MixTransformer(tiny)
    assert model.channels == [8, 8, 8, 8]
    # NVlabs: 1e-6 in blocks and stage outputs, PyTorch's 1e-5 in patch embeddings and reductions
    assert model.stages[0].blocks[0].norm1.eps == model.stages[0].norm.eps == 1e-6
    assert model.stages[0].embed.norm.eps == model.stages[0].blocks[0].attn.reduce_norm.eps == 1e-5


def test_a_missing_checkpoint_says_what_to_put_where(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"absent\.pth.*mit_b1\.pth.*nvidia/mit-b1"):
        MixTransformer("mit_b0", checkpoint=tmp_path / "absent.pth")
