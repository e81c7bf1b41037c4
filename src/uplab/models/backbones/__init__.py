"""Backbones: multi-scale feature extractors exposing ``channels`` and ``reductions``."""

from uplab.models.backbones.timm_backbone import TimmBackbone

__all__ = ["TimmBackbone"]
