"""IndexNet beyond the golden cases: the depth-wise one-to-one block (no golden case: checked
against the many-to-one structure it restricts), the receptive field of each index at any scale,
the holistic index shared by all channels, the converters' key names, and clear errors."""

import pytest
import torch
import torch.nn.functional as F

from uplab.upsamplers import build
from uplab.upsamplers.indexnet import IndexNet, context_window
from uplab.upsamplers.official import load_official


def _randomise(module):
    state = {}
    for key, value in module.state_dict().items():
        if not value.is_floating_point():
            state[key] = value
        elif "running_var" in key:
            state[key] = torch.rand_like(value) + 0.5
        else:
            state[key] = torch.randn_like(value)
    module.load_state_dict(state)
    return module.double().eval()


@pytest.mark.parametrize("nonlinear", [False, True])
@pytest.mark.parametrize("context", [False, True])
def test_o2o_is_m2o_with_block_diagonal_convolutions(nonlinear, context):
    # The released DepthwiseO2OIndexBlock is DepthwiseM2OIndexBlock with groups=inp in both
    # convolutions: an M2O block whose full weights are zero off the channel diagonal computes
    # exactly the same index map.
    c = 3
    o2o = _randomise(IndexNet(c, index_block="o2o", nonlinear=nonlinear, context=context))
    m2o = IndexNet(c, index_block="m2o", nonlinear=nonlinear, context=context).double().eval()
    state = {}
    for key, value in o2o.state_dict().items():
        if value.dim() == 4:  # depth-wise [C, 1, k, k] -> block-diagonal [C, C, k, k]
            full = torch.zeros(c, c, *value.shape[2:], dtype=value.dtype)
            full[range(c), range(c)] = value[:, 0]
            value = full
        state[key] = value
    m2o.load_state_dict(state)
    x = torch.randn(2, c, 3, 4, dtype=torch.float64)
    guide = torch.randn(2, c, 6, 8, dtype=torch.float64)
    torch.testing.assert_close(o2o(x, guide), m2o(x, guide))


def test_o2o_index_of_a_channel_sees_only_that_guide_channel():
    up = _randomise(IndexNet(4, index_block="o2o", nonlinear=True, context=True))
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    guide = torch.randn(1, 4, 6, 6, dtype=torch.float64)
    changed = guide.clone()
    changed[:, 1] += 1.0
    diff = (up(x, changed) - up(x, guide)).abs().sum(dim=(0, 2, 3))
    assert diff[1] > 0 and not diff[[0, 2, 3]].any()
    m2o = _randomise(IndexNet(4, index_block="m2o", nonlinear=True, context=True))
    assert ((m2o(x, changed) - m2o(x, guide)).abs().sum(dim=(0, 2, 3)) > 0).all()


def test_released_o2o_keys_load():
    inp = 5
    released = {}
    for j in range(1, 5):
        released[f"indexnet{j}.0.weight"] = torch.randn(inp, 1, 4, 4, dtype=torch.float64)
        released[f"indexnet{j}.1.weight"] = torch.randn(inp, dtype=torch.float64)
        released[f"indexnet{j}.1.bias"] = torch.randn(inp, dtype=torch.float64)
        released[f"indexnet{j}.1.running_mean"] = torch.randn(inp, dtype=torch.float64)
        released[f"indexnet{j}.1.running_var"] = torch.rand(inp, dtype=torch.float64) + 0.5
        released[f"indexnet{j}.1.num_batches_tracked"] = torch.tensor(0)
        released[f"indexnet{j}.3.weight"] = torch.randn(inp, 1, 1, 1, dtype=torch.float64)
    up, key_map = load_official(
        "hlindex.DepthwiseO2OIndexBlock",
        released,
        return_key_map=True,
        inp=inp,
        use_nonlinear=True,
        use_context=True,
    )
    assert key_map["indexnet3.3.weight"] == "branches.2.project.weight"
    ours = up.state_dict()
    for key, value in released.items():
        assert torch.equal(ours[key_map[key]], value), key
    assert not up.training  # BatchNorm uses the running statistics


def test_converter_rejects_weights_of_another_setting():
    nonlinear = _randomise(IndexNet(6, index_block="m2o", nonlinear=True))
    released = {}
    for key, value in nonlinear.state_dict().items():
        _, branch, layer, param = key.split(".")
        position = {"conv": 0, "norm": 1, "project": 3}[layer]
        released[f"indexnet{int(branch) + 1}.{position}.{param}"] = value
    assert load_official("hlindex.DepthwiseM2OIndexBlock", released, inp=6, use_nonlinear=True)
    with pytest.raises(ValueError, match=r"do not fit.*unexpected \['branches.0.norm.bias'"):
        load_official("hlindex.DepthwiseM2OIndexBlock", released, inp=6, use_nonlinear=False)


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("context", [False, True])
def test_each_index_window_is_centred_on_its_cell(scale, context):
    # Perturb the first (top-left) or last (bottom-right) guide pixel of cell (2, 2). Without
    # context only that cell's index changes; with context the window reaches into the
    # neighbouring cells by the same margin on every side, so the first pixel also reaches the
    # cells above and left, the last pixel those below and right (mirror images).
    up = _randomise(IndexNet(2, scale=scale, index_block="m2o", context=context))
    h = w = 5
    x = torch.ones(1, 2, h, w, dtype=torch.float64)
    guide = torch.randn(1, 2, scale * h, scale * w, dtype=torch.float64)
    for corner, (lo, hi) in {"first": (1, 2), "last": (2, 3)}.items():
        offset = 0 if corner == "first" else scale - 1
        changed = guide.clone()
        changed[:, :, 2 * scale + offset, 2 * scale + offset] += 1.0
        moved = (up(x, changed) - up(x, guide)).abs().sum(dim=(0, 1))
        cells = F.max_pool2d(moved[None, None], scale)[0, 0] > 0
        expected = torch.zeros(h, w, dtype=torch.bool)
        if context:
            expected[lo : hi + 1, lo : hi + 1] = True
        else:
            expected[2, 2] = True
        assert torch.equal(cells, expected), corner


def test_context_window_reproduces_the_release_at_scale_2():
    assert context_window(2, context=False) == (2, 0)
    assert context_window(2, context=True) == (4, 1)
    assert context_window(4, context=True) == (8, 2)
    assert context_window(3, context=True) == (7, 2)


@pytest.mark.parametrize("scale", [2, 3])
def test_holistic_index_is_shared_by_all_channels(scale):
    up = _randomise(IndexNet(3, scale=scale, guide_channels=5, index_block="holistic"))
    x = torch.randn(2, 3, 2, 3, dtype=torch.float64).abs() + 0.1
    guide = torch.randn(2, 5, 2 * scale, 3 * scale, dtype=torch.float64)
    index = up(x, guide) / F.interpolate(x, scale_factor=scale, mode="nearest")
    torch.testing.assert_close(index, index[:, :1].expand_as(index))
    assert ((index > 0) & (index < 1)).all()


def test_registry_default_is_fades_comparison_setting():
    up = build("indexnet", in_channels=8)
    assert (up.index_block, up.nonlinear, up.context) == ("m2o", False, False)
    assert len(up.branches) == 4 and up.branches[0].conv.weight.shape == (8, 8, 2, 2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"index_block": "depthwise"}, "index_block must be one of"),
        ({"index_block": "m2o", "guide_channels": 6}, "guide_channels must equal in_channels"),
        ({"index_block": "o2o", "guide_channels": 6}, "guide_channels=6, in_channels=4"),
    ],
)
def test_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        IndexNet(4, **kwargs)
