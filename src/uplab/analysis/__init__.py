"""Cost and results: parameters and FLOPs in the papers' convention (:mod:`uplab.analysis.flops`),
the published cost table beside ours (:mod:`uplab.analysis.cost`, console script ``uplab-cost``),
and run records."""

from uplab.analysis.flops import count_flops, count_params, count_upsampler_params

__all__ = ["count_flops", "count_params", "count_upsampler_params"]
