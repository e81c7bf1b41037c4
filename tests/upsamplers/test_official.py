"""load_official: unknown classes and weights of the wrong shape give clear errors."""

import pytest
import torch

from uplab.upsamplers.official import load_official, official_classes


def test_every_golden_class_has_a_converter(golden):
    needed = {c["official_class"] for c in golden.values()} - {"op.carafe", "op.local_similarity"}
    assert needed <= set(official_classes())


def test_unknown_class_lists_known_ones():
    with pytest.raises(ValueError, match="known: .*SAPA.SAPA"):
        load_official("SAPA.Nope", {})


def test_wrong_shape_names_key_and_both_shapes(golden):
    case = golden["sapa_b"]
    sd = dict(case["state_dict"])
    sd["q.weight"] = torch.zeros(9, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"q.weight.*\(9, 6\).*\(8, 6\)"):
        load_official("SAPA.SAPA", sd, **case["kwargs"])
