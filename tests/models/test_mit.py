import pytest
import torch

from uplab.analysis import count_params
from uplab.models.backbones.mit import MIT_VARIANTS, MixTransformer, convert_nvlabs_state_dict


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
