"""What a metric refuses to score: non-finite predictions and an empty evaluation set.

A score of 0 or -1 for "nothing was evaluated" reads as a result in a table; a prediction with NaN
masked to a number hides a diverged model. Both are errors here, raised where the metric sees them.
"""

from __future__ import annotations

import torch


class NothingToEvaluate(ValueError):
    """The evaluation set holds nothing the metric can score (no valid depth pixel, no unknown
    trimap region, no ground-truth box, no labelled pixel): there is no score, not a score of 0."""


def require_finite(metric: str, what: str, values: torch.Tensor) -> None:
    """Raise ``ValueError`` naming ``metric`` and how many of ``values`` are NaN or infinite."""
    finite = torch.isfinite(values)
    if not bool(finite.all()):
        bad = int(finite.numel() - finite.sum())
        raise ValueError(
            f"{metric}: {bad} of {values.numel()} values of {what} are not finite (NaN or inf); "
            "a metric does not score them. A diverged model gives such outputs: check the "
            "training loss and the learning rate"
        )
