"""Losses: image-level classification, RCM (pixel-to-prototype contrast) and MAM (multi-scale guidance)."""

from .classification import multilabel_loss
from .mam import MEASURES, attentive_weight, fuse_multiscale, mam_loss
from .rcm import (
    IGNORE_INDEX,
    PrototypeMemory,
    class_prototypes,
    pixel_prototype_contrast,
    region_labels,
)

__all__ = [
    "multilabel_loss",
    "region_labels",
    "class_prototypes",
    "pixel_prototype_contrast",
    "PrototypeMemory",
    "IGNORE_INDEX",
    "fuse_multiscale",
    "attentive_weight",
    "mam_loss",
    "MEASURES",
]
