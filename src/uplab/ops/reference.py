"""Unfold-and-repeat formulations of the ops: what the community pure-PyTorch FADE and most
re-implementations do. They build tensors ``K*K`` (and ``s*s``) times their inputs, so they serve
as independent references in tests and as the baseline in benchmarks, never in models."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def carafe_unfold(
    features: torch.Tensor, masks: torch.Tensor, kernel_size: int, scale_factor: int, group_size: int = 1
) -> torch.Tensor:
    """CARAFE by unfolding the features and repeating them ``s*s`` times (memory ``K*K*s*s*|x|``)."""
    b, c, h, w = features.shape
    k, s, g = kernel_size, scale_factor, group_size
    unfolded = F.unfold(features, k, padding=(k - 1) // 2).view(b, c, k * k, h, w)
    unfolded = unfolded.repeat_interleave(s, dim=3).repeat_interleave(s, dim=4)
    unfolded = unfolded.view(b, g, c // g, k * k, h * s, w * s)
    m = masks.view(b, g, 1, k * k, h * s, w * s)
    return (unfolded * m).sum(3).view(b, c, h * s, w * s)


def local_similarity_unfold(
    query: torch.Tensor, key: torch.Tensor, kernel_size: int, scale_factor: int
) -> torch.Tensor:
    """Local similarity by unfolding and repeating the keys (memory ``K*K*s*s*|key|``)."""
    b, c, h, w = key.shape
    k, s = kernel_size, scale_factor
    unfolded = F.unfold(key, k, padding=(k - 1) // 2).view(b, c, k * k, h, w)
    unfolded = unfolded.repeat_interleave(s, dim=3).repeat_interleave(s, dim=4)
    return (unfolded * query.unsqueeze(2)).sum(1)
