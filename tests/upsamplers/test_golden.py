"""Every golden case of the released operators, through ``load_official`` or the ops: outputs and
every gradient (inputs and parameters) must match to 1e-10 in float64."""

from pathlib import Path

import pytest
import torch

from uplab.ops import carafe, local_similarity
from uplab.upsamplers.official import load_official

CASES = sorted(torch.load(Path(__file__).parents[1] / "fixtures" / "operators.pt"))
OPS = {"op.carafe": carafe, "op.local_similarity": local_similarity}
TOL = 1e-10


def _run_case(case):
    inputs = {n: t.clone().requires_grad_(True) for n, t in zip(case["input_names"], case["inputs"], strict=True)}
    cls = case["official_class"]
    if cls in OPS:
        return OPS[cls](*inputs.values(), **case["kwargs"]), inputs, None, {}
    module, key_map = load_official(cls, case["state_dict"], return_key_map=True, **case["kwargs"])
    x = inputs["x"]
    out = module(x, guide=inputs["guide"]) if "guide" in inputs else module(x)
    return out, inputs, module, key_map


@pytest.mark.parametrize("name", CASES)
def test_golden_case(golden, name):
    case = golden[name]
    out, inputs, module, key_map = _run_case(case)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, case["output"], atol=TOL, rtol=0)
    out.backward(case["grad_output"])
    for input_name, expected in zip(case["input_names"], case["grad_inputs"], strict=True):
        torch.testing.assert_close(
            inputs[input_name].grad, expected, atol=TOL, rtol=0, msg=f"grad of {input_name}"
        )
    if module is None:
        return
    state = dict(module.named_parameters())
    for official_key, expected in case["grad_params"].items():
        ours = key_map[official_key]
        if ours is None:  # released weights that take no part in upsampling
            assert expected is None or not expected.abs().any(), official_key
            continue
        grad = state[ours].grad
        torch.testing.assert_close(
            grad.reshape(expected.shape), expected, atol=TOL, rtol=0, msg=f"grad of {official_key}"
        )
