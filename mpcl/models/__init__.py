"""Backbones and heads. ``BACKBONES`` maps a name to a factory returning (module, feature_dim)."""

from mpcl.models.backbones import BACKBONES, build_backbone, check_backbone
from mpcl.models.timm_backbone import BackboneError
from mpcl.models.heads import mlp, predictor, projector

__all__ = ["BACKBONES", "BackboneError", "build_backbone", "check_backbone", "mlp", "projector", "predictor"]
